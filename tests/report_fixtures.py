"""A small, realistic dataset and scores table for report tests (the report, the review
loop): shared here so no test module imports another."""

from __future__ import annotations

import random
from datetime import date
from pathlib import Path

import polars as pl

from detector.contract import LABELS, LEASES, PARTIES, SCORES, SHIPMENTS
from detector.tables import Dataset, ValidationReport

SCRIPT_NAME = "<script>alert(1)</script> Trading Ltd"
HUB_CONSIGNEES = [("Lion Gate Compute Pte. Ltd.", "SG", "12 Kallang Way, Singapore"),
                  ("Harimau Data Sdn. Bhd.", "MY", "8 Jalan Ampang, Kuala Lumpur"),
                  ("Siam Server Co., Ltd.", "TH", "99 Rama IV Rd, Bangkok"),
                  ("Kowloon Logistics Limited", "HK", "3 Canton Rd, Kowloon")]
PLAIN_CONSIGNEES = [("Bavaria Rechenzentrum GmbH", "DE", "Hauptstr. 1, Munich"),
                    ("Osaka Research Institute KK", "JP", "1-1 Umeda, Osaka"),
                    ("Maple Cloud Inc.", "CA", "100 King St W, Toronto"),
                    ("Seoul AI Labs Co., Ltd.", "KR", "21 Teheran-ro, Seoul")]
FORWARDERS = ["Swift Freight HK Ltd", "Oceanic Forwarding Pte Ltd", "Global Air Cargo Inc",
              None]


def _frame(rows: list[dict], table) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=table.schema)


def make_dataset(tmp: Path, months: tuple[str, ...] = ("2024-05", "2024-06"),
                 per_month: int = 60, leases_per_month: int = 6, seed: int = 7
                 ) -> tuple[Dataset, pl.DataFrame]:
    """A small, realistic dataset and a scores table for it.

    Scores are a deterministic function of the record (hub routes and HK payers score
    high) so the report has something to rank; the tests compute every expected figure
    from these frames themselves.
    """
    rng = random.Random(seed)
    parties = [
        {"party_id": "P-ROOT", "name": "Dragon Holdings Limited", "country": "HK",
         "address": "88 Queensway, Admiralty"},
        {"party_id": "P-MID", "name": "Lion Gate Group Pte. Ltd.", "country": "SG",
         "parent_party_id": "P-ROOT", "address": "1 Raffles Pl, Singapore"},
        {"party_id": "P-LION", "name": "Lion Gate Compute Pte Ltd", "country": "SG",
         "parent_party_id": "P-MID", "address": "12 Kallang Way, Singapore",
         "incorporation_date": date(2023, 2, 1), "industry": "trading", "employees": 3,
         "aliases": ["LGC"]},
        {"party_id": "P-TWIN", "name": "Bright Star Trading Pte. Ltd.", "country": "SG",
         "address": "12 Kallang Way, Singapore"},
        {"party_id": "P-HARI", "name": "Harimau Data Sdn Bhd", "country": "MY",
         "address": "8 Jalan Ampang, Kuala Lumpur", "industry": "data_center"},
        {"party_id": "P-CLOUD", "name": "Nimbus Cloud Sdn Bhd", "country": "MY",
         "industry": "cloud_provider"},
    ]
    shipments, leases, labels = [], [], []
    for month in months:
        year, mon = map(int, month.split("-"))
        for i in range(per_month):
            hub = rng.random() < 0.45
            name, country, address = rng.choice(HUB_CONSIGNEES if hub else PLAIN_CONSIGNEES)
            destination = country if rng.random() < 0.8 else rng.choice(["CN", "VN", "AE"])
            sid = f"S{month.replace('-', '')}-{i:03d}"
            payer_country = rng.choice(["HK", "CN"]) if hub and rng.random() < 0.4 else country
            shipments.append({
                "shipment_id": sid, "export_date": date(year, mon, 1 + i % 28),
                "exporter_name": "Silicon Valley Systems Inc", "exporter_country": "US",
                "consignee_name": name, "consignee_country": country,
                "consignee_address": address, "consignee_type": "reseller" if hub else
                "direct_consumer", "destination_country": destination,
                "transit_countries": ["HK"] if hub and rng.random() < 0.3 else None,
                "forwarder_name": rng.choice(FORWARDERS), "transport_mode": "air",
                "hs_code": "847330", "eccn": "3A090.a", "license_type": "nlr",
                "description": "NVIDIA H100 80GB PCIe accelerator boards",
                "quantity": rng.randint(1, 200), "value_usd": float(rng.randint(20, 4000) * 1000),
                "payer_name": "Far East Payments Ltd" if payer_country != country else name,
                "payer_country": payer_country,
                "payment_method": "third_party" if payer_country != country else "wire",
            })
        for i in range(leases_per_month):
            leases.append({
                "lease_id": f"L{month.replace('-', '')}-{i:02d}", "provider_name":
                "Nimbus Cloud Sdn. Bhd.", "datacenter_country": rng.choice(["MY", "SG", "US"]),
                "lessee_name": rng.choice(["Harimau Data Sdn Bhd", "Beijing Zhiyuan Tech Co"]),
                "lessee_country": rng.choice(["MY", "CN"]), "gpu_model": "H100 SXM5 80GB",
                "gpu_count": rng.choice([8, 64, 512]), "start_date": date(year, mon, 3 + i),
                "term_months": 12, "value_usd": float(rng.randint(100, 9000) * 1000),
                "payer_country": rng.choice(["MY", "HK"]), "access_type": "bare_metal",
            })
    period_tag = months[-1].replace("-", "")
    # The escaping probe: a hostile consignee name that scores at the top.
    shipments.append({**shipments[-1], "shipment_id": f"S{period_tag}-XSS",
                      "consignee_name": SCRIPT_NAME, "consignee_address": "<b>bold</b> St"})
    # A re-export by the SG consignee from Singapore, after its first import.
    shipments.append({**shipments[-2], "shipment_id": f"S{period_tag}-RX1",
                      "export_date": date(int(months[-1][:4]), int(months[-1][5:]), 28),
                      "exporter_name": "LION GATE COMPUTE PTE. LTD.", "exporter_country": "SG",
                      "consignee_name": "Shenzhen Endpoint Electronics", "consignee_country":
                      "CN", "destination_country": "CN", "consignee_address": None})
    for i, row in enumerate(shipments[: len(shipments) // 3]):
        if row["consignee_country"] in ("SG", "MY", "HK"):
            labels.append({"record_kind": "shipment", "record_id": row["shipment_id"],
                           "label": i % 2, "typology": rng.choice(
                               ["front company", "transshipment via HK", None])})
    for row in shipments[-40:]:  # some labels in the report period too
        if row["payer_country"] in ("HK", "CN"):
            labels.append({"record_kind": "shipment", "record_id": row["shipment_id"],
                           "label": 1, "typology": "third-country payer"})

    dataset = Dataset(directory=tmp, shipments=_frame(shipments, SHIPMENTS),
                      parties=_frame(parties, PARTIES), leases=_frame(leases, LEASES),
                      labels=_frame(labels, LABELS), screening_list=None,
                      report=ValidationReport())

    def score(row: dict, kind: str) -> float:
        base = 0.05 + 0.002 * (sum(map(ord, row[f"{kind}_id"])) % 50)
        if kind == "shipment":
            base += 0.3 * (row["consignee_country"] in ("SG", "MY", "HK", "TH"))
            base += 0.3 * (row["payer_country"] != row["consignee_country"])
            base += 0.25 * (row["destination_country"] in ("CN", "VN", "AE"))
            base += 0.9 * (row["consignee_name"] == SCRIPT_NAME)
        else:
            base += 0.4 * (row["lessee_country"] == "CN") + 0.1 * (row["gpu_count"] >= 512)
        return round(min(base, 0.999), 6)

    rows = [("shipment", r["shipment_id"], score(r, "shipment"),
             "payer in a third country; consignee in a hub" if score(r, "shipment") > 0.5 else "")
            for r in shipments]
    rows += [("lease", r["lease_id"], score(r, "lease"),
              "lessee in a D:5 country" if r["lessee_country"] == "CN" else "") for r in leases]
    scores = pl.DataFrame(rows, schema=["record_kind", "record_id", "risk_score", "reasons"],
                          orient="row")
    scores = (scores.sort(["risk_score", "record_kind", "record_id"],
                          descending=[True, False, False])
              .with_row_index("rank", offset=1)
              .with_columns(pl.col("rank").cast(pl.Int64), pl.lit("chip-diversion/3").alias("model"))
              # a v1-shaped table (no likely_scheme or context): the report accepts it
              .select([c.name for c in SCORES.columns if c.required]))
    return dataset, scores


MODEL_INFO = {"name": "chip-diversion", "version": "3", "run_id": "0123abcd",
              "metrics": {"pr_auc": 0.61, "precision_at_1pct": 0.8, "recall_at_5pct": 0.55,
                          "brier": 0.031, "records": 1289.0, "positives": 42.0,
                          "recall_at_5pct.ceiling": 1.0, "precision_at_1pct.ceiling": 0.326,
                          "recall_at_5pct_transshipment": 0.5},
              "trained_on": "2023-01 to 2024-04"}
PROVENANCE = {"data_fingerprint": "sha256:feedbeef", "screening_list": "csl 2024-06-01",
              "reference_version": "facts v1"}

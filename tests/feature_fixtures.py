"""Tiny hand-built inputs for the feature tests: a Reference-like object and frames."""

from __future__ import annotations

from datetime import date

import polars as pl

from detector.contract import LEASES, PARTIES, SCREENING_LIST, SHIPMENTS

CHIPS = pl.DataFrame({
    "model": ["HGX H100 8-GPU", "H100 SXM", "H20", "RTX 4090", "L20"],
    "item_kind": ["server", "chip", "chip", "chip", "chip"],
    "gpus_per_unit": [8, 1, 1, 1, 1],
    "tpp": [15832.0, 15832.0, 2368.0, 5284.8, 1912.0],
    "price_low_usd": [250_000.0, 25_000.0, 10_000.0, 1_600.0, 4_299.0],
    "price_high_usd": [400_000.0, 40_000.0, 13_000.0, 2_500.0, 4_299.0],
    "unit_weight_kg": [100.0, 2.0, 2.0, 3.0, 2.0],
    "extra_licence_from": [None, None, date(2025, 4, 15), None, None],
    "patterns": [r"\bHGX[\s-]*H100([^0-9]|$)", r"\bH100([^0-9]|$)", r"\bH20([^0-9]|$)",
                 r"\b(RTX|GeForce)[\s-]*(RTX[\s-]*)?4090\b", r"\bL20\b"],
    "eccn": ["4A090.a", "3A090.a", None, "3A090.a", None],
    "controlled": [True, True, False, True, False],
})

GROUPS = {
    "D:5": ["CN", "RU", "IR"],
    "MACAU": ["MO"],
    "TREATED_AS_CN": ["HK"],
    "HUB": ["SG", "MY", "HK"],
    "A:6": ["SG"],
}
UNCONFIRMED_HUBS = {"AE"}
LICENCE_REQUIRED = ["CN", "HK", "IR", "MO", "RU", "AE"]


class FakeReference:
    """The slice of detector.reference.Reference the features use."""

    def __init__(self):
        self.chips = CHIPS
        self.hs_codes = pl.DataFrame({"hs6": ["847150", "847330", "854231"],
                                      "typical_for_gpus": [True, True, True]})
        rows = [(c, g, True) for g, cs in GROUPS.items() for c in cs]
        rows += [(c, "HUB", False) for c in UNCONFIRMED_HUBS]
        self.country_groups = pl.DataFrame(rows, schema=["country", "group", "confirmed"],
                                           orient="row")

    def countries(self, group, confirmed_only=False):
        rows = self.country_groups.filter(pl.col("group") == group)
        if rows.height == 0:
            raise ValueError(f"unknown group {group}")
        if confirmed_only:
            rows = rows.filter(pl.col("confirmed"))
        return sorted(rows["country"].to_list())

    def licence_required_countries(self):
        return list(LICENCE_REQUIRED)


def frame(table, rows: list[dict]) -> pl.DataFrame:
    """A contract-typed frame from partial rows (absent columns are null)."""
    full = [{c: r.get(c) for c in table.column_names} for r in rows]
    return pl.DataFrame(full, schema=table.schema, orient="row") if rows else \
        pl.DataFrame(schema=table.schema)


def shipment(shipment_id: str, **kw) -> dict:
    row = {"shipment_id": shipment_id, "export_date": date(2024, 6, 1),
           "exporter_name": "US Exporter Inc", "exporter_country": "US",
           "consignee_name": "Legit Cloud Pte Ltd", "consignee_country": "SG",
           "destination_country": "SG", "hs_code": "854231", "eccn": "3A090.a",
           "license_type": "license", "description": "NVIDIA H100 SXM5 80GB",
           "quantity": 10, "value_usd": 300_000.0, "payment_method": "wire",
           "payer_country": "SG"}
    row.update(kw)
    return row


def lease(lease_id: str, **kw) -> dict:
    row = {"lease_id": lease_id, "provider_name": "Big Cloud", "datacenter_country": "MY",
           "lessee_name": "Tiny AI Sdn Bhd", "lessee_country": "MY", "gpu_model": "H100 SXM5",
           "gpu_count": 64, "start_date": date(2024, 6, 1), "term_months": 12,
           "value_usd": 64 * 12 * 2000.0, "payer_country": "MY", "access_type": "dedicated_vm"}
    row.update(kw)
    return row


def party(party_id: str, name: str, country: str, **kw) -> dict:
    row = {"party_id": party_id, "name": name, "country": country}
    row.update(kw)
    return row


def shipments(*rows) -> pl.DataFrame:
    return frame(SHIPMENTS, list(rows))


def leases(*rows) -> pl.DataFrame:
    return frame(LEASES, list(rows))


def parties(*rows) -> pl.DataFrame:
    return frame(PARTIES, list(rows))


def screening(*rows) -> pl.DataFrame:
    return frame(SCREENING_LIST, list(rows))

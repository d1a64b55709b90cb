"""Shared fixtures: a tiny, hand-built dataset that satisfies the data contract.

`valid_tables()` returns the five input tables as typed polars frames (contract
schemas); the `valid_dataset_dir` fixture writes them as CSV into a fresh directory.
What is in it, so tests can rely on it:

- 10 shipments S0001..S0010 (Jan–Jun 2024): US exports of H100/A100/H20/RTX 4090/L20
  boards and an HGX H100 server to SG, MY, HK, AE, JP and DE, plus one re-export
  from SG to HK (S0007) and one shipment with a transit list (S0004: HK;MO).
- 5 parties: P001 (SG) → parent P002 (HK) → parent P003 (CN), a three-level chain;
  P004 (MY) and P005 (JP) without parents. Shipments S0001/S0002 name P001.
- 2 leases L001 (MY data centre, CN lessee P003) and L002 (JP, JP lessee P005).
- labels: S0001=1, S0002=0, L001=1, and two rows for S0003 (0 decided 2024-03-01,
  then 1 decided 2024-04-01: the latest wins, with a warning).
- a 3-entry screening list naming P002's and P003's companies.

Reading it gives no errors and exactly one warning (the repeated S0003 label).
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from detector.contract import LABELS, LEASES, PARTIES, SCREENING_LIST, SHIPMENTS
from detector.tables import write_table

# Session fixtures of the model/pipeline tests (one simulated world, one trained home).
pytest_plugins = ["pipeline_fixtures"]


@pytest.fixture(scope="session", autouse=True)
def isolated_detector_home(tmp_path_factory):
    """Every test runs with ``DETECTOR_HOME`` at an empty test directory unless it
    points it elsewhere: a developer's own MLflow runs and decision store (which feeds
    the case memory of every scoring) never reach a test."""
    saved = os.environ.get("DETECTOR_HOME")
    os.environ["DETECTOR_HOME"] = str(tmp_path_factory.mktemp("detector_home"))
    yield
    if saved is None:
        os.environ.pop("DETECTOR_HOME", None)
    else:
        os.environ["DETECTOR_HOME"] = saved

_SHIPMENT_ROWS = [
    # id, date, exporter, exp_c, consignee, cons_c, address, type, party_id, dest, transit,
    # mode, hs, eccn, licence, description, qty, value, weight, payer, payer_c, payment
    ("S0001", date(2024, 1, 8), "Acme Compute Inc.", "US", "Lion City Servers Pte. Ltd.", "SG",
     "30 Raffles Place, Singapore", "reseller", "P001", "SG", None, "air", "847330", "3A090.a",
     "license", "NVIDIA H100 SXM5 80GB", 8, 240000.0, 16.0, "Lion City Servers Pte. Ltd.", "SG",
     "wire"),
    ("S0002", date(2024, 1, 22), "Acme Compute Inc.", "US", "Lion City Servers Pte Ltd", "SG",
     "30 Raffles Place, Singapore", "reseller", "P001", "SG", None, "air", "8471.50.0150",
     "4A090.a", "license", "HGX H100 8-GPU server", 2, 640000.0, 200.0, "Pearl River Trading Ltd",
     "HK", "third_party"),
    ("S0003", date(2024, 2, 5), "Bay Area GPU LLC", "US", "Kirin Peak Electronics Sdn. Bhd.",
     "MY", "Petaling Jaya, Selangor", "direct_consumer", None, "MY", None, "air", "847330",
     "EAR99", "nlr", "computer parts (graphics adapters)", 50, 60000.0, 110.0,
     "Shenzhen Bright Future Co., Ltd.", "CN", "wire"),
    ("S0004", date(2024, 2, 19), "Bay Area GPU LLC", "US", "Harbour Gate Logistics Ltd", "HK",
     None, "other", None, "HK", ["HK", "MO"], "vessel", "854231", "3A090.a", "license",
     "A100-PCIE-40GB", 20, 260000.0, 40.0, None, None, "letter_of_credit"),
    ("S0005", date(2024, 3, 4), "Acme Compute Inc.", "US", "Desert Cloud FZ-LLC", "AE",
     "Dubai Internet City", "direct_consumer", None, "AE", None, "air", "847180", "3A090.a",
     "license", "NVIDIA A100 80GB PCIe", 16, 224000.0, 32.0, "Desert Cloud FZ-LLC", "AE",
     "wire"),
    ("S0006", date(2024, 3, 18), "Silicon Valley Parts Co", "US", "Tokyo Render KK", "JP",
     "Minato-ku, Tokyo", "direct_consumer", "P005", "JP", None, "courier", "847330",
     "EAR99", "nlr", "GeForce RTX 4090 24GB", 10, 19000.0, 30.0, "Tokyo Render KK", "JP",
     "open_account"),
    ("S0007", date(2024, 4, 2), "Lion City Servers Pte. Ltd.", "SG", "Pearl River Trading Ltd",
     "HK", "Kwun Tong, Kowloon", "reseller", "P002", "HK", None, "air", "847330", "3A090.a",
     "nlr", "H100 SXM5 80GB", 8, 400000.0, 16.0, "Pearl River Trading Ltd", "HK", "cash"),
    ("S0008", date(2024, 4, 29), "Acme Compute Inc.", "US", "Berlin Research GmbH", "DE",
     "Unter den Linden 6, Berlin", "government", None, "DE", None, "air", "847330", "3A090.a",
     "license", "NVIDIA H100 PCIe 80GB", 4, 110000.0, 10.0, "Berlin Research GmbH", "DE",
     "wire"),
    ("S0009", date(2024, 5, 13), "Bay Area GPU LLC", "US", "Kirin Peak Electronics Sdn. Bhd.",
     "MY", "Petaling Jaya, Selangor", "reseller", "P004", "MY", None, "air", "847330",
     "EAR99", "nlr", "NVIDIA H20 96GB", 40, 480000.0, 80.0, "Kirin Peak Electronics Sdn. Bhd.",
     "MY", "wire"),
    ("S0010", date(2024, 6, 3), "Silicon Valley Parts Co", "US", "Tokyo Render KK", "JP",
     "Minato-ku, Tokyo", "direct_consumer", "P005", "JP", None, "truck", "847330", "EAR99",
     "nlr", "NVIDIA L20 48GB", 6, 25800.0, 12.0, "Tokyo Render KK", "JP", "wire"),
]


def valid_tables() -> dict[str, pl.DataFrame]:
    """The five contract input tables of the shared valid dataset, typed."""
    cols = ["shipment_id", "export_date", "exporter_name", "exporter_country",
            "consignee_name", "consignee_country", "consignee_address", "consignee_type",
            "consignee_party_id", "destination_country", "transit_countries",
            "transport_mode", "hs_code", "eccn", "license_type", "description", "quantity",
            "value_usd", "gross_weight_kg", "payer_name", "payer_country", "payment_method"]
    partial = pl.DataFrame([dict(zip(cols, r)) for r in _SHIPMENT_ROWS],
                           schema={c: SHIPMENTS.schema[c] for c in cols}, orient="row")
    shipments = partial.with_columns(
        pl.lit(None, pl.String).alias("intermediate_consignee_name"),
        pl.lit(None, pl.String).alias("intermediate_consignee_country"),
        pl.when(pl.col("shipment_id") == "S0007").then(pl.lit("Swift Forwarding Pte Ltd"))
        .otherwise(None).alias("forwarder_name"),
        pl.lit("FCA").alias("incoterm"),
        (pl.col("shipment_id") == "S0002").alias("routed_export"),
        (pl.col("shipment_id") == "S0007").alias("related_party"),
        pl.lit("data centre").alias("declared_end_use"),
    ).select(SHIPMENTS.column_names)
    # The fixture writes hs_code as filed; reading normalises the dots away.
    shipments = shipments.with_columns(pl.col("hs_code").str.replace_all(r"\.", ""))

    parties = pl.DataFrame(
        [
            ("P001", "Lion City Servers Pte. Ltd.", ["LCS", "Lion City Servers"], "SG",
             "30 Raffles Place, Singapore", date(2023, 2, 1), "P002", "reseller", 6, "202300001K"),
            ("P002", "Pearl River Trading Limited", ["Pearl River Trading Ltd"], "HK",
             "Kwun Tong, Kowloon", date(2019, 7, 15), "P003", "trading", 3, "HK2987654"),
            ("P003", "Shenzhen Bright Future Co., Ltd.", None, "CN", "Nanshan, Shenzhen",
             date(2015, 5, 20), None, "manufacturer", 800, "91440300MA5XXXX"),
            ("P004", "Kirin Peak Electronics Sdn. Bhd.", None, "MY", "Petaling Jaya, Selangor",
             date(2023, 11, 1), None, "distributor", 12, "202301045678"),
            ("P005", "Tokyo Render KK", None, "JP", "Minato-ku, Tokyo", date(2010, 4, 1), None,
             "data_center", 150, "0104-01-123456"),
        ],
        schema=PARTIES.schema, orient="row",
    )
    leases = pl.DataFrame(
        [
            ("L001", "Nusantara Cloud Sdn. Bhd.", None, "MY", "Shenzhen Bright Future Co., Ltd.",
             "P003", "CN", "H100 SXM5 80GB", 256, date(2024, 2, 1), 12, 3_500_000.0, "HK",
             "bare_metal"),
            ("L002", "Tokyo Render KK", "P005", "JP", "Tokyo Render KK", "P005", "JP",
             "NVIDIA L40S", 16, date(2024, 5, 1), 6, 90_000.0, "JP", "dedicated_vm"),
        ],
        schema=LEASES.schema, orient="row",
    )
    labels = pl.DataFrame(
        [
            ("shipment", "S0001", 1, "front company", date(2024, 6, 1)),
            ("shipment", "S0002", 0, None, date(2024, 6, 1)),
            ("shipment", "S0003", 0, None, date(2024, 3, 1)),
            ("shipment", "S0003", 1, "misdeclared as parts", date(2024, 4, 1)),
            ("lease", "L001", 1, "remote access", date(2024, 7, 1)),
        ],
        schema=LABELS.schema, orient="row",
    )
    screening = pl.DataFrame(
        [
            ("Pearl River Trading Limited", ["Pearl River Trading Co."], "HK",
             "Kwun Tong, Kowloon", "Entity List (EL) - Bureau of Industry and Security",
             date(2024, 5, 9)),
            ("Shenzhen Bright Future Co., Ltd.", None, "CN", None,
             "Entity List (EL) - Bureau of Industry and Security", date(2023, 10, 17)),
            ("Northern Star Precision Institute", None, "CN", None,
             "Military End User (MEU) List - Bureau of Industry and Security",
             date(2020, 12, 23)),
        ],
        schema=SCREENING_LIST.schema, orient="row",
    )
    return {"shipments": shipments, "parties": parties, "leases": leases, "labels": labels,
            "screening_list": screening}


def write_dataset(directory: Path, tables: dict[str, pl.DataFrame], fmt: str = "csv") -> Path:
    """Write ``tables`` into ``directory`` as ``<table>.<fmt>`` with the contract writer."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        write_table(df, directory / f"{name}.{fmt}")
    return directory


@pytest.fixture
def valid_dataset_dir(tmp_path: Path) -> Path:
    """A fresh directory holding the valid dataset as CSV files (see module docstring)."""
    return write_dataset(tmp_path / "dataset", valid_tables())

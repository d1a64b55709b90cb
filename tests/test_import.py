"""`detector import`: a real export through a TOML column mapping into a contract dataset.

Uses the KCS slice in tests/kcs_sample (MIT, LICENSE beside it) and the shipped
data/mappings/kcs.toml, so it runs in CI without /work/shared.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from detector.importer import MappingError, extra_column_name, import_data
from detector.tables import read_dataset

ROOT = Path(__file__).resolve().parents[1]
KCS = ROOT / "tests" / "kcs_sample"
KCS_2020 = KCS / "declarations_2020_sample.csv"
KCS_Q1 = KCS / "declarations_2021q1_sample.csv"
KCS_MAPPING = ROOT / "data" / "mappings" / "kcs.toml"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_kcs_mapping_imports_every_row(tmp_path):
    result = import_data([KCS_2020], tmp_path / "out", KCS_MAPPING)
    raw = pl.read_csv(KCS_2020, infer_schema=False)
    ds = read_dataset(tmp_path / "out")
    assert ds.report.ok
    assert ds.shipments.height == raw.height == result.records
    # labels: every row was inspected, Fraud 0/1 become label 0/1
    assert ds.labels.height == raw.height
    assert int(ds.labels["label"].sum()) == int(raw["Fraud"].cast(pl.Int64).sum())
    first = ds.shipments.row(0, named=True)
    src = raw.row(0, named=True)
    assert first["shipment_id"] == src["Declaration ID"]
    assert str(first["export_date"]) == src["Date"]
    assert first["consignee_name"] == src["Importer ID"]
    assert first["consignee_country"] == "KR" and first["destination_country"] == "KR"
    assert first["hs_code"] == src["HS6 Code"]
    assert first["description"] == f"HS {src['HS6 Code']}"
    assert first["quantity"] == 1
    assert first["value_usd"] == pytest.approx(float(src["Item Price"]) / 1180.0)
    assert first["gross_weight_kg"] == pytest.approx(float(src["Net Mass"]))
    # the rest are extra columns, kept under snake_case names; the labels are not inputs
    for extra in ("office_id", "declarant_id", "tax_rate", "country_of_origin", "net_mass"):
        assert extra in ds.shipments.columns
    assert "fraud" not in ds.shipments.columns and "critical_fraud" not in ds.shipments.columns
    typology = ds.labels.join(ds.shipments.select(pl.col("shipment_id").alias("record_id")),
                              on="record_id")["typology"]
    assert set(typology.drop_nulls()) <= {"duty_evasion", "critical_fraud"}
    # an empty Seller ID took the mapping's default, and the import said so
    empty_sellers = raw["Seller ID"].is_null().sum()
    assert (ds.shipments["exporter_name"] == "SELLER NOT DECLARED").sum() == empty_sellers
    if empty_sellers:
        assert any("shipments.exporter_name" in w and f"{empty_sellers} in all" in w
                   for w in result.warnings)


def test_several_sources_become_one_dataset(tmp_path):
    result = import_data([KCS_2020, KCS_Q1], tmp_path / "out", KCS_MAPPING)
    assert result.records == 400 + 150
    assert read_dataset(tmp_path / "out").shipments.height == 550


def test_zz_departure_falls_back_to_origin(tmp_path):
    src = _write(tmp_path / "x.csv", "id,day,dep,orig\nA,2021-01-02,ZZ,CN\nB,2021-01-03,ZZ,ZZ\n"
                                     "C,2021-01-04,JP,CN\n")
    mapping = _write(tmp_path / "m.toml", """
[shipments]
shipment_id = "id"
export_date = "day"
exporter_name = { value = "seller" }
exporter_country = { column = "dep", map = { ZZ = "" }, fallback = "orig", default = "KR" }
consignee_name = { value = "buyer" }
consignee_country = { value = "KR" }
destination_country = { value = "KR" }
hs_code = { value = "847330" }
description = { value = "parts" }
quantity = { value = 1 }
value_usd = { value = 10.5 }
""")
    result = import_data([src], tmp_path / "out", mapping)
    ds = read_dataset(tmp_path / "out")
    assert ds.shipments.sort("shipment_id")["exporter_country"].to_list() == ["CN", "KR", "JP"]
    assert any("default 'KR' was used (rows 2; 1 in all)" in w for w in result.warnings)


def _bad_mapping_case(tmp_path, mapping_text: str, csv_text: str):
    src = _write(tmp_path / "export.csv", csv_text)
    mapping = _write(tmp_path / "bad.toml", mapping_text)
    out = tmp_path / "out"
    with pytest.raises(MappingError) as info:
        import_data([src], out, mapping)
    assert not out.exists() or not any(out.iterdir()), "nothing may be written"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".detector-import-")]
    return str(info.value)


BASE = """
[shipments]
shipment_id = "id"
export_date = { column = "day", date_format = "%d/%m/%Y" }
exporter_name = "seller"
exporter_country = { value = "US" }
consignee_name = "buyer"
consignee_country = { value = "KR" }
destination_country = { value = "KR" }
hs_code = "hs"
description = { template = "HS {hs}" }
quantity = { value = 1 }
value_usd = { column = "price", divide = 1180 }
[labels]
label = "fraud"
"""
GOOD_ROWS = ("id,day,seller,buyer,hs,price,fraud\n"
             "A,02/01/2021,s1,b1,847330,1000,0\n"
             "B,03/01/2021,s2,b2,847330,2000,1\n")


def test_good_base_mapping_imports(tmp_path):
    src = _write(tmp_path / "export.csv", GOOD_ROWS)
    result = import_data([src], tmp_path / "out", _write(tmp_path / "m.toml", BASE))
    assert result.records == 2 and result.labels == 2 and result.confirmed == 1


def test_missing_source_column_is_named(tmp_path):
    message = _bad_mapping_case(tmp_path, BASE.replace('"price"', '"Item Price"'), GOOD_ROWS)
    assert "mapping key shipments.value_usd" in message
    assert "export.csv" in message and "'Item Price'" in message


def test_value_that_does_not_convert_is_named_with_rows(tmp_path):
    rows = GOOD_ROWS + "C,04/01/2021,s3,b3,847330,n/a,0\nD,2021-01-05,s4,b4,847330,5,0\n"
    message = _bad_mapping_case(tmp_path, BASE, rows)
    assert "mapping key shipments.value_usd" in message and "column 'price'" in message
    assert "rows 3; 1 in all" in message and "'n/a'" in message
    assert "mapping key shipments.export_date" in message and "rows 4; 1 in all" in message
    assert "'2021-01-05'" in message and "%d/%m/%Y" in message


def test_label_other_than_0_or_1_is_refused(tmp_path):
    message = _bad_mapping_case(tmp_path, BASE, GOOD_ROWS + "C,04/01/2021,s3,b3,847330,5,2\n")
    assert "mapping key labels.label" in message and "column 'fraud'" in message
    assert "rows 3; 1 in all" in message and "'2'" in message


def test_unknown_mapping_key_and_unmapped_required_column(tmp_path):
    text = BASE.replace('hs_code = "hs"\n', 'hs_cod = "hs"\n')
    message = _bad_mapping_case(tmp_path, text, GOOD_ROWS)
    assert "mapping key shipments.hs_cod" in message
    assert "mapping key shipments.hs_code: required contract column not mapped" in message


def test_contract_problem_is_named_by_mapping_key_and_source_row(tmp_path):
    text = BASE.replace('exporter_country = { value = "US" }', 'exporter_country = "seller"')
    message = _bad_mapping_case(tmp_path, text, GOOD_ROWS)
    assert "mapping key shipments.exporter_country" in message
    assert "ISO 3166" in message and "export.csv" in message and "'s1'" in message and "column 'seller'" in message


def test_refuses_to_write_over_an_existing_dataset(tmp_path):
    src = _write(tmp_path / "export.csv", GOOD_ROWS)
    mapping = _write(tmp_path / "m.toml", BASE)
    import_data([src], tmp_path / "out", mapping)
    with pytest.raises(Exception, match="already holds"):
        import_data([src], tmp_path / "out", mapping)


def test_extra_column_names():
    assert extra_column_name("Net Mass (kg)") == "net_mass_kg"
    assert extra_column_name("Country of Origin Indicator") == "country_of_origin_indicator"


def test_cli_import_exit_codes(tmp_path):
    from typer.testing import CliRunner

    from detector.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["import", str(KCS_Q1), str(tmp_path / "q1"), "--mapping",
                             str(KCS_MAPPING)])
    assert ok.exit_code == 0, ok.output
    assert "150 shipments" in ok.stdout
    src = _write(tmp_path / "export.csv", GOOD_ROWS + "C,04/01/2021,s3,b3,847330,5,7\n")
    bad = runner.invoke(app, ["import", str(src), str(tmp_path / "bad"), "--mapping",
                              str(_write(tmp_path / "m.toml", BASE))])
    assert bad.exit_code == 1
    assert "labels.label" in bad.stderr and not (tmp_path / "bad").exists()

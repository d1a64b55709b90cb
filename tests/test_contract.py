"""The data contract (DATA_CONTRACT.md): reading, validation messages, quarantine, round trips."""

from __future__ import annotations

import csv
import io
import tempfile
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from conftest import valid_tables, write_dataset
from csv_fixtures import digests, set_cell
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.contract import INPUT_TABLES
from detector.errors import InputError
from detector.tables import (
    FatalInputError,
    ValidationReport,
    read_dataset,
    resolve_labels,
    write_quarantine,
    write_table,
)

# ------------------------------------------------------------------ helpers


def append_csv_row(path: Path, values: dict[str, str]) -> None:
    df = pl.read_csv(path, infer_schema=False)
    pl.concat([df, pl.DataFrame([values])], how="diagonal").write_csv(path)


def fatal_report(directory: Path) -> ValidationReport:
    with pytest.raises(FatalInputError) as err:
        read_dataset(directory)
    return err.value.report


def issue_text(report: ValidationReport, file: str, column: str | None,
               severity: str = "error") -> str:
    """The text of the one issue about ``file``/``column`` (fails if there is none)."""
    found = [str(i) for i in report.issues
             if i.file == file and i.column == column and i.severity == severity]
    assert found, f"no {severity} for {file}/{column} in:\n{report.text()}"
    return found[0]


# ------------------------------------------------------------------ round trips


def _expected(tables: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    expected = dict(tables)
    expected["labels"] = resolve_labels(tables["labels"], ValidationReport(), None)
    return expected


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_round_trip_of_every_input_table(tmp_path, fmt):
    tables = valid_tables()
    directory = write_dataset(tmp_path / "ds", tables, fmt)
    dataset = read_dataset(directory)
    expected = _expected(tables)
    for name in ("shipments", "parties", "leases", "labels", "screening_list"):
        got = getattr(dataset, name)
        if name == "labels":  # resolved labels come in record-table order
            got = got.sort("record_kind", "record_id")
        assert got.equals(expected[name]), name
        assert got.schema == INPUT_TABLES[name].schema
    # and what was read, written again, reads the same
    again = write_dataset(tmp_path / "again", {n: getattr(dataset, n) for n in tables}, fmt)
    reread = read_dataset(again)
    for name in tables:
        assert getattr(reread, name).equals(getattr(dataset, name)), name


def test_valid_fixture_reads_with_only_the_duplicate_label_warning(valid_dataset_dir):
    dataset = read_dataset(valid_dataset_dir)
    assert dataset.report.ok
    assert len(dataset.report.warnings) == 1
    assert "several labels" in str(dataset.report.warnings[0])
    assert (dataset.shipments.height, dataset.parties.height, dataset.leases.height) == (10, 5, 2)


def test_parquet_types_are_cast(tmp_path):
    tables = valid_tables()
    directory = write_dataset(tmp_path / "ds", tables, "parquet")
    shipments = tables["shipments"].with_columns(
        pl.col("quantity").cast(pl.Int32),
        pl.col("value_usd").cast(pl.Int64),  # an integer column where a float is expected
        pl.col("gross_weight_kg").cast(pl.Float32),
        # 01:00 in Shanghai on 8 Jan is 17:00 UTC on 7 Jan: the UTC date is kept
        (pl.col("export_date").cast(pl.Datetime("us")) + pl.duration(hours=1))
        .dt.replace_time_zone("Asia/Shanghai").alias("export_date"),
    )
    shipments.write_parquet(directory / "shipments.parquet")
    leases = tables["leases"].with_columns(pl.col("gpu_count").cast(pl.Float64),  # 256.0
                                           pl.col("start_date").cast(pl.Datetime("ms")))
    leases.write_parquet(directory / "leases.parquet")
    dataset = read_dataset(directory)
    assert dataset.shipments["quantity"].dtype == pl.Int64
    assert dataset.shipments["quantity"].to_list() == tables["shipments"]["quantity"].to_list()
    assert dataset.shipments["value_usd"].to_list() == tables["shipments"]["value_usd"].to_list()
    assert dataset.shipments["export_date"][0] == date(2024, 1, 7)
    assert dataset.leases["gpu_count"].to_list() == [256, 16]
    assert dataset.leases["start_date"].to_list() == tables["leases"]["start_date"].to_list()


def test_parquet_float_that_is_not_whole_is_an_error(tmp_path):
    tables = valid_tables()
    directory = write_dataset(tmp_path / "ds", tables, "parquet")
    tables["leases"].with_columns(
        pl.Series("gpu_count", [256.0, 16.5])).write_parquet(directory / "leases.parquet")
    text = issue_text(fatal_report(directory), "leases.parquet", "gpu_count")
    assert "whole number" in text and "rows 2" in text and "16.5" in text


# ------------------------------------------------------------------ one class of problem each


@pytest.mark.parametrize("table, row, column, value, expected", [
    ("shipments", 3, "quantity", "ten", "whole number"),
    ("shipments", 2, "value_usd", "12,5k", "finite number"),
    ("shipments", 5, "value_usd", "inf", "finite number"),
    ("shipments", 4, "export_date", "2024-13-45", "date"),
    ("shipments", 6, "export_date", "03/04/2024", "date"),
    ("shipments", 7, "routed_export", "maybe", "true/false"),
    ("shipments", 1, "consignee_country", "XX", "ISO 3166-1"),
    ("shipments", 8, "destination_country", "Germany", "ISO 3166-1"),
    ("shipments", 4, "transit_countries", "HK;ZZ", "country codes"),
    ("shipments", 9, "hs_code", "84715A", "6 to 10 digits"),
    ("shipments", 10, "hs_code", "8471", "6 to 10 digits"),
    ("parties", 2, "incorporation_date", "yesterday", "date"),
    ("parties", 3, "employees", "many", "whole number"),
    ("leases", 2, "gpu_count", "2.5", "whole number"),
    ("labels", 1, "label", "yes", "whole number"),
    ("labels", 2, "decided_on", "2024-02-30", "date"),
])
def test_uncastable_value_is_named(valid_dataset_dir, table, row, column, value, expected):
    set_cell(valid_dataset_dir / f"{table}.csv", row, column, value)
    text = issue_text(fatal_report(valid_dataset_dir), f"{table}.csv", column)
    assert expected in text
    assert f"rows {row};" in text
    assert repr(value) in text


def test_required_value_empty(valid_dataset_dir):
    set_cell(valid_dataset_dir / "shipments.csv", 6, "consignee_name", "  ")
    text = issue_text(fatal_report(valid_dataset_dir), "shipments.csv", "consignee_name")
    assert "required value is empty" in text and "rows 6;" in text


def test_duplicate_id(valid_dataset_dir):
    set_cell(valid_dataset_dir / "shipments.csv", 4, "shipment_id", "S0001")
    text = issue_text(fatal_report(valid_dataset_dir), "shipments.csv", "shipment_id")
    assert "duplicate id" in text and "rows 1, 4;" in text and "'S0001'" in text


def test_missing_required_column(valid_dataset_dir):
    path = valid_dataset_dir / "shipments.csv"
    pl.read_csv(path, infer_schema=False).drop("quantity").write_csv(path)
    text = issue_text(fatal_report(valid_dataset_dir), "shipments.csv", "quantity")
    assert "required column(s) missing" in text


def test_missing_optional_column_is_nulls(valid_dataset_dir):
    path = valid_dataset_dir / "shipments.csv"
    pl.read_csv(path, infer_schema=False).drop("payer_name", "incoterm").write_csv(path)
    dataset = read_dataset(valid_dataset_dir)
    assert dataset.shipments["payer_name"].null_count() == 10


def test_wrong_delimiter(valid_dataset_dir):
    path = valid_dataset_dir / "parties.csv"
    pl.read_csv(path, infer_schema=False).write_csv(path, separator=";")
    text = issue_text(fatal_report(valid_dataset_dir), "parties.csv", "party_id, name, country")
    assert "comma-separated" in text


def test_non_utf8_bytes_are_located(valid_dataset_dir):
    path = valid_dataset_dir / "shipments.csv"
    data = path.read_bytes()
    third_row = data.index(b"\nS0003,") + 1
    at = data.index(b"Bay Area GPU LLC", third_row)
    path.write_bytes(data[:at] + b"Bay \xe9rea GPU LLC" + data[at + len(b"Bay Area GPU LLC"):])
    text = issue_text(fatal_report(valid_dataset_dir), "shipments.csv", "exporter_name")
    assert "UTF-8" in text and "line 4 (data row 3)" in text and "rea GPU" in text


def test_unreadable_parquet(valid_dataset_dir):
    (valid_dataset_dir / "leases.csv").unlink()
    (valid_dataset_dir / "leases.parquet").write_bytes(b"PAR1 this is not parquet")
    text = issue_text(fatal_report(valid_dataset_dir), "leases.parquet", None)
    assert "cannot be read" in text


def test_empty_file(valid_dataset_dir):
    (valid_dataset_dir / "parties.csv").write_bytes(b"")
    assert "empty" in issue_text(fatal_report(valid_dataset_dir), "parties.csv", None)


def test_header_only(valid_dataset_dir):
    path = valid_dataset_dir / "shipments.csv"
    path.write_text(path.read_text().splitlines()[0] + "\n")
    assert "no rows" in issue_text(fatal_report(valid_dataset_dir), "shipments.csv", None)


def test_header_only_optional_table_is_empty(valid_dataset_dir):
    path = valid_dataset_dir / "leases.csv"
    path.write_text(path.read_text().splitlines()[0] + "\n")
    (valid_dataset_dir / "labels.csv").unlink()
    dataset = read_dataset(valid_dataset_dir)
    assert dataset.leases.height == 0 and dataset.labels.height == 0


def test_missing_shipments_table(valid_dataset_dir):
    (valid_dataset_dir / "shipments.csv").unlink()
    report = fatal_report(valid_dataset_dir)
    assert any("required table missing" in str(i) for i in report.errors)


def test_both_csv_and_parquet(valid_dataset_dir):
    valid_tables()["leases"].write_parquet(valid_dataset_dir / "leases.parquet")
    text = issue_text(fatal_report(valid_dataset_dir), "leases.csv / leases.parquet", None)
    assert "both a CSV and a Parquet" in text


def test_nonexistent_directory(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_dataset(tmp_path / "nowhere")


def test_all_problems_in_one_message(valid_dataset_dir):
    set_cell(valid_dataset_dir / "shipments.csv", 2, "quantity", "two")
    set_cell(valid_dataset_dir / "parties.csv", 1, "country", "XX")
    set_cell(valid_dataset_dir / "leases.csv", 1, "start_date", "soon")
    with pytest.raises(FatalInputError) as err:
        read_dataset(valid_dataset_dir)
    message = str(err.value)
    for fragment in ("shipments.csv, column 'quantity'", "parties.csv, column 'country'",
                     "leases.csv, column 'start_date'"):
        assert fragment in message


# ------------------------------------------------------------------ recoverable problems


def test_unknown_enum_value_is_a_warning_and_read_as_unknown(valid_dataset_dir):
    set_cell(valid_dataset_dir / "shipments.csv", 5, "transport_mode", "Hovercraft")
    set_cell(valid_dataset_dir / "shipments.csv", 6, "transport_mode", "AIR")
    dataset = read_dataset(valid_dataset_dir)
    assert dataset.report.ok
    modes = dataset.shipments["transport_mode"].to_list()
    assert modes[4] == "unknown" and modes[5] == "air"
    text = issue_text(dataset.report, "shipments.csv", "transport_mode", "warning")
    assert "rows 5;" in text and "'Hovercraft'" in text and "unknown" in text


def test_dangling_party_reference_is_a_warning(valid_dataset_dir):
    set_cell(valid_dataset_dir / "shipments.csv", 3, "consignee_party_id", "P999")
    dataset = read_dataset(valid_dataset_dir)
    assert dataset.report.ok and dataset.shipments.height == 10
    text = issue_text(dataset.report, "shipments.csv", "consignee_party_id", "warning")
    assert "'P999'" in text and "party_id not in parties" in text


def test_label_for_unknown_record_is_a_warning_and_ignored(valid_dataset_dir):
    append_csv_row(valid_dataset_dir / "labels.csv",
                   {"record_kind": "shipment", "record_id": "S9999", "label": "1"})
    dataset = read_dataset(valid_dataset_dir)
    assert dataset.report.ok
    assert "S9999" not in dataset.labels["record_id"].to_list()
    text = issue_text(dataset.report, "labels.csv", "record_id", "warning")
    assert any("'S9999'" in str(i) and "not in the dataset" in str(i)
               for i in dataset.report.warnings), text


def test_duplicate_labels_latest_wins_and_tie_gives_1(valid_dataset_dir):
    path = valid_dataset_dir / "labels.csv"
    # S0003: 0 on 2024-03-01 then 1 on 2024-04-01; add a later 0: now 0 wins.
    append_csv_row(path, {"record_kind": "shipment", "record_id": "S0003", "label": "0",
                          "decided_on": "2024-05-01"})
    # S0004: a tie on the same date -> 1
    for label in ("0", "1", "0"):
        append_csv_row(path, {"record_kind": "shipment", "record_id": "S0004", "label": label,
                              "decided_on": "2024-05-01"})
    dataset = read_dataset(valid_dataset_dir)
    labels = dict(dataset.labels.select("record_id", "label").iter_rows())
    assert labels["S0003"] == 0 and labels["S0004"] == 1
    assert labels["S0001"] == 1 and labels["L001"] == 1
    text = issue_text(dataset.report, "labels.csv", "record_id", "warning")
    assert "'S0003'" in text and "'S0004'" in text


# ------------------------------------------------------------------ quarantine


def test_quarantine_keeps_every_row_and_leaves_inputs_untouched(valid_dataset_dir, tmp_path):
    set_cell(valid_dataset_dir / "shipments.csv", 2, "quantity", "two")
    set_cell(valid_dataset_dir / "shipments.csv", 5, "consignee_country", "XX")
    set_cell(valid_dataset_dir / "shipments.csv", 9, "shipment_id", "S0008")  # dup of row 8
    set_cell(valid_dataset_dir / "parties.csv", 4, "incorporation_date", "2023-02-30")
    set_cell(valid_dataset_dir / "leases.csv", 2, "gpu_count", "sixteen")
    before = digests(valid_dataset_dir)

    dataset = read_dataset(valid_dataset_dir, allow_errors=True)
    assert not dataset.report.ok
    written = write_quarantine(dataset, tmp_path / "quarantine")
    assert digests(valid_dataset_dir) == before  # input files never modified

    for table, id_column in [("shipments", "shipment_id"), ("parties", "party_id"),
                             ("leases", "lease_id")]:
        original = pl.read_csv(valid_dataset_dir / f"{table}.csv", infer_schema=False)
        quarantined = pl.read_csv(tmp_path / "quarantine" / f"{table}.csv", infer_schema=False)
        passed = getattr(dataset, table)
        assert quarantined.columns == original.columns + ["problem"]
        assert quarantined["problem"].is_not_null().all()
        assert passed.height + quarantined.height == original.height, table
        # the same rows, none lost, none twice (ids compared as multisets)
        assert sorted(passed[id_column].to_list() + quarantined[id_column].to_list()) == \
            sorted(original[id_column].to_list())
    shipments_q = pl.read_csv(tmp_path / "quarantine" / "shipments.csv", infer_schema=False)
    assert sorted(shipments_q["shipment_id"]) == ["S0002", "S0005", "S0008", "S0008"]
    problems = " | ".join(shipments_q["problem"])
    assert "quantity: expected a whole number, got 'two'" in problems
    assert "duplicate id 'S0008'" in problems
    assert {p.name for p in written} == {"shipments.csv", "parties.csv", "leases.csv"}


# ------------------------------------------------------------------ property: no crash


def _dataset_bytes() -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        directory = write_dataset(Path(tmp) / "ds", valid_tables())
        return {p.name: p.read_bytes() for p in directory.iterdir()}


VALID_BYTES = _dataset_bytes()
FILES = sorted(VALID_BYTES)


def _corrupt(data: bytes, action: str, draw) -> bytes:
    if not data:  # already truncated to nothing
        return draw(st.binary(max_size=4))
    if action == "flip":
        at = draw(st.integers(0, len(data) - 1))
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
    if action == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    rows = list(csv.reader(io.StringIO(data.decode())))
    width = len(rows[0])
    if width == 0:  # a first line with no fields (truncated, or blank): no column to edit
        return _corrupt(data, "flip", draw)
    col = draw(st.integers(0, width - 1))
    if action == "delete_column":
        rows = [r[:col] + r[col + 1:] for r in rows]
    elif action == "duplicate_column":
        rows = [r + [r[col]] for r in rows]
    else:  # replace a cell (the header included) with arbitrary text
        row = draw(st.integers(0, len(rows) - 1))
        rows[row][col] = draw(st.text(max_size=12))
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode("utf-8", "surrogatepass")


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_corruption_gives_a_report_or_input_error(data):
    corrupted = dict(VALID_BYTES)
    for _ in range(data.draw(st.integers(1, 3))):
        name = data.draw(st.sampled_from(FILES))
        action = data.draw(st.sampled_from(
            ["flip", "truncate", "delete_column", "duplicate_column", "replace_cell"]))
        try:
            corrupted[name] = _corrupt(corrupted[name], action, data.draw)
        except (UnicodeDecodeError, csv.Error, IndexError):
            corrupted[name] = _corrupt(corrupted[name], "flip", data.draw)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for name, content in corrupted.items():
            (directory / name).write_bytes(content)
        for allow_errors in (True, False):
            try:
                dataset = read_dataset(directory, allow_errors=allow_errors)
            except InputError as exc:
                assert str(exc).strip()
                continue
            assert isinstance(dataset.report, ValidationReport)
            if allow_errors and dataset.quarantined:
                write_quarantine(dataset, directory / "q")


def test_writer_rejects_unknown_extension(tmp_path):
    from detector.errors import UsageError

    with pytest.raises(UsageError):
        write_table(pl.DataFrame({"a": [1]}), tmp_path / "out.txt")
    assert not list(tmp_path.iterdir())

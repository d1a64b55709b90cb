"""Hardening (issue #10): row accounting, line-level recovery, formula neutralisation and
exit codes for the environment, checked through the CLI and the library.

The corruption corpus runs every case through `validate`, `score` and `score
--quarantine` on a small simulated world and asserts the exit code, the message and that
every line of the corrupted file ends up scored or quarantined.
"""

from __future__ import annotations

import csv
import errno
import os
import shutil
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pipeline_fixtures import cli

from detector.errors import EnvironmentFailure, InputError
from detector.tables import (
    FatalInputError,
    ValidationReport,
    read_dataset,
    read_table,
    write_table,
)


@pytest.fixture(scope="module")
def small_world(tmp_path_factory) -> Path:
    from detector.simulation import simulate

    out = tmp_path_factory.mktemp("small_world")
    simulate(out, seed=11, shipments=300, start=date(2024, 1, 1), months=4)
    (out / "truth.parquet").unlink()
    return out


def _copy(world: Path, to: Path) -> Path:
    shutil.copytree(world, to)
    return to


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")


def _edit_line(path: Path, number: int, edit) -> None:
    """Replace physical line ``number`` (1 = the header) with ``edit(line)``."""
    lines = _lines(path)
    lines[number - 1] = edit(lines[number - 1])
    path.write_text("\n".join(lines), encoding="utf-8")


def _data_lines(path: Path) -> int:
    """Data lines of a file without multi-line fields: its newlines minus the header."""
    return path.read_bytes().rstrip(b"\n").count(b"\n")


def _replace_field(line: str, index: int, value: str) -> str:
    cells = next(csv.reader([line]))
    cells[index] = value
    # written raw, as a careless editor would: no quoting of the new value
    return ",".join(c if i == index or ("," not in c and '"' not in c)
                    else '"' + c.replace('"', '""') + '"' for i, c in enumerate(cells))


def _column(path: Path, name: str) -> int:
    return _lines(path)[0].split(",").index(name)


# ------------------------------------------------------------------ the corpus
# name -> (corrupt(dataset_dir), table file, quarantinable, fragments of the message)

def _stray_quote_lease(d: Path):
    _edit_line(d / "leases.csv", 2, lambda line: line.replace("LSE-", 'LSE-"', 1))


def _stray_quote_screening(d: Path):
    _edit_line(d / "screening_list.csv", 2, lambda line: line[:3] + '"' + line[3:])


def _quote_in_header_and_cell(d: Path):
    path = d / "shipments.csv"
    _edit_line(path, 1, lambda line: line.replace("consignee_name", 'consignee"_name'))
    _edit_line(path, 40, lambda line: _replace_field(line, _column(path, "description"),
                                                     'HGX "H100'))


def _extra_field(d: Path):
    _edit_line(d / "shipments.csv", 3, lambda line: line + ",surplus")


def _rack_quote(d: Path):
    path = d / "shipments.csv"
    _edit_line(path, 4, lambda line: _replace_field(line, _column(path, "description"),
                                                    '19" RACK server'))


def _unterminated_quote(d: Path):
    path = d / "shipments.csv"
    _edit_line(path, 6, lambda line: _replace_field(line, _column(path, "description"),
                                                    '"HGX H100 8-GPU'))


def _fewer_fields(d: Path):
    _edit_line(d / "leases.csv", 3, lambda line: ",".join(line.split(",")[:3]))


def _missing_shipments(d: Path):
    (d / "shipments.csv").unlink()


def _two_files_for_one_table(d: Path):
    pl.read_csv(d / "shipments.csv", infer_schema=False).write_parquet(d / "shipments.parquet")


def _symlink_loop(d: Path):
    (d / "leases.csv").unlink()
    os.symlink("leases.csv", d / "leases.csv")


def _directory_named_like_a_table(d: Path):
    (d / "shipments.csv").unlink()
    (d / "shipments.csv").mkdir()


CORPUS = {
    "stray quote in a lease id": (_stray_quote_lease, "leases.csv", True,
                                  ["leases.csv", "line 2", "quote"]),
    "stray quote in the screening list": (_stray_quote_screening, "screening_list.csv", True,
                                          ["screening_list.csv", "line 2", "quote"]),
    "quote in the header and one cell": (_quote_in_header_and_cell, "shipments.csv", False,
                                         ["shipments.csv", "line 1", "header", "quote"]),
    "one extra field": (_extra_field, "shipments.csv", True,
                        ["shipments.csv", "line 3", "30 field(s) where the header has 29"]),
    'unbalanced quote in 19" RACK': (_rack_quote, "shipments.csv", True,
                                     ["shipments.csv", "line 4", "quote", "19"]),
    "quote never closed": (_unterminated_quote, "shipments.csv", True,
                           ["shipments.csv", "line 6", "quote"]),
    "a line with fields missing": (_fewer_fields, "leases.csv", True,
                                   ["leases.csv", "line 3", "3 field(s) where the header has 14"]),
    "missing shipments table": (_missing_shipments, "shipments.csv", False,
                                ["shipments.csv", "required table missing"]),
    "both CSV and Parquet": (_two_files_for_one_table, "shipments.csv", False,
                             ["both a CSV and a Parquet file"]),
    "symlink loop": (_symlink_loop, "leases.csv", False, ["leases.csv", "link"]),
    "directory named like a table": (_directory_named_like_a_table, "shipments.csv", False,
                                     ["shipments.csv", "is a directory"]),
}


@pytest.mark.parametrize("case", list(CORPUS))
def test_corruption_corpus(case, small_world, empty_home, tmp_path):
    corrupt, table_file, quarantinable, fragments = CORPUS[case]
    dataset = _copy(small_world, tmp_path / "dataset")
    corrupt(dataset)

    validated = cli(["validate", dataset], empty_home)
    assert validated.exit_code == 1, validated.output
    for fragment in fragments:
        assert fragment in validated.stderr, (fragment, validated.stderr)
    assert "Traceback" not in validated.output

    plain = cli(["score", dataset, "--out", tmp_path / "plain.csv"], empty_home)
    assert plain.exit_code == 1, plain.output
    assert fragments[0] in plain.stderr
    assert not (tmp_path / "plain.csv").exists()

    quarantine = tmp_path / "quarantine"
    out = tmp_path / "scores.csv"
    scored = cli(["score", dataset, "--out", out, "--quarantine", quarantine], empty_home)
    if not quarantinable:  # the table itself is unusable: an error with or without it
        assert scored.exit_code == 1, scored.output
        assert fragments[0] in scored.stderr
        assert not out.exists()
        return
    assert scored.exit_code == 0, scored.output
    table = table_file.removesuffix(".csv")
    with open(quarantine / table_file, newline="", encoding="utf-8") as fh:
        set_aside = list(csv.DictReader(fh))
    assert set_aside and all(r["problem"] for r in set_aside)
    bad = [r for r in set_aside if r.get("line_number")]
    assert bad, set_aside  # the unparseable line is there with its number and raw text
    assert all(r["raw_line"] for r in bad)
    scores = pl.read_csv(out, infer_schema=False)
    if table in ("shipments", "leases"):
        kind = table.removesuffix("s")
        used = scores.filter(pl.col("record_kind") == kind).height
        assert used + len(set_aside) == _data_lines(dataset / table_file)
        assert f"quarantined {len(set_aside)} row(s)" in scored.stderr


def test_validate_counts_every_line_of_a_damaged_table(small_world, tmp_path):
    """The issue's case: one stray quote made `validate` say "OK (0 leases)"."""
    dataset = _copy(small_world, tmp_path / "dataset")
    _stray_quote_lease(dataset)
    read = read_dataset(dataset, allow_errors=True)
    lines = _data_lines(dataset / "leases.csv")
    assert read.leases.height == lines - 1
    assert read.quarantined["leases"].height == 1
    assert read.quarantined["leases"]["line_number"].to_list() == [2]


# ------------------------------------------------------------------ byte-level fuzzing

_MUTATION_BYTES = [b'"', b",", b"\n", b"\r", b"\x00", b"a", b";", b" ", b"\r\n", b'""']


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(data=st.data())
def test_byte_mutations_never_crash_and_never_lose_a_row(data, tmp_path_factory):
    from conftest import valid_tables, write_dataset

    directory = write_dataset(tmp_path_factory.mktemp("fuzz"), valid_tables())
    name = data.draw(st.sampled_from(["shipments.csv", "leases.csv", "parties.csv"]))
    raw = bytearray((directory / name).read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw)))
        action = data.draw(st.sampled_from(["insert", "replace", "delete"]))
        piece = data.draw(st.sampled_from(_MUTATION_BYTES))
        if action == "insert":
            raw[at:at] = piece
        elif action == "replace":
            raw[at:at + len(piece)] = piece
        else:
            del raw[at:at + 1]
    (directory / name).write_bytes(bytes(raw))
    try:
        dataset = read_dataset(directory, allow_errors=True)
    except InputError as exc:  # FatalInputError included: a clear, located message
        assert str(exc).strip()
        return
    table = name.removesuffix(".csv")
    used = getattr(dataset, table).height
    set_aside = dataset.quarantined[table].height if table in dataset.quarantined else 0
    body = bytes(raw)
    lines = body.count(b"\n") - (1 if body.endswith(b"\n") else 0)  # data lines
    if b'"' not in body and b"\r" not in body:
        assert used + set_aside == lines  # one record per line: every one accounted for
    else:
        assert used + set_aside <= max(lines, 0) + body.count(b"\r")
    assert "row accounting failed" not in dataset.report.text()


# ------------------------------------------------------------------ formulas and bidi

_DANGEROUS = ["=HYPERLINK(\"http://x\",\"y\")", "+1+2", "-3+4", "@SUM(A1)", "\tTAB", "\rCR",
              "'=already quoted", "plain", "x=1", "rtl \u202eevil", None]


def test_csv_cells_that_start_a_formula_get_a_leading_quote(tmp_path):
    frame = pl.DataFrame({"text": _DANGEROUS, "number": [-1.5] * len(_DANGEROUS)})
    path = write_table(frame, tmp_path / "out.csv")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    cells = [r["text"] for r in rows]
    for raw, cell in zip(_DANGEROUS, cells):
        if raw is None:
            assert cell == ""
        elif raw[0] in "=+-@\t\r" or raw.startswith("'="):
            assert cell == "'" + raw, (raw, cell)
        elif "\u202e" in raw:
            assert cell == "rtl \\u202eevil"
        else:
            assert cell == raw
    assert all(c[:1] not in ("=", "+", "-", "@", "\t", "\r") for c in cells)
    assert {r["number"] for r in rows} == {"-1.5"}  # numbers are numbers, not text cells
    # Parquet keeps the raw values
    parquet = write_table(frame, tmp_path / "out.parquet")
    assert pl.read_parquet(parquet)["text"].to_list() == _DANGEROUS


def test_a_neutralised_table_reads_back_as_written(tmp_path):
    frame = pl.DataFrame({"name": [v for v in _DANGEROUS if v and "\u202e" not in v],
                          "list_name": "Entity List"})
    path = write_table(frame, tmp_path / "screening_list.csv")
    from detector.contract import SCREENING_LIST

    read = read_table(path, SCREENING_LIST, ValidationReport())
    expected = [v.strip() for v in frame["name"].to_list()]
    assert read.data["name"].to_list() == expected


def test_scores_and_quarantine_csv_are_neutralised(small_world, empty_home, tmp_path):
    dataset = _copy(small_world, tmp_path / "dataset")
    shipments = pl.read_csv(dataset / "shipments.csv", infer_schema=False)
    attack = '=HYPERLINK("http://x","y")'
    shipments = shipments.with_columns(
        shipment_id=pl.when(pl.int_range(pl.len()) == 0).then(pl.lit(attack))
        .when(pl.int_range(pl.len()) == 1).then(pl.lit("@cmd|'/c calc'!A0"))
        .otherwise(pl.col("shipment_id")),
        quantity=pl.when(pl.int_range(pl.len()) == 1).then(pl.lit("two"))
        .otherwise(pl.col("quantity")))
    write_table(shipments, dataset / "shipments.csv", safe_text=False)  # raw, as received
    assert "'=HYPERLINK" not in (dataset / "shipments.csv").read_text()  # no guard in input
    out, quarantine = tmp_path / "scores.csv", tmp_path / "q"
    result = cli(["score", dataset, "--out", out, "--quarantine", quarantine], empty_home)
    assert result.exit_code == 0, result.output
    with open(out, newline="", encoding="utf-8") as fh:
        ids = [r["record_id"] for r in csv.DictReader(fh)]
    assert "'" + attack in ids and attack not in ids
    with open(quarantine / "shipments.csv", newline="", encoding="utf-8") as fh:
        set_aside = list(csv.DictReader(fh))
    assert [r["shipment_id"] for r in set_aside] == ["'@cmd|'/c calc'!A0"]
    for path in (out, quarantine / "shipments.csv"):
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.reader(fh):
                assert all(c[:1] not in ("=", "+", "-", "@", "\t", "\r") for c in row), row


# ------------------------------------------------------------------ the environment


def _one_line_error(result) -> str:
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_out_that_is_a_directory_is_a_clear_error(small_world, empty_home, tmp_path):
    (tmp_path / "out.csv").mkdir()
    result = cli(["score", small_world, "--out", tmp_path / "out.csv"], empty_home)
    assert result.exit_code == 1
    assert "is a directory" in _one_line_error(result)
    report = cli(["report", small_world, "--out", tmp_path / "out.csv"], empty_home)
    assert report.exit_code in (1, 2)  # .csv is wrong usage for a report anyway
    (tmp_path / "r.html").mkdir()
    report = cli(["report", small_world, "--out", tmp_path / "r.html"], empty_home)
    assert report.exit_code == 1 and "is a directory" in _one_line_error(report)


def test_a_failed_sidecar_keeps_the_previous_scores(small_world, empty_home, tmp_path):
    out = tmp_path / "scores.csv"
    first = cli(["score", small_world, "--out", out], empty_home)
    assert first.exit_code == 0, first.output
    before = out.read_bytes()
    sidecar = tmp_path / "scores.csv.provenance.json"
    sidecar.unlink()
    sidecar.mkdir()
    again = cli(["score", small_world, "--out", out], empty_home)
    assert again.exit_code == 1
    assert "is a directory" in _one_line_error(again)
    assert out.read_bytes() == before  # the previous output was not deleted
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_simulate_into_an_existing_file_is_a_clear_error(tmp_path):
    target = tmp_path / "taken"
    target.write_text("mine")
    result = cli(["simulate", target, "--shipments", "50"], None)
    assert result.exit_code == 1
    _one_line_error(result)
    assert target.read_text() == "mine"


def test_a_full_disk_is_exit_3_and_leaves_nothing_half_written(small_world, empty_home,
                                                               tmp_path, monkeypatch):
    out = tmp_path / "scores.csv"
    out.write_text("previous\n")

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pl.DataFrame, "write_csv", full)
    result = cli(["score", small_world, "--out", out], empty_home)
    assert result.exit_code == 3, result.output
    line = _one_line_error(result)
    assert "disk is full" in line and str(out) in line
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv"]


def test_write_table_maps_os_errors_to_exit_codes(tmp_path, monkeypatch):
    frame = pl.DataFrame({"a": ["x"]})

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(pl.DataFrame, "write_parquet", read_only)
    with pytest.raises(EnvironmentFailure, match="Read-only file system"):
        write_table(frame, tmp_path / "t.parquet")
    with pytest.raises(InputError, match="is a file, not a directory"):
        (tmp_path / "file").write_text("")
        write_table(frame, tmp_path / "file" / "t.csv")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_temporary_files_of_a_killed_run_are_removed_by_the_next(tmp_path):
    import tempfile

    dead = 2 ** 22 + 12345  # above the default pid_max: no such process
    stale = tmp_path / f".scores.csv.{dead}.abcd.tmp"
    stale.write_text("half")
    stale_dir = Path(tempfile.gettempdir()) / f"detector-score-{dead}-x1"
    stale_dir.mkdir(exist_ok=True)
    alive = tmp_path / f".scores.csv.{os.getpid()}.efgh.tmp"
    alive.write_text("mine, in progress")
    write_table(pl.DataFrame({"a": ["x"]}), tmp_path / "scores.csv")
    from detector.files import temporary_directory

    with temporary_directory("score") as spill:
        assert spill.name.startswith(f"detector-score-{os.getpid()}-")
    assert not stale.exists() and alive.exists()
    assert not stale_dir.exists() and not spill.exists()


def test_read_dataset_refuses_an_unreadable_table_with_or_without_quarantine(
        valid_dataset_dir, monkeypatch):
    import builtins

    real_open = builtins.open

    def deny(path, *args, **kwargs):
        if str(path).endswith("leases.csv"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", deny)
    with pytest.raises(FatalInputError, match="leases.csv: cannot be read: Permission denied"):
        read_dataset(valid_dataset_dir, allow_errors=True)


# ------------------------------------------------------------------ the report


def test_report_pages_show_bidi_controls_escaped():
    from detector.report.render import environment

    page = environment().from_string("<p title='{{ x }}'>{{ x }}</p>").render(
        x="Acme \u202eLtd <b>")
    assert "\u202e" not in page
    assert page.count("Acme \\u202eLtd &lt;b&gt;") == 2


def test_a_case_card_lists_a_few_parties_at_one_address_and_counts_the_rest():
    from detector.report.cards import MAX_LISTED, Registry, shared_address

    parties = {f"P{i:06d}": {"party_id": f"P{i:06d}", "name": f"Shell {i}", "country": "HK",
                             "address": "1 Harbour Road"} for i in range(5000)}
    registry = Registry(parties, {"1 harbour road": sorted(parties)}, pl.DataFrame())
    shown, more = shared_address(registry, "1 harbour road", "P000000")
    assert len(shown) == MAX_LISTED
    assert more == 5000 - 1 - MAX_LISTED


def test_a_whitespace_only_list_item_is_skipped(valid_dataset_dir):
    from csv_fixtures import set_cell

    set_cell(valid_dataset_dir / "shipments.csv", 4, "transit_countries", "HK; ;SG")
    dataset = read_dataset(valid_dataset_dir)
    row = dataset.shipments.filter(pl.col("shipment_id") == "S0004")
    assert row["transit_countries"].to_list() == [["HK", "SG"]]


def test_an_os_failure_no_command_expected_is_one_line_and_exit_3(monkeypatch, capsys,
                                                                  tmp_path):
    import sys

    import detector.training
    from detector.cli import main

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "bundle"))

    monkeypatch.setattr(detector.training, "train", full_disk)
    monkeypatch.setattr(sys, "argv", ["detector", "train", str(tmp_path)])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "disk is full" in err[0] and "bundle" in err[0]


def test_an_unreadable_dataset_directory_is_exit_1(valid_dataset_dir, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) ==
                        valid_dataset_dir else real_access(path, mode))
    with pytest.raises(InputError, match="cannot be read"):
        read_dataset(valid_dataset_dir)

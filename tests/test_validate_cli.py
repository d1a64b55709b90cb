"""`detector validate DATASET_DIR [--quarantine DIR]` (CLI.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
from csv_fixtures import digests, set_cell
from typer.testing import CliRunner

from detector.cli import app

runner = CliRunner()


def _corrupt(directory: Path) -> None:
    set_cell(directory / "shipments.csv", 2, "quantity", "two")
    set_cell(directory / "shipments.csv", 7, "hs_code", "84715A")
    set_cell(directory / "parties.csv", 3, "country", "XX")
    set_cell(directory / "leases.csv", 1, "start_date", "soon")


def test_valid_dataset_exits_0(valid_dataset_dir):
    result = runner.invoke(app, ["validate", str(valid_dataset_dir)])
    assert result.exit_code == 0, result.output
    assert "OK (10 shipments, 2 leases, 5 parties, 4 labels; 1 warning(s))" in result.stdout
    assert "several labels for one record" in result.stderr  # the warning is still shown


def test_corrupted_dataset_lists_every_problem_and_exits_1(valid_dataset_dir):
    _corrupt(valid_dataset_dir)
    result = runner.invoke(app, ["validate", str(valid_dataset_dir)])
    assert result.exit_code == 1
    for fragment in ("shipments.csv, column 'quantity'", "rows 2;", "'two'",
                     "shipments.csv, column 'hs_code'", "'84715A'",
                     "parties.csv, column 'country'", "'XX'",
                     "leases.csv, column 'start_date'", "'soon'", "INVALID (4 problem(s)"):
        assert fragment in result.stderr, fragment
    assert "Traceback" not in result.output


def test_quarantine_writes_files_and_still_exits_1(valid_dataset_dir, tmp_path):
    _corrupt(valid_dataset_dir)
    before = digests(valid_dataset_dir)
    quarantine = tmp_path / "quarantine"
    result = runner.invoke(app, ["validate", str(valid_dataset_dir), "--quarantine",
                                 str(quarantine)])
    assert result.exit_code == 1
    assert "quarantined 4 row(s)" in result.stderr
    assert sorted(p.name for p in quarantine.iterdir()) == ["leases.csv", "parties.csv",
                                                            "shipments.csv"]
    shipments = pl.read_csv(quarantine / "shipments.csv", infer_schema=False)
    assert sorted(shipments["shipment_id"]) == ["S0002", "S0007"]
    assert shipments["problem"].is_not_null().all()
    assert digests(valid_dataset_dir) == before


def test_unreadable_dataset_exits_1_with_the_reason(valid_dataset_dir):
    (valid_dataset_dir / "shipments.csv").write_bytes(b"")
    result = runner.invoke(app, ["validate", str(valid_dataset_dir)])
    assert result.exit_code == 1
    assert "shipments.csv: the file is empty" in result.stderr
    assert "Traceback" not in result.output


def test_nonexistent_directory_exits_1(tmp_path):
    result = runner.invoke(app, ["validate", str(tmp_path / "nowhere")])
    assert result.exit_code == 1
    assert "nowhere: dataset directory not found" in result.stderr
    assert "Traceback" not in result.output


def test_python_dash_m_detector_validate(valid_dataset_dir, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "detector", "validate", str(valid_dataset_dir)],
                        check=False, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "OK (10 shipments" in ok.stdout

    _corrupt(valid_dataset_dir)
    bad = subprocess.run([sys.executable, "-m", "detector", "validate", str(valid_dataset_dir),
                          "--quarantine", str(tmp_path / "q")],
                         check=False, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert "shipments.csv, column 'quantity'" in bad.stderr
    assert "Traceback" not in bad.stderr + bad.stdout
    assert (tmp_path / "q" / "shipments.csv").exists()

    missing = subprocess.run([sys.executable, "-m", "detector", "validate",
                              str(tmp_path / "nowhere")],
                             check=False, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1
    assert "dataset directory not found" in missing.stderr
    assert "Traceback" not in missing.stderr

"""`kill -9` at fixed points of `score`, `report` and `train` (issue #10): no partial
output, the previous output intact, the store usable and the champion consistent.

The points are named checkpoints (detector.files.checkpoint): the command runs as a real
process with DETECTOR_KILL_AT=<point> and is killed there with SIGKILL.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest


def _run(args: list, home: Path, tmpdir: Path, kill_at: str | None = None,
         ) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(DETECTOR_HOME=str(home), TMPDIR=str(tmpdir))
    env.pop("DETECTOR_KILL_AT", None)
    if kill_at:
        env["DETECTOR_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "detector", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A small labelled world that trains (both labels in every slice): 4,000 shipments."""
    from datetime import date

    from detector.simulation import simulate

    out = tmp_path_factory.mktemp("kill_world")
    simulate(out, seed=7, shipments=4000, start=date(2024, 1, 1), months=12)
    return out


@pytest.fixture(scope="module")
def small_world(tmp_path_factory) -> Path:
    from datetime import date

    from detector.simulation import simulate

    out = tmp_path_factory.mktemp("kill_small_world")
    simulate(out, seed=11, shipments=300, start=date(2024, 1, 1), months=4)
    return out


def _killed(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == -signal.SIGKILL, (result.returncode, result.stderr[-2000:])


@pytest.mark.parametrize("command,out_name", [("score", "scores.csv"),
                                              ("report", "report.html")])
def test_a_killed_write_leaves_the_previous_output_and_the_next_run_cleans_up(
        command, out_name, small_world, empty_home, tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    out = tmp_path / out_name
    out.write_text("previous output\n")
    killed = _run([command, small_world, "--out", out], empty_home, tmpdir,
                  kill_at="write:before-rename")
    _killed(killed)
    assert out.read_text() == "previous output\n"  # nothing replaced, nothing partial
    left = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert left  # the killed process's temporary file is there ...
    if command == "score":
        assert any(p.name.startswith("detector-score-") for p in tmpdir.iterdir())
    again = _run([command, small_world, "--out", out], empty_home, tmpdir)
    assert again.returncode == 0, again.stderr[-2000:]
    assert out.read_text() != "previous output\n"
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # ... not now
    assert not list(tmpdir.iterdir())


def test_train_killed_after_registering_and_mid_run_leaves_a_consistent_registry(
        world, tmp_path):
    home, tmpdir = tmp_path / "home", tmp_path / "tmp"
    tmpdir.mkdir()
    # 1. killed after version 1 was registered, before the champion alias was set
    _killed(_run(["train", world], home, tmpdir, kill_at="train:registered"))
    # 2. killed inside the MLflow run: the run stays RUNNING, no version
    _killed(_run(["train", world], home, tmpdir, kill_at="train:logged"))
    listed = _run(["models"], home, tmpdir)
    assert listed.returncode == 0, listed.stderr
    failed = re.findall(r"failed +run ([0-9a-f]{32}) .*interrupted", listed.stdout)
    assert len(failed) == 1, listed.stdout  # the RUNNING run shows as failed
    assert re.search(r"^\s+1\s{2}\s{8}", listed.stdout, re.M), listed.stdout  # no champion
    # 3. the next training finishes what the killed ones left
    trained = _run(["train", world], home, tmpdir)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "registered chip-diversion version 2;" in trained.stdout  # not champion
    listed = _run(["models"], home, tmpdir)
    assert "failed" not in listed.stdout  # closed as FAILED in the store
    assert re.search(r"^\s+1\s+\*", listed.stdout, re.M), listed.stdout  # first = champion
    assert not re.search(r"^\s+2\s+\*", listed.stdout, re.M)
    promoted = _run(["promote", "--version", "2"], home, tmpdir)
    assert promoted.returncode == 0, promoted.stderr  # the store is usable


def test_concurrent_first_use_of_an_empty_store_is_serialised(tmp_path):
    """Several commands creating the embedded store at once: MLflow's schema creation
    runs one process at a time (a file lock), so none fails."""
    home, tmpdir = tmp_path / "home", tmp_path / "tmp"
    tmpdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(DETECTOR_HOME=str(home), TMPDIR=str(tmpdir))
    procs = [subprocess.Popen([sys.executable, "-m", "detector", "models"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    for code, out, err in results:
        assert code == 0, err[-2000:]
        assert "Traceback" not in err
        assert "no versions of 'chip-diversion' registered yet" in out

"""Session fixtures for the model and pipeline tests (issue #5): one small simulated
world, its feature frame, and one tracking home with a trained champion.

Everything that touches MLflow runs inside :func:`detector_env`, which points
``DETECTOR_HOME`` at a test directory, removes any ``MLFLOW_TRACKING_URI`` (mlflow
exports it when the tracking URI is set) and restores ``os.environ`` exactly afterwards,
so nothing leaks into other tests.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from detector.cli import app

WORLD_SEED = 7
WORLD_SHIPMENTS = 10_000
WORLD_MONTHS = 12

runner = CliRunner()


@contextmanager
def detector_env(home: Path | None, cwd: Path | None = None) -> Iterator[None]:
    """Run with ``DETECTOR_HOME=home`` (and optionally in ``cwd``); restore everything."""
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if home is not None:
        os.environ["DETECTOR_HOME"] = str(home)
    if cwd is not None:
        os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


def cli(args: list[str], home: Path | None, cwd: Path | None = None):
    """``detector ARGS`` in-process with the given tracking home."""
    with detector_env(home, cwd):
        return runner.invoke(app, [str(a) for a in args])


def copy_world(world: Path, to: Path) -> Path:
    """A copy of the dataset tables (not truth.parquet), safe to corrupt."""
    to.mkdir(parents=True)
    for p in world.glob("*.csv"):
        shutil.copy(p, to / p.name)
    return to


@dataclass
class Trained:
    home: Path
    cwd: Path  # the working directory training ran in: must stay empty
    run_id: str
    output: str


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    """One labelled synthetic world (10,000 shipments over 12 months)."""
    from detector.simulation import simulate

    out = tmp_path_factory.mktemp("world")
    simulate(out, seed=WORLD_SEED, shipments=WORLD_SHIPMENTS, start=date(2024, 1, 1),
             months=WORLD_MONTHS)
    return out


@pytest.fixture(scope="session")
def truth(world) -> pl.DataFrame:
    return pl.read_parquet(world / "truth.parquet")


@pytest.fixture(scope="session")
def labelled_frame(world) -> pl.DataFrame:
    """Feature frame of the world's labelled records, date-ordered, with label/typology."""
    from detector.batch import feature_frame, load_batch
    from detector.reference import load_reference
    from detector.training import _labelled
    from features.build import fit_feature_stats

    batch = load_batch(world)
    stats = fit_feature_stats(batch.shipments, batch.leases, batch.parties, load_reference())
    return _labelled(feature_frame(batch, stats), batch.dataset.labels)


@pytest.fixture(scope="session")
def trained(world, tmp_path_factory) -> Trained:
    """A tracking home where ``detector train WORLD`` registered chip-diversion version 1."""
    home = tmp_path_factory.mktemp("home")
    cwd = tmp_path_factory.mktemp("cwd")
    result = cli(["train", world], home, cwd=cwd)
    assert result.exit_code == 0, result.output
    run_id = re.search(r"; run ([0-9a-f]{32}) ", result.stdout).group(1)
    return Trained(home, cwd, run_id, result.stdout)


@pytest.fixture(scope="session")
def empty_home(tmp_path_factory) -> Path:
    """A tracking home where no model is ever registered (shared: creating a store costs
    seconds)."""
    return tmp_path_factory.mktemp("empty_home")


@pytest.fixture(scope="session")
def scores_csv(world, trained, tmp_path_factory) -> tuple[Path, str]:
    """``detector score WORLD --out scores.csv --top 5`` with the champion: (path, stdout)."""
    out = tmp_path_factory.mktemp("scores") / "scores.csv"
    result = cli(["score", world, "--out", out, "--top", "5"], trained.home)
    assert result.exit_code == 0, result.output
    return out, result.stdout

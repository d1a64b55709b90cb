"""Model lifecycle (issue #13): held-out ceilings, compare, gated promote, the pyfunc as
documented, and a tracking server that cannot be reached.

The comparison tests use a tracking home holding the session's trained model (version 1,
all the world's labels) and a deliberately weakened version 2 (two LightGBM stumps on
HBOS alone), and an evaluation copy of the world whose labels add the truth for every
record the simulator left unlabelled, decided after both models were trained.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
from pipeline_fixtures import cli, detector_env

from detector.compare import BETTER, TOO_FEW, WORSE, tied_average_precision
from detector.contract import SCORES
from detector.evaluation import capacity_ceilings, held_out_warnings

ROOT = Path(__file__).resolve().parent.parent
MODEL = "chip-diversion"

WEAK_CONFIG = """name = "weakened"
description = "deliberately weakened for the promotion gate test: two stumps on HBOS"
[lightgbm]
num_leaves = 2
num_boost_round = 2
[unsupervised]
detectors = ["hbos"]
"""


def _client(home: Path):
    from mlflow.tracking import MlflowClient

    from detector import tracking

    with detector_env(home):
        uri = tracking.tracking_uri()
    return MlflowClient(uri, uri)


def _champion(home: Path, name: str = MODEL) -> int:
    from detector import tracking

    with detector_env(home):
        return tracking.champion_version(name)


# ------------------------------------------------------------------ held-out ceilings


def test_capacity_ceilings_follow_the_slice_size():
    # 86 records, 14 positives (the demo's slice): 5% is 5 records, recall <= 5/14
    ceilings = capacity_ceilings(86, 14)
    assert ceilings["recall_at_5pct.ceiling"] == pytest.approx(5 / 14)
    assert ceilings["precision_at_5pct.ceiling"] == 1.0
    assert ceilings["recall_at_1pct.ceiling"] == pytest.approx(1 / 14)
    big = capacity_ceilings(10_000, 120)
    assert big["recall_at_5pct.ceiling"] == 1.0 and big["precision_at_5pct.ceiling"] == 0.24
    warnings = held_out_warnings({"records": 86, "positives": 14, "recall_at_5pct": 0.357,
                                  **ceilings})
    assert any("14 confirmed" in w and "fewer than 30" in w for w in warnings)
    assert any(w.startswith("recall_at_5pct cannot exceed 0.357") for w in warnings)
    # 120 positives: no small-slice warning; 1% is 100 records, so recall@1% <= 100/120
    enough = held_out_warnings({"records": 10_000, "positives": 120, "precision_at_5pct": 0.2,
                                "recall_at_1pct": 0.8, **big})
    assert enough == [
        "precision_at_5pct cannot exceed 0.240 on the held-out slice (10000 records, 120 "
        "positives): read precision_at_5pct 0.200 against that ceiling",
        "recall_at_1pct cannot exceed 0.833 on the held-out slice (10000 records, 120 "
        "positives): read recall_at_1pct 0.800 against that ceiling"]


def test_training_logs_ceilings_and_the_registry_description(trained):
    client = _client(trained.home)
    metrics = client.get_run(trained.run_id).data.metrics
    records, positives = int(metrics["records"]), int(metrics["positives"])
    k5 = int(np.ceil(0.05 * records))
    assert metrics["recall_at_5pct.ceiling"] == pytest.approx(min(1.0, k5 / positives))
    assert metrics["precision_at_5pct.ceiling"] == pytest.approx(min(1.0, positives / k5))
    assert metrics["recall_at_5pct"] <= metrics["recall_at_5pct.ceiling"] + 1e-9
    description = client.get_model_version(MODEL, "1").description
    assert description.startswith(f"{MODEL} version 1: ")
    assert f"{records} labelled records, {positives} confirmed" in description
    assert f"PR-AUC {metrics['pr_auc']:.3f}" in description


def test_models_lists_counts_as_integers(trained):
    client = _client(trained.home)
    metrics = client.get_run(trained.run_id).data.metrics
    listed = cli(["models"], trained.home)
    assert listed.exit_code == 0, listed.output
    row = next(line.split() for line in listed.stdout.splitlines()[1:]
               if line.split()[0] == "1")
    header = listed.stdout.splitlines()[0].split()
    assert header[:4] == ["version", "champion", "test", "pos"]
    # version, champion mark, then the held-out slice's counts as whole numbers
    assert row[:4] == ["1", "*", str(int(metrics["records"])), str(int(metrics["positives"]))]


# ------------------------------------------------------------------ pyfunc as documented


def _readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    snippet = [b for b in blocks if "mlflow.pyfunc.load_model" in b]
    assert len(snippet) == 1, "the README has one pyfunc snippet"
    return snippet[0]


def test_readme_pyfunc_snippet_runs_as_written_from_a_fresh_directory(world, trained,
                                                                      tmp_path):
    cwd = tmp_path / "fresh"
    (cwd / "demo").mkdir(parents=True)
    shipments = pl.read_csv(world / "shipments.csv", infer_schema=False).head(400)
    shipments.write_csv(cwd / "demo" / "shipments.csv")
    out = tmp_path / "scores.csv"
    program = _readme_snippet() + f"\nscores.to_csv({str(out)!r}, index=False)\n"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["DETECTOR_HOME"] = str(trained.home)
    proc = subprocess.run([sys.executable, "-c", program], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = pl.read_csv(out)
    assert scores.columns == SCORES.column_names
    assert scores.height == 400
    assert set(scores["record_id"]) == set(shipments["shipment_id"])
    assert set(scores["model"]) == {f"{MODEL}/1"}  # the registry version, not the run
    # nothing left in the working directory: no stray ./mlflow.db, no ./mlruns
    assert sorted(p.name for p in cwd.iterdir()) == ["demo"]


def test_pyfunc_scores_raw_and_typed_frames_alike(world, trained, tmp_path):
    import mlflow

    from detector import tracking
    from detector.contract import SHIPMENTS
    from detector.tables import ValidationReport, read_table

    raw = pd.read_csv(world / "shipments.csv").head(300)
    raw.loc[3, "transit_countries"] = "HK;MO"  # a ;-joined list, as the contract writes one
    assert pd.api.types.is_string_dtype(raw["export_date"])  # dates as text
    path = tmp_path / "shipments.csv"
    raw.to_csv(path, index=False)
    report = ValidationReport()
    typed = read_table(path, SHIPMENTS, report).data  # typed by the file reader
    assert report.ok and typed["transit_countries"][3].to_list() == ["HK", "MO"]
    with detector_env(trained.home):
        tracking.use_store()
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
        from_raw = model.predict(raw)
        from_typed = model.predict(typed.to_pandas())
    assert from_raw["record_id"].tolist() == from_typed["record_id"].tolist()
    np.testing.assert_allclose(from_raw["risk_score"], from_typed["risk_score"])
    # the model column names the registry version, as `detector score` does
    assert set(from_raw["model"]) == {f"{MODEL}/1"}

    bad = raw.copy()
    bad.loc[7, "export_date"] = "31/02/2024"
    with detector_env(trained.home):
        with pytest.raises(Exception) as failed:
            model.predict(bad)
    message = str(failed.value)
    assert "export_date" in message and "row" in message and "31/02/2024" in message


# ------------------------------------------------------------------ unreachable server


def _run_detector_against(uri: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST")}
    env["MLFLOW_TRACKING_URI"] = uri
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "detector", "models"], env=env,
                          capture_output=True, text=True, timeout=120)
    return proc, time.monotonic() - started


def test_unreachable_tracking_server_exits_3_within_15_s():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc, elapsed = _run_detector_against(f"http://127.0.0.1:{port}")
    assert proc.returncode == 3, proc.stderr
    assert "tracking store" in proc.stderr and "unusable" in proc.stderr
    assert elapsed < 15, elapsed


def test_silent_tracking_server_exits_3_within_15_s():
    with socket.socket() as s:  # accepts connections, never answers
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        proc, elapsed = _run_detector_against(f"http://127.0.0.1:{s.getsockname()[1]}")
    assert proc.returncode == 3, proc.stderr
    assert elapsed < 15, elapsed


# ------------------------------------------------------------------ compare and promote


def test_tied_average_precision_ignores_the_order_of_ties():
    y = np.array([1, 0, 1, 0, 0, 1])
    s = np.array([0.9, 0.5, 0.5, 0.5, 0.1, 0.1])
    flipped = tied_average_precision(y[::-1], s[::-1])
    assert tied_average_precision(y, s) == pytest.approx(flipped)
    # thresholds 0.9 (P 1, R 1/3), 0.5 (P 2/4, R 2/3), 0.1 (P 3/6, R 1)
    assert tied_average_precision(y, s) == pytest.approx(1 / 3 + 1 / 3 * 0.5 + 1 / 3 * 0.5)


LC = "lifecycle"  # the registered name these tests use, apart from the session's model


@pytest.fixture(scope="module")
def lifecycle(world, trained, tmp_path_factory):
    """A home where model "lifecycle" has version 1 (the session's trained model, all the
    world's labels; champion) and a weakened version 2; and an evaluation dataset with
    decisions newer than both."""
    import mlflow

    from detector import tracking

    home = tmp_path_factory.mktemp("lifecycle_home")
    shutil.copytree(trained.home, home, dirs_exist_ok=True)
    with detector_env(home):
        tracking.use_store()
        assert mlflow.register_model(f"runs:/{trained.run_id}/model", LC).version in (1, "1")
        tracking.promote(LC, 1)
    config = tmp_path_factory.mktemp("config") / "weakened.toml"
    config.write_text(WEAK_CONFIG)
    weak = cli(["train", world, "--config", config, "--experiment", "weakened", "--name", LC],
               home)
    assert weak.exit_code == 0, weak.output
    assert f"registered {LC} version 2;" in weak.stdout

    evaluation = tmp_path_factory.mktemp("evaluation")
    for p in world.glob("*.csv"):
        shutil.copy(p, evaluation / p.name)
    labels = pl.read_csv(world / "labels.csv", infer_schema=False)
    truth = pl.read_parquet(world / "truth.parquet")
    latest = labels["decided_on"].max()
    new = (truth.join(labels.select("record_kind", "record_id"), on=["record_kind", "record_id"],
                      how="anti")
           .with_columns(label=pl.col("label").cast(pl.String),
                         decided_on=pl.lit("2026-06-30"))
           .select(labels.columns))
    assert latest < "2026-06-30"
    pl.concat([labels, new]).write_csv(evaluation / "labels.csv")
    return home, evaluation


def test_compare_tells_a_weakened_model_apart_and_logs_it(lifecycle):
    home, evaluation = lifecycle
    result = cli(["compare", evaluation, "--models", "champion", "2", "--bootstrap", "300",
                  "--name", LC],
                 home)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"A = {LC}/1" in out and f"B = {LC}/2" in out
    assert f"verdict: {WORSE}" in out
    for metric in ("pr_auc", "precision_at_capacity", "recall_at_capacity",
                   "recall_at_capacity_transshipment"):
        assert re.search(rf"^{metric}\s+\d\.\d{{3}} \[\d\.\d{{3}}, \d\.\d{{3}}\]", out, re.M), metric
    assert "records the two models disagree on most" in out
    run_id = re.search(r"logged to MLflow: run ([0-9a-f]{32})", out).group(1)
    run = _client(home).get_run(run_id)
    assert run.data.tags["verdict"] == WORSE
    assert run.data.metrics["pr_auc.diff_high"] < 0
    assert run.data.metrics["positives"] >= 30
    assert run.data.params["model_b"] == f"{LC}/2"


def test_compare_on_the_training_world_says_too_few(lifecycle, world):
    home, _ = lifecycle
    result = cli(["compare", world, "--models", "1", "2", "--bootstrap", "200", "--name", LC], home)
    assert result.exit_code == 0, result.output
    assert f"verdict: {TOO_FEW}" in result.stdout
    assert "neither model learned from" in result.stdout


def test_promote_refuses_a_weakened_challenger_then_force_better_and_rollback(lifecycle):
    home, evaluation = lifecycle
    client = _client(home)
    assert _champion(home, LC) == 1

    refused = cli(["promote", "--name", LC, "--version", "2", "--data", evaluation, "--bootstrap", "300"],
                  home)
    assert refused.exit_code == 1, refused.output
    assert "version 2 not promoted: it is worse than champion version 1" in refused.stderr
    assert "--force overrides" in refused.stderr
    assert _champion(home, LC) == 1

    forced = cli(["promote", "--name", LC, "--version", "2", "--force", "--reason", "test of --force"], home)
    assert forced.exit_code == 0, forced.output
    assert _champion(home, LC) == 2
    tags = client.get_model_version(LC, "2").tags
    assert tags["promotion.how"] == "forced" and tags["promotion.reason"] == "test of --force"
    runs = client.search_runs([client.get_experiment_by_name(f"{LC}-promotions")
                               .experiment_id])
    assert any(r.data.tags.get("how") == "forced" and r.data.tags.get("version") == "2"
               for r in runs)

    # the full model registered again as version 3 (never champion): compared with the
    # weakened champion, better beyond noise, promoted
    import mlflow

    from detector import tracking

    with detector_env(home):
        tracking.use_store()
        source = client.get_model_version(LC, "1")
        assert int(mlflow.register_model(f"runs:/{source.run_id}/model", LC).version) == 3
    better = cli(["promote", "--name", LC, "--version", "3", "--data", evaluation, "--bootstrap", "300"],
                 home)
    assert better.exit_code == 0, better.output
    assert f"verdict: {BETTER}" in better.stdout
    assert "-> version 3 (was 2; compared)" in better.stdout
    tags = client.get_model_version(LC, "3").tags
    assert tags["promotion.how"] == "compared" and tags["promotion.verdict"] == BETTER
    assert _champion(home, LC) == 3

    # rollback: one command, back to the previous champion, no comparison
    rollback = cli(["promote", "--name", LC, "--rollback"], home)
    assert rollback.exit_code == 0, rollback.output
    assert _champion(home, LC) == 2
    assert client.get_model_version(LC, "2").tags["promotion.how"] == "rollback"
    # naming an earlier champion is a rollback too
    again = cli(["promote", "--name", LC, "--version", "1"], home)
    assert again.exit_code == 0 and _champion(home, LC) == 1
    assert client.get_model_version(LC, "1").tags["promotion.how"] == "rollback"


def test_retrain_exit_0_when_promoted_and_4_when_not_better(lifecycle, tmp_path):
    """`detector retrain` on the evaluation world (every record labelled) holding out its
    latest 30% (so the new version's held-out slice has enough confirmed diversions to
    decide; the default 20% holds 28 in this world): over a weakened
    champion the new full model is better beyond noise and promoted (exit 0); retrained
    weakened over that champion, it is worse: registered, champion kept (exit 4). The
    exit codes are the ones docs/scheduling.md documents."""
    import mlflow

    from detector import tracking

    source_home, evaluation = lifecycle
    home = tmp_path / "home"
    shutil.copytree(source_home, home)
    name = "retrained"
    client = _client(home)
    weak_run = client.get_model_version(LC, "2").run_id  # the weakened model
    with detector_env(home):
        tracking.use_store()
        assert int(mlflow.register_model(f"runs:/{weak_run}/model", name).version) == 1
        tracking.promote(name, 1)

    wide_test = "[split]\nfit = 0.5\ncalibrate = 0.2\n"
    full = tmp_path / "full.toml"
    full.write_text('name = "wide-test"\n' + wide_test)
    promoted = cli(["retrain", evaluation, "--name", name, "--config", full,
                    "--bootstrap", "300"], home)
    assert promoted.exit_code == 0, promoted.output
    assert f"verdict: {BETTER}" in promoted.stdout
    assert "version 2 promoted to champion" in promoted.stdout
    assert _champion(home, name) == 2

    config = tmp_path / "weakened.toml"
    config.write_text(WEAK_CONFIG + wide_test)
    refused = cli(["retrain", evaluation, "--name", name, "--config", config,
                   "--bootstrap", "300"], home)
    assert refused.exit_code == 4, refused.output
    assert f"verdict: {WORSE}" in refused.stdout
    assert "version 3 registered; champion stays version 2" in refused.stdout
    assert _champion(home, name) == 2
    docs = (ROOT / "docs" / "scheduling.md").read_text()
    assert "| 0 | the new version is champion" in docs and "| 4 | registered, champion kept" in docs

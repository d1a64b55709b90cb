"""Drift checks (issue #13): a model trained on the first nine months of the session's
world; the last three months, scored with the first nine as history, raise no alert; the
same months with a new hub country, a chip filed in new wording and shifted values raise
those alerts, named."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
from pipeline_fixtures import cli, detector_env

CUT = "2024-10-01"
NEW_HUB = "AM"  # Armenia: no record of the world goes there
NEW_WORDING = "Zephyr-9 neural compute card 96G"


def _split(world: Path, early: Path, late: Path) -> None:
    for d in (early, late):
        d.mkdir(parents=True)
        for name in ("parties.csv", "screening_list.csv"):
            shutil.copy(world / name, d / name)
    shipments = pl.read_csv(world / "shipments.csv", infer_schema=False)
    leases = pl.read_csv(world / "leases.csv", infer_schema=False)
    labels = pl.read_csv(world / "labels.csv", infer_schema=False)
    shipments.filter(pl.col("export_date") < CUT).write_csv(early / "shipments.csv")
    shipments.filter(pl.col("export_date") >= CUT).write_csv(late / "shipments.csv")
    leases.filter(pl.col("start_date") < CUT).write_csv(early / "leases.csv")
    leases.filter(pl.col("start_date") >= CUT).write_csv(late / "leases.csv")
    early_ids = pl.concat([
        shipments.filter(pl.col("export_date") < CUT).select(record_id="shipment_id"),
        leases.filter(pl.col("start_date") < CUT).select(record_id="lease_id")])
    labels.join(early_ids, on="record_id", how="semi").write_csv(early / "labels.csv")


@pytest.fixture(scope="module")
def drift_setup(world, tmp_path_factory):
    root = tmp_path_factory.mktemp("drift")
    early, late, changed = root / "early", root / "late", root / "changed"
    _split(world, early, late)
    assert NEW_HUB not in set(pl.read_csv(world / "shipments.csv", infer_schema=False)
                              ["destination_country"])
    shutil.copytree(late, changed)
    shipments = pl.read_csv(late / "shipments.csv", infer_schema=False)
    n = shipments.height
    row = pl.int_range(pl.len())
    shipments.with_columns(
        destination_country=pl.when(row % 10 == 0).then(pl.lit(NEW_HUB))
        .otherwise(pl.col("destination_country")),
        description=pl.when(row % 10 == 5).then(pl.lit(NEW_WORDING))
        .otherwise(pl.col("description")),
        value_usd=(pl.col("value_usd").cast(pl.Float64) * 10).cast(pl.String),
    ).write_csv(changed / "shipments.csv")
    assert n > 1000
    home = root / "home"
    trained = cli(["train", early], home)
    assert trained.exit_code == 0, trained.output
    return home, early, late, changed


def test_the_model_stores_its_training_distributions(drift_setup):
    from detector import tracking
    from detector.scoring import load_model

    home, *_ = drift_setup
    with detector_env(home):
        model = load_model(tracking.DEFAULT_MODEL_URI)
    profile = model.bundle.provenance["training_profile"]
    assert set(profile["inputs"]) == set(model.bundle.model.model_inputs)
    edges = profile["inputs"]["value_usd"]["edges"]
    assert edges == sorted(edges) and len(edges) >= 5
    assert sum(profile["inputs"]["value_usd"]["shares"]) == pytest.approx(1, abs=1e-4)
    assert "SG" in profile["destinations"] and NEW_HUB not in profile["destinations"]
    assert len(profile["parties"]) > 100 and all(len(h) == 12 for h in profile["parties"])


def test_a_batch_from_the_same_world_raises_no_alert(drift_setup):
    home, early, late, _ = drift_setup
    result = cli(["drift", late, "--history", early], home)
    assert result.exit_code == 0, result.output
    assert " 0 alert(s)" in result.stdout, result.stdout
    assert "drift:" not in result.stderr
    assert "PSI value_usd" in result.stdout and "unseen destinations" in result.stdout


def test_a_changed_batch_raises_the_right_alerts_named(drift_setup):
    home, early, _, changed = drift_setup
    result = cli(["drift", changed, "--history", early], home)
    assert result.exit_code == 0, result.output
    alerts = [line for line in result.stderr.splitlines() if line.startswith("drift: ")]
    text = "\n".join(alerts)
    assert "destination country never seen" in text and f"{NEW_HUB} (" in text
    assert "names no known chip, in a wording never seen" in text
    assert NEW_WORDING.lower() in text
    assert "model input value_usd shifted" in text
    assert "hs_code" not in text  # HS codes were left alone
    flagged = [line for line in result.stdout.splitlines() if line.startswith("!")]
    assert any("unseen destinations" in line for line in flagged)


def test_score_warns_and_logs_drift_to_mlflow(drift_setup, tmp_path):
    from mlflow.tracking import MlflowClient

    from detector import tracking

    home, early, _, changed = drift_setup
    result = cli(["score", changed, "--history", early, "--out", tmp_path / "s.csv",
                  "--top", "0"], home)
    assert result.exit_code == 0, result.output
    assert "drift: " in result.stderr and NEW_HUB in result.stderr
    with detector_env(home):
        uri = tracking.tracking_uri()
    client = MlflowClient(uri, uri)
    runs = client.search_runs([client.get_experiment_by_name("chip-diversion-drift")
                               .experiment_id])
    assert runs and any(r.data.metrics.get("unseen.destinations", 0) > 0.05 for r in runs)
    assert any(r.data.metrics.get("alerts", 0) >= 3 for r in runs)


def test_retrain_registers_compares_and_keeps_the_champion_when_it_cannot_decide(
        drift_setup, world):
    """Retraining on the whole world: the new version's held-out slice is its only
    unseen labelled data, far fewer than 30 diversions: exit 5, champion kept."""
    from detector import tracking

    home, *_ = drift_setup
    result = cli(["retrain", world, "--bootstrap", "200"], home)
    assert result.exit_code == 5, result.output
    assert "version 2 registered; champion stays version 1" in result.stdout
    with detector_env(home):
        assert tracking.champion_version("chip-diversion") == 1
        versions = {r["version"] for r in tracking.model_versions("chip-diversion")}
    assert versions == {1, 2}


def _what_changed(html: str) -> str:
    start = html.index('<h2 id="what-changed">')
    return html[start:html.index('<h2 id="review-list">')]


def test_report_says_what_changed_in_plain_language(drift_setup, tmp_path):
    """`detector report` on the changed batch: a "what changed" section naming the new
    destination, the new chip wording and the shifted value; on the unchanged months the
    section says there is no alert; the figures go to MLflow but no run id to the page
    (same inputs, same report)."""
    import html as html_lib

    from detector import tracking
    from detector.report import generate_report

    home, early, late, changed = drift_setup
    lines: list[str] = []
    with detector_env(home):
        out = generate_report(changed, tmp_path / "changed.html", [early],
                              model_uri=tracking.DEFAULT_MODEL_URI, log=lines.append)
        again = generate_report(changed, tmp_path / "again.html", [early],
                                model_uri=tracking.DEFAULT_MODEL_URI)
        calm = generate_report(late, tmp_path / "late.html", [early],
                               model_uri=tracking.DEFAULT_MODEL_URI)
    page = out.read_text()
    assert page == again.read_text()
    section = html_lib.unescape(_what_changed(page))
    assert "drift alert" in section and "No drift alerts" not in section
    assert f"{NEW_HUB} (" in section  # the new destination, counted
    assert "destination country never seen in training" in section
    assert NEW_WORDING.lower() in section
    alerts = section[section.index('<ul class="alerts">'):section.index("</ul>")]
    assert alerts.index(NEW_HUB) < alerts.index("model inputs are distributed differently")
    assert "value_usd," in alerts and "a major shift" in section
    assert "Risk scores" in section and "top decile in training" in section
    # stderr names the same alerts as `detector drift`
    assert any(line.startswith("drift: ") and NEW_HUB in line for line in lines)
    calm_section = html_lib.unescape(_what_changed(calm.read_text()))
    assert "No drift alerts" in calm_section and "drift alert" not in calm_section.replace(
        "No drift alerts", "")
    assert "value_usd" in section and "PSI" in calm_section


def test_report_without_a_model_has_no_what_changed_section(drift_setup, tmp_path):
    from detector.report import generate_report

    _, early, late, _ = drift_setup
    with detector_env(tmp_path / "empty-home"):
        out = generate_report(late, tmp_path / "fallback.html", [early])
    page = out.read_text()
    assert "No trained model was used" in page
    assert 'id="what-changed"' not in page and "drift alert" not in page

"""Train → register → score → explain → promote → report, through the command line
(CLI.md), with the effects checked through MLflow and the files written (issue #5).

One simulated world and one trained tracking home per session (pipeline_fixtures.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from csv_fixtures import set_cell
from pipeline_fixtures import cli, copy_world, detector_env

from detector.contract import SCORES
from detector.evaluation import average_precision

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
MODEL_NAME = "chip-diversion"


def _client(home: Path):
    from mlflow.tracking import MlflowClient

    from detector import tracking

    with detector_env(home):
        uri = tracking.tracking_uri()
    return MlflowClient(uri, uri)


def _record_ids(world: Path) -> set[tuple[str, str]]:
    shipments = pl.read_csv(world / "shipments.csv", columns=["shipment_id"])
    leases = pl.read_csv(world / "leases.csv", columns=["lease_id"])
    return ({("shipment", i) for i in shipments["shipment_id"]}
            | {("lease", i) for i in leases["lease_id"]})


# ------------------------------------------------------------------ train


def test_train_registers_version_1_as_champion(trained):
    assert f"registered {MODEL_NAME} version 1 (champion)" in trained.output
    assert "PR-AUC" in trained.output and "reliability (test slice)" in trained.output


def test_training_run_is_logged_with_params_metrics_tags_and_artifacts(trained, world):
    client = _client(trained.home)
    run = client.get_run(trained.run_id)
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags

    # params: the config keys, and the time slices
    for key in ("split.fit", "split.calibrate", "lightgbm.num_leaves", "lightgbm.learning_rate",
                "unsupervised.detectors", "seed"):
        assert key in params, key
    assert params["split.fit"] == "0.6" and params["lightgbm.num_leaves"] == "15"
    assert params["slice.fit.to"] <= params["slice.calibrate.from"]
    assert params["slice.calibrate.to"] <= params["slice.test.from"]

    for key in ("pr_auc", "precision_at_1pct", "recall_at_5pct", "brier"):
        assert key in metrics and 0 <= metrics[key] <= 1, key
    for key in ("data_fingerprint", "screening_list", "reference_version"):
        assert tags.get(key), key
    assert "dataset's screening_list" in tags["screening_list"]  # the world's own list

    # artifacts, all under DETECTOR_HOME; nothing in the working directory
    evaluation = {a.path for a in client.list_artifacts(trained.run_id, "evaluation")}
    assert {"evaluation/feature_importance.png", "evaluation/precision_recall.png",
            "evaluation/reliability.csv", "evaluation/evaluation.csv"} <= evaluation
    assert run.info.artifact_uri.startswith(trained.home.resolve().as_uri())
    assert list(trained.cwd.iterdir()) == []
    assert (trained.home / "mlflow.db").is_file()

    # the logged metrics are the test slice's, recomputable from evaluation.csv
    local = Path(client.download_artifacts(trained.run_id, "evaluation/evaluation.csv",
                                           str(trained.home / "downloads")))
    test_slice = pl.read_csv(local)
    assert test_slice.height == int(params["slice.test.records"]) == metrics["records"]
    assert test_slice["record_date"].cast(pl.String).min() == params["slice.test.from"]
    y = test_slice["label"].to_numpy()
    assert metrics["pr_auc"] == pytest.approx(
        average_precision(y, test_slice["risk_score"].to_numpy()))
    assert metrics["brier"] == pytest.approx(np.mean((test_slice["risk_score"].to_numpy()
                                                      - y) ** 2))
    test_typologies = set(test_slice.filter(pl.col("label") == 1)["typology"].fill_null(
        "unspecified"))
    per_typology = {k.removeprefix("recall_at_5pct_") for k in metrics
                    if k.startswith("recall_at_5pct_")}
    assert per_typology == test_typologies and per_typology

    # the registered version and its alias; the model artifacts live under DETECTOR_HOME
    version = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert int(version.version) == 1 and version.run_id == trained.run_id
    mlmodels = list((trained.home / "artifacts").rglob("MLmodel"))
    assert len(mlmodels) >= 1
    assert any((p.parent / "artifacts" / "bundle" / "bundle.json").is_file() for p in mlmodels)


def test_champion_loads_as_an_mlflow_pyfunc(trained, world):
    import mlflow

    from detector import tracking
    from detector.tables import read_dataset

    shipments = read_dataset(world).shipments.head(150)
    with detector_env(trained.home):
        tracking._client()  # point mlflow at the test home, as every detector command does
        model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
        out = model.predict(shipments.to_pandas())
    assert list(out.columns) == SCORES.column_names
    assert len(out) == 150
    assert set(out["record_id"]) == set(shipments["shipment_id"])
    assert out["risk_score"].between(0, 1).all()
    assert out["rank"].tolist() == list(range(1, 151))
    assert out["risk_score"].is_monotonic_decreasing


def test_training_needs_both_labels(world, tmp_path, empty_home):
    copy = copy_world(world, tmp_path / "only_positives")
    labels = pl.read_csv(copy / "labels.csv", infer_schema=False)
    labels.filter(pl.col("label") == "1").write_csv(copy / "labels.csv")
    home = empty_home
    result = cli(["train", copy], home)
    assert result.exit_code == 1, result.output
    assert "needs labels 0" in result.stderr and "[1]" in result.stderr
    assert "Traceback" not in result.output
    listed = cli(["models"], home)
    assert listed.exit_code == 0 and "no versions" in listed.stdout


def test_train_with_a_bad_config_exits_1(world, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[lightgbm]\nnum_leafs = 3\n")
    result = cli(["train", world, "--config", bad], tmp_path / "home")
    assert result.exit_code == 1
    assert str(bad) in result.stderr and "num_leafs" in result.stderr


# ------------------------------------------------------------------ score


def test_score_writes_the_contract_scores_table(scores_csv, world, trained):
    out, _ = scores_csv
    scores = pl.read_csv(out)
    assert scores.columns == SCORES.column_names
    assert set(zip(scores["record_kind"], scores["record_id"])) == _record_ids(world)
    assert scores.height == len(_record_ids(world))
    assert scores["rank"].to_list() == list(range(1, scores.height + 1))
    expected_order = scores.sort(["risk_score", "record_kind", "record_id"],
                                 descending=[True, False, False])
    assert expected_order["record_id"].to_list() == scores["record_id"].to_list()
    assert scores["risk_score"].min() >= 0 and scores["risk_score"].max() <= 1
    assert scores["model"].unique().to_list() == [f"{MODEL_NAME}/1"]
    assert scores.head(5)["reasons"].is_not_null().all()
    assert (scores.head(5)["reasons"].str.len_chars() > 0).all()

    provenance = json.loads(out.with_name(out.name + ".provenance.json").read_text())
    assert provenance["model"] == f"{MODEL_NAME}/1"
    assert provenance["model_run_id"] == trained.run_id
    assert provenance["records"] == scores.height
    tags = _client(trained.home).get_run(trained.run_id).data.tags
    assert provenance["data_fingerprint"] == tags["data_fingerprint"]  # same world, same bytes


def test_score_ranks_confirmed_diversions_high(scores_csv, truth):
    out, _ = scores_csv
    scores = pl.read_csv(out).join(truth, on=["record_kind", "record_id"])
    top_share = scores.filter(pl.col("rank") <= scores.height // 20)  # top 5%
    base_rate = scores["label"].mean()
    assert top_share["label"].mean() > 5 * base_rate


def test_score_table_carries_the_likely_scheme_and_the_records_context(scores_csv, world):
    out, stdout = scores_csv
    scores = pl.read_csv(out, schema=SCORES.schema)
    assert SCORES.column_names[6:] == ["likely_scheme", "scheme_confidence", "queue_reason",
                                       "record_date", "counterparty", "destination", "goods",
                                       "quantity", "value_usd"]
    allowed = {*SCORES.column("likely_scheme").values}
    assert scores["likely_scheme"].null_count() == 0
    assert set(scores["likely_scheme"]) <= allowed and len(set(scores["likely_scheme"])) >= 3
    known = scores.filter(pl.col("likely_scheme") != "unclear")["scheme_confidence"]
    assert known.null_count() == 0 and known.min() >= 0.3 and known.max() <= 1
    assert set(scores["queue_reason"].drop_nulls()) <= {"risk", "explore"}  # detector.queue

    shipments = pl.read_csv(world / "shipments.csv", schema_overrides={"hs_code": pl.String},
                            try_parse_dates=True)
    leases = pl.read_csv(world / "leases.csv", try_parse_dates=True)
    expected = pl.concat([
        shipments.select(pl.lit("shipment").alias("record_kind"),
                         pl.col("shipment_id").alias("record_id"),
                         pl.col("export_date").alias("record_date"),
                         pl.col("consignee_name").alias("counterparty"),
                         pl.col("destination_country").str.to_uppercase().alias("destination"),
                         pl.col("description").alias("goods"), "quantity", "value_usd"),
        leases.select(pl.lit("lease").alias("record_kind"), pl.col("lease_id").alias("record_id"),
                      pl.col("start_date").alias("record_date"),
                      pl.col("lessee_name").alias("counterparty"),
                      pl.col("lessee_country").str.to_uppercase().alias("destination"),
                      pl.col("gpu_model").alias("goods"), pl.col("gpu_count").alias("quantity"),
                      "value_usd")])
    got = scores.select(expected.columns).sort("record_kind", "record_id")
    want = expected.sort("record_kind", "record_id").cast(got.schema)
    assert got.drop("value_usd").equals(want.drop("value_usd"))
    assert np.allclose(got["value_usd"].fill_null(-1).to_numpy(),
                       want["value_usd"].fill_null(-1).to_numpy())
    first = scores.row(0, named=True)
    assert first["likely_scheme"] in stdout.splitlines()[1] and str(first["record_date"]) in stdout


def test_score_prints_the_top_n(scores_csv):
    out, stdout = scores_csv
    rows = [line.split() for line in stdout.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 5
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    assert [r[2] for r in rows] == pl.read_csv(out).head(5)["record_id"].to_list()


def test_score_parquet_output_equals_csv(scores_csv, world, trained, tmp_path):
    out = tmp_path / "scores.parquet"
    result = cli(["score", world, "--out", out, "--top", "5"], trained.home)
    assert result.exit_code == 0, result.output
    parquet = pl.read_parquet(out)
    assert parquet.columns == SCORES.column_names
    assert dict(parquet.schema) == dict(SCORES.schema)
    csv = pl.read_csv(scores_csv[0], schema=SCORES.schema)
    assert parquet.select("record_kind", "record_id", "rank", "model").equals(
        csv.select("record_kind", "record_id", "rank", "model"))
    assert np.allclose(parquet["risk_score"].to_numpy(), csv["risk_score"].to_numpy())
    assert (tmp_path / "scores.parquet.provenance.json").is_file()


def test_score_bad_extension_exits_2_and_writes_nothing(world, trained, tmp_path):
    out = tmp_path / "scores.xlsx"
    result = cli(["score", world, "--out", out], trained.home)
    assert result.exit_code == 2
    assert ".csv or .parquet" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_score_without_a_model_falls_back_and_says_so(world, tmp_path, empty_home):
    out = tmp_path / "scores.csv"
    result = cli(["score", world, "--out", out, "--top", "3"], empty_home)
    assert result.exit_code == 0, result.output
    assert "rules + unsupervised" in result.stderr
    assert "rules + unsupervised" not in result.stdout  # the notice goes to stderr only
    scores = pl.read_csv(out)
    assert scores["model"].unique().to_list() == ["rules+unsupervised"]
    assert scores.height == len(_record_ids(world))
    assert scores["risk_score"].is_between(0, 1).all()
    assert scores.head(3)["reasons"].str.len_chars().min() > 0


@pytest.mark.parametrize("model", ["models:/nope@champion", "models:/chip-diversion/99",
                                   "no/such/bundle/dir"])
def test_an_explicit_model_that_cannot_load_is_an_error(world, trained, tmp_path, model):
    out = tmp_path / "scores.csv"
    result = cli(["score", world, "--out", out, "--model", model], trained.home)
    assert result.exit_code == 1, result.output
    assert model in result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_an_explicit_default_uri_does_not_fall_back(world, tmp_path, empty_home):
    out = tmp_path / "scores.csv"
    result = cli(["score", world, "--out", out, "--model", f"models:/{MODEL_NAME}@champion"],
                 empty_home)
    assert result.exit_code == 1, result.output
    assert not out.exists()


def test_score_with_a_local_bundle_directory(world, trained, tmp_path, scores_csv):
    from detector import tracking

    with detector_env(trained.home):
        bundle_dir = tracking.resolve_model(f"models:/{MODEL_NAME}/1").bundle_dir
    out = tmp_path / "scores.csv"
    result = cli(["score", world, "--out", out, "--model", bundle_dir, "--top", "0"],
                 trained.home)
    assert result.exit_code == 0, result.output
    local = pl.read_csv(out)
    champion = pl.read_csv(scores_csv[0])
    assert local["record_id"].to_list() == champion["record_id"].to_list()
    assert np.allclose(local["risk_score"].to_numpy(), champion["risk_score"].to_numpy())


def test_a_local_bundle_loads_without_mlflow(trained):
    """mlflow costs seconds to import; a local bundle needs no tracking store (#15)."""
    import subprocess
    import sys

    from detector import tracking

    with detector_env(trained.home):
        bundle_dir = tracking.resolve_model(f"models:/{MODEL_NAME}/1").bundle_dir
    code = ("import sys; from detector.scoring import load_model; "
            f"m = load_model({str(bundle_dir)!r}); "
            "print(m.label, m.fallback, 'mlflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(bundle_dir), "False", "False"]


# ------------------------------------------------------------------ quarantine


@pytest.fixture
def corrupted_world(world, tmp_path) -> tuple[Path, str]:
    copy = copy_world(world, tmp_path / "corrupted")
    set_cell(copy / "shipments.csv", 3, "consignee_country", "XX")
    bad_id = pl.read_csv(copy / "shipments.csv", infer_schema=False)["shipment_id"][2]
    return copy, bad_id


def test_score_quarantines_bad_rows_and_scores_the_rest(corrupted_world, trained, tmp_path,
                                                        world):
    copy, bad_id = corrupted_world
    out, quarantine = tmp_path / "scores.csv", tmp_path / "quarantine"
    result = cli(["score", copy, "--out", out, "--quarantine", quarantine, "--top", "0"],
                 trained.home)
    assert result.exit_code == 0, result.output
    assert "quarantined 1 row(s)" in result.stderr
    rejected = pl.read_csv(quarantine / "shipments.csv", infer_schema=False)
    assert rejected["shipment_id"].to_list() == [bad_id]
    assert "problem" in rejected.columns and "consignee_country" in rejected["problem"][0]
    scores = pl.read_csv(out)
    assert scores.height == len(_record_ids(world)) - 1
    assert bad_id not in scores["record_id"].to_list()


def test_score_without_quarantine_refuses_bad_rows(corrupted_world, trained, tmp_path):
    copy, _ = corrupted_world
    out = tmp_path / "scores.csv"
    result = cli(["score", copy, "--out", out], trained.home)
    assert result.exit_code == 1
    assert "consignee_country" in result.stderr and "'XX'" in result.stderr
    assert list(tmp_path.iterdir()) == [copy]


# ------------------------------------------------------------------ explain

# Signals of each typology: rules, and features whose value is a red flag or pushes the
# model's score up. Each confirmed case shows at least one of them.
TYPOLOGY_SIGNALS = {
    "transshipment": ({"later_reexport", "transit_hk_mo", "hub_destination_controlled",
                       "logistics_consignee"},
                      {"later_reexported_to_d5_hk_mo", "days_until_reexport",
                       "reexported_unit_share_90d", "transit_via_hk_or_mo", "destination_is_hub",
                       "consignee_is_logistics"}),
    "shell_company": ({"new_company_controlled", "shared_address", "china_payer",
                       "industry_misfit", "logistics_consignee", "unusual_payment"},
                      {"consignee_age_days", "consignee_address_shared_by",
                       "payer_is_other_party", "payer_country_mismatch", "payer_in_d5_hk_or_mo",
                       "consignee_industry_misfit", "consignee_employees"}),
    "restricted_parent": ({"d5_ultimate_parent"},
                          {"ultimate_parent_in_d5_or_macau", "ownership_depth"}),
    "cloud_lease": ({"bare_metal_d5_lessee", "capacity_beyond_size", "new_lessee"},
                    {"bare_metal_access", "lessee_in_d5_or_macau", "gpus_per_lessee_employee",
                     "lessee_abroad_from_datacenter", "lessee_age_days"}),
}


@pytest.mark.parametrize("typology", sorted(TYPOLOGY_SIGNALS))
def test_explain_a_confirmed_diversion_names_its_typology(typology, scores_csv, truth, world,
                                                          trained):
    scores = pl.read_csv(scores_csv[0])
    case = (scores.join(truth, on=["record_kind", "record_id"])
            .filter((pl.col("label") == 1) & (pl.col("typology") == typology))
            .sort("rank").row(0, named=True))
    result = cli(["explain", world, case["record_id"], "--json", "--scores", scores_csv[0]],
                 trained.home)
    assert result.exit_code == 0, result.output
    e = json.loads(result.stdout)
    assert e["record_id"] == case["record_id"] and e["record_kind"] == case["record_kind"]
    assert e["rank"] == case["rank"]
    assert e["risk_score"] == pytest.approx(case["risk_score"])
    assert e["model"] == f"{MODEL_NAME}/1" and e["fallback"] is False
    assert e["reasons"]
    assert all({"rule", "points", "reason"} <= set(h) for h in e["rule_hits"])
    contributions = {f["feature"]: f["contribution"] for f in e["features"]}
    assert "(baseline)" not in contributions
    assert sum(c is not None for c in contributions.values()) > 20
    assert all({"feature", "value", "contribution", "description", "reason"} <= set(f)
               for f in e["features"])

    rules, features = TYPOLOGY_SIGNALS[typology]
    hit = {h["rule"] for h in e["rule_hits"]} & rules
    pushed = {f["feature"] for f in e["features"] if f["feature"] in features
              and ((f["contribution"] or 0) > 0 or f["reason"])}
    assert hit or pushed, (typology, e["rule_hits"], e["reasons"])


def test_explain_text_and_unknown_id(world, trained, scores_csv):
    top = pl.read_csv(scores_csv[0]).row(0, named=True)
    text = cli(["explain", world, top["record_id"], "--kind", top["record_kind"], "--scores",
                scores_csv[0]], trained.home)
    assert text.exit_code == 0, text.output
    assert "rank 1 of" in text.stdout and "contribution" in text.stdout
    unknown = cli(["explain", world, "SHP-DOES-NOT-EXIST"], trained.home)
    assert unknown.exit_code == 1
    assert "SHP-DOES-NOT-EXIST" in unknown.stderr
    wrong_kind = cli(["explain", world, top["record_id"], "--kind", "parcel"], trained.home)
    assert wrong_kind.exit_code == 2


# ------------------------------------------------------------------ report


def test_report_writes_html_with_the_model_version(world, trained, tmp_path):
    out = tmp_path / "R.html"
    result = cli(["report", world, "--out", out, "--capacity", "50"], trained.home)
    assert result.exit_code == 0, result.output
    html = out.read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html")
    assert MODEL_NAME in html and trained.run_id[:8] in html


def test_report_refuses_other_extensions(world, trained, tmp_path):
    result = cli(["report", world, "--out", tmp_path / "R.txt"], trained.home)
    assert result.exit_code == 2
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ versions and promotion


@pytest.fixture(scope="module")
def second_version(world, trained):
    result = cli(["train", world, "--config", EXPERIMENTS / "deeper_trees.toml"], trained.home)
    assert result.exit_code == 0, result.output
    assert f"registered {MODEL_NAME} version 2;" in result.stdout  # not champion
    return result.stdout.split("; run ")[1].split()[0]


@pytest.fixture
def champion_restored(trained):
    yield
    assert cli(["promote", "--version", "1"], trained.home).exit_code == 0


def _champion(home: Path) -> int:
    from detector import tracking

    with detector_env(home):
        return next(r["version"] for r in tracking.model_versions(MODEL_NAME) if r["champion"])


def test_models_lists_versions_and_marks_the_champion(second_version, trained):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["DETECTOR_HOME"] = str(trained.home)
    proc = subprocess.run([sys.executable, "-m", "detector", "models"], check=False,
                          capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()[1:] if line.strip()}
    assert set(lines) == {"1", "2"}
    assert lines["1"].split()[1] == "*" and "*" not in lines["2"]
    assert "deeper_trees.toml" in lines["2"] and second_version in lines["2"]


def test_promote_and_roll_back(second_version, trained, world, tmp_path, champion_restored):
    result = cli(["promote", "--version", "2"], trained.home)
    assert result.exit_code == 0, result.output
    assert f"{MODEL_NAME}@champion -> version 2" in result.stdout
    assert _champion(trained.home) == 2
    listed = cli(["models"], trained.home)
    assert [line.split()[1] for line in listed.stdout.splitlines()[1:]
            if line.split()[0] == "2"] == ["*"]

    out = tmp_path / "scores.csv"
    scored = cli(["score", world, "--out", out, "--top", "0"], trained.home)
    assert scored.exit_code == 0, scored.output
    assert pl.read_csv(out)["model"].unique().to_list() == [f"{MODEL_NAME}/2"]

    rollback = cli(["promote", "--version", "1"], trained.home)
    assert rollback.exit_code == 0 and "-> version 1" in rollback.stdout
    assert _champion(trained.home) == 1


def test_promote_by_run(second_version, trained, champion_restored):
    result = cli(["promote", "--run", second_version], trained.home)
    assert result.exit_code == 0, result.output
    assert "-> version 2" in result.stdout
    assert _champion(trained.home) == 2


@pytest.mark.parametrize("args, code, fragment", [
    (["--version", "9"], 1, "no version 9"),
    (["--run", "0" * 32], 1, "registered no version"),
    (["--name", "other-model", "--version", "1"], 1, "other-model"),
    ([], 2, "exactly one of"),
    (["--version", "1", "--run", "abc"], 2, "exactly one of"),
])
def test_promote_errors(second_version, trained, args, code, fragment):
    result = cli(["promote", *args], trained.home)
    assert result.exit_code == code, result.output
    assert fragment in result.stderr
    assert _champion(trained.home) == 1


def test_commands_leave_the_environment_as_they_found_it(trained):
    before = dict(os.environ)
    result = cli(["models"], trained.home)
    assert result.exit_code == 0, result.output
    # mlflow exports MLFLOW_TRACKING_URI when a tracking URI is set; it must not leak into
    # later tests, nor be mistaken there for a user's choice
    assert dict(os.environ) == before

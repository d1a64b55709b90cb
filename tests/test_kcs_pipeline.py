"""Real-shaped declarations end to end: import the KCS slice with the shipped mapping,
train, score the next quarter with the first as history; free-text typologies (any
Unicode, `+`, `/`, spaces, 300 characters) train and log to MLflow under distinct names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from pipeline_fixtures import detector_env

from detector.importer import import_data
from detector.tracking import metric_key

ROOT = Path(__file__).resolve().parents[1]
KCS = ROOT / "tests" / "kcs_sample"
MAPPING = ROOT / "data" / "mappings" / "kcs.toml"

FREE_TEXT = [
    "T_SHELL+T_TRANSSHIP",
    "T_SHELL/T_TRANSSHIP",
    "Umleitung über ein Drittland — 中国 via 香港 ✓",
    "x" * 299 + "a",
    "x" * 299 + "b",
    "<script>alert('typology')</script> & co",
]


def test_metric_key_is_safe_and_distinct():
    keys = [metric_key(f"recall_at_5pct_{t}") for t in FREE_TEXT]
    assert len(set(keys)) == len(keys)
    for k in keys:
        assert len(k) <= 250
        assert all(c.isascii() and (c.isalnum() or c in "_-. ") for c in k), k
    assert metric_key("recall_at_5pct_T_SHELL") == "recall_at_5pct_T_SHELL"  # safe: unchanged


@pytest.fixture(scope="module")
def kcs_datasets(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("kcs")
    import_data([KCS / "declarations_2020_sample.csv"], out / "2020", MAPPING)
    import_data([KCS / "declarations_2021q1_sample.csv"], out / "q1", MAPPING)
    # free-text typologies on the confirmed cases, cycling through the hostile strings
    labels = pl.read_parquet(out / "2020" / "labels.parquet")
    positives = labels.with_row_index("i").filter(pl.col("label") == 1)["i"]
    typology = [None] * labels.height
    for n, i in enumerate(positives):
        typology[i] = FREE_TEXT[n % len(FREE_TEXT)]
    labels.with_columns(typology=pl.Series(typology, dtype=pl.String)) \
        .write_parquet(out / "2020" / "labels.parquet")
    # the quarter is scored without its labels
    (out / "q1" / "labels.parquet").unlink()
    return out / "2020", out / "q1"


def test_import_train_score_on_kcs_with_free_text_typologies(kcs_datasets, tmp_path):
    import mlflow

    from detector.scoring import score
    from detector.training import train

    train_dir, q1_dir = kcs_datasets
    with detector_env(tmp_path / "home"):
        result = train(train_dir)
        typology_metrics = {k for k in result.metrics if k.startswith("recall_at_5pct_")
                            and k != "recall_at_5pct"}
        assert len(typology_metrics) >= 2  # several free-text typologies among the test slice
        from detector.tracking import tracking_uri

        logged = mlflow.MlflowClient(tracking_uri()).get_run(result.run_id).data.metrics
        logged_typology = {k for k in logged if k.startswith("recall_at_5pct_")
                           and k != "recall_at_5pct"}
        assert len(logged_typology) == len(typology_metrics)  # sanitised, none merged
        scored = score(q1_dir, tmp_path / "q1.csv", [train_dir])
    table = pl.read_csv(tmp_path / "q1.csv")
    assert table.height == 150 == scored.frame.height
    assert table["risk_score"].is_finite().all()
    assert table["rank"].sort().to_list() == list(range(1, 151))


CONFIG = """
name = "kcs-test"
[split]
fit = 0.6
calibrate = 0.2
[lightgbm]
num_boost_round = 60
scale_pos_weight = 1.0
balance_schemes = 1.0
[inputs]
categorical = ["office_id", "hs_code", "country_of_origin"]
numeric = ["tax_rate", "net_mass"]
without = ["behaviour"]
"""


def test_configured_inputs_case_memory_in_bundle_and_refusal(kcs_datasets, tmp_path,
                                                            monkeypatch):
    import mlflow

    from detector.errors import InputError
    from detector.models.supervised import SupervisedModel
    from detector.scoring import load_model, score
    from detector.tracking import tracking_uri
    from detector.training import train
    from features.registry import FAMILIES

    train_dir, q1_dir = kcs_datasets
    config = tmp_path / "kcs.toml"
    config.write_text(CONFIG)
    fitted = []
    plain_fit = SupervisedModel.fit

    def fit_and_record(self, frame, labels=None, **kwargs):
        fitted.append((np.asarray(labels), frame["typology"].to_list(),
                       kwargs.get("sample_weight")))
        return plain_fit(self, frame, labels, **kwargs)

    monkeypatch.setattr(SupervisedModel, "fit", fit_and_record)
    with detector_env(tmp_path / "home"):
        result = train(train_dir, config_path=config)
        # [lightgbm] balance_schemes = 1 reached the trees: each confirmed case weighs
        # (confirmed / (schemes x cases of its scheme)), cleared records 1
        (y, schemes, weight), = fitted
        assert weight is not None and len(weight) == len(y)
        assert np.all(weight[y == 0] == 1)
        confirmed = [t or "unspecified" for t, label in zip(schemes, y) if label == 1]
        counts = {t: confirmed.count(t) for t in confirmed}
        assert len(counts) >= 2
        expected = [len(confirmed) / (len(counts) * counts[t]) for t in confirmed]
        assert weight[y == 1] == pytest.approx(expected)
        model = load_model(None)
        features = model.bundle.model.supervised_.features
        assert {"input_office_id", "input_hs_code", "input_tax_rate"} <= set(features)
        assert not set(FAMILIES["behaviour"]) & set(features)
        assert "consignee_confirmed_rate" in features
        memory = model.bundle.feature_stats["case_memory"]
        assert memory["decisions"] == 400 and memory["cutoff"] <= "2020-12-31"
        assert model.bundle.model.supervised_.params["scale_pos_weight"] == 1.0
        params = mlflow.MlflowClient(tracking_uri()).get_run(result.run_id).data.params
        assert params["case_memory.cutoff"] == memory["cutoff"]
        assert params["inputs.categorical"] == "office_id,hs_code,country_of_origin"
        assert params["lightgbm.balance_schemes"] == "1.0"
        scored = score(q1_dir, tmp_path / "q1.csv", [train_dir])
        assert scored.frame.height == 150
        lacking = tmp_path / "q1_lacking"
        lacking.mkdir()
        pl.read_parquet(q1_dir / "shipments.parquet").drop("office_id") \
            .write_parquet(lacking / "shipments.parquet")
        with pytest.raises(InputError, match=r"\['office_id'\]"):
            score(lacking, tmp_path / "lacking.csv", [train_dir])
    assert not (tmp_path / "lacking.csv").exists()

"""Models, metrics, settings and the model bundle (issue #5), tested as a library."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from detector.config import load_config
from detector.errors import InputError
from detector.evaluation import (
    at_capacity,
    average_precision,
    brier,
    evaluate,
    reliability_table,
    typology_recall,
)
from detector.models.base import RiskModel
from detector.models.ensemble import DiversionModel, FallbackModel, ModelBundle
from detector.models.supervised import SupervisedModel, scheme_weights
from detector.training import split_by_time
from features.registry import model_feature_names

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"

# ------------------------------------------------------------------ the interface


class _ValueModel(RiskModel):
    """Risk = the ``value`` column: the smallest possible RiskModel."""

    def fit(self, frame, labels=None):
        self.fitted_ = True
        return self

    def decision_function(self, frame):
        return frame["value"].to_numpy().astype(np.float64)


def test_risk_model_predict_flags_the_highest_scores():
    frame = pl.DataFrame({"value": [0.1, 5.0, 0.3, 9.0, 0.2, 0.0, 0.4, 0.5, 0.6, 0.7]})
    model = _ValueModel().fit(frame)
    flagged = model.predict(frame, share=0.2)
    assert flagged.dtype == np.int8
    assert flagged.tolist() == [0, 1, 0, 1, 0, 0, 0, 0, 0, 0]  # the two riskiest of ten
    assert model.predict(frame.head(0)).tolist() == []


def test_risk_model_base_methods_must_be_implemented():
    with pytest.raises(NotImplementedError):
        RiskModel().fit(pl.DataFrame())
    with pytest.raises(NotImplementedError):
        RiskModel().decision_function(pl.DataFrame())


# ------------------------------------------------------------------ metrics by hand


def test_average_precision_by_hand():
    y = np.array([1, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    # hits at ranks 1 and 3: precision 1/1 and 2/3, averaged over the 2 positives
    assert average_precision(y, scores) == pytest.approx((1.0 + 2 / 3) / 2)
    assert average_precision(y, -scores) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert math.isnan(average_precision(np.zeros(3), np.array([0.1, 0.2, 0.3])))


def test_at_capacity_by_hand():
    y = np.array([1, 0, 0, 1, 0, 0, 0, 0, 0, 1])
    scores = np.array([10, 9, 8, 7, 6, 5, 4, 3, 2, 1], dtype=float)
    assert at_capacity(y, scores, 0.2) == pytest.approx((0.5, 1 / 3))  # top 2: one hit
    assert at_capacity(y, scores, 0.4) == pytest.approx((0.5, 2 / 3))  # top 4: two hits
    # ceil: 1% of 10 records is still one record to review
    assert at_capacity(y, scores, 0.01) == pytest.approx((1.0, 1 / 3))


def test_brier_by_hand():
    assert brier(np.array([1, 0]), np.array([0.8, 0.4])) == pytest.approx((0.04 + 0.16) / 2)
    assert math.isnan(brier(np.array([]), np.array([])))


def test_reliability_table_by_hand():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.05, 0.15, 0.12, 0.95, 1.0])  # 1.0 belongs to the top band
    table = reliability_table(y, p)
    assert table.columns == ["band_low", "band_high", "records", "mean_predicted",
                             "observed_rate"]
    rows = {round(r["band_low"], 1): r for r in table.iter_rows(named=True)}
    assert sorted(rows) == [0.0, 0.1, 0.9]
    assert rows[0.1]["records"] == 2
    assert rows[0.1]["mean_predicted"] == pytest.approx(0.135)
    assert rows[0.1]["observed_rate"] == pytest.approx(0.5)
    assert rows[0.9]["band_high"] == pytest.approx(1.0)
    assert rows[0.9]["records"] == 2 and rows[0.9]["observed_rate"] == 1.0
    assert rows[0.0]["observed_rate"] == 0.0


def test_typology_recall_by_hand():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    scores = np.array([0.9, 0.1, 0.8, 0.7, 0.2, 0.3, 0.1, 0.0, 0.0, 0.0])
    typology = ["transshipment", "transshipment", "shell_company", None, None, None, None,
                None, None, None]
    # top 20% = 2 records: indexes 0 and 2
    assert typology_recall(y, scores, typology, 0.2) == {"shell_company": 1.0,
                                                         "transshipment": 0.5}
    metrics = evaluate(y, scores, typology)
    assert metrics["recall_at_5pct_transshipment"] == 0.5  # top 5% of 10 = 1 record
    assert metrics["recall_at_5pct_shell_company"] == 0.0
    assert metrics["records"] == 10 and metrics["positives"] == 3


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize("name", ["baseline", "deeper_trees", "iforest_only",
                                  "early_stop_logloss", "balance_schemes",
                                  "explore_value"])
def test_shipped_experiment_configs_load(name):
    config = load_config(EXPERIMENTS / f"{name}.toml")
    assert config.name == name
    assert config.source == str(EXPERIMENTS / f"{name}.toml")
    assert 0 < config.split.fit + config.split.calibrate < 1
    params = config.as_params()
    assert {"split.fit", "lightgbm.num_leaves", "unsupervised.detectors", "seed"} <= set(params)


def test_variant_overrides_only_what_it_names():
    baseline = load_config(EXPERIMENTS / "baseline.toml")
    deeper = load_config(EXPERIMENTS / "deeper_trees.toml")
    assert deeper.lightgbm.num_leaves == 63 and baseline.lightgbm.num_leaves == 15
    assert deeper.split == baseline.split
    assert load_config(EXPERIMENTS / "iforest_only.toml").unsupervised.detectors == ("iforest",)
    logloss = load_config(EXPERIMENTS / "early_stop_logloss.toml")
    assert logloss.lightgbm_params()["metric"] == "binary_logloss"
    assert baseline.lightgbm_params()["metric"] == "average_precision"
    assert logloss.lightgbm.num_leaves == baseline.lightgbm.num_leaves
    assert load_config(None).lightgbm == baseline.lightgbm  # baseline = defaults written out
    balanced = load_config(EXPERIMENTS / "balance_schemes.toml").lightgbm
    assert balanced.balance_schemes == 1 and baseline.lightgbm.balance_schemes == 0
    value = load_config(EXPERIMENTS / "explore_value.toml")
    assert value.queue.explore_order == "value" and value.lightgbm.balance_schemes == 1
    assert baseline.queue.explore_order == "lists" == load_config(None).queue.explore_order
    # stored with the model as a flat parameter, read back by the queue
    assert value.as_params()["queue.explore_order"] == "value"


@pytest.mark.parametrize("text, fragments", [
    ("[lightgbm]\nnum_leafs = 7\n", ["[lightgbm]", "num_leafs"]),
    ("colour = 'red'\n", ["colour"]),
    ("[lightgbm]\nnum_leaves = 'many'\n", ["[lightgbm].num_leaves", "expected int", "'many'"]),
    ("[lightgbm]\nnum_leaves = true\n", ["[lightgbm].num_leaves", "expected int"]),
    ("[unsupervised]\ndetectors = 'iforest'\n", ["[unsupervised].detectors", "list"]),
    ("[unsupervised]\ndetectors = ['iforest', 'knn']\n", ["detectors", "knn"]),
    ("[split]\nfit = 0.7\ncalibrate = 0.3\n", ["[split]", "fit=0.7", "calibrate=0.3"]),
    ("[split]\nfit = 0\n", ["[split]", "fit=0"]),
    ("[split\nfit = 0.5\n", ["not valid TOML"]),
    ("[lightgbm]\nmetric = 'f1'\n", ["[lightgbm].metric", "binary_logloss", "'f1'"]),
    ("split = 0.5\n", ["split", "table"]),
    ("seed = 'zero'\n", ["seed", "expected int"]),
    ("[lightgbm]\nbalance_schemes = 2\n", ["[lightgbm].balance_schemes", "0 to 1", "2"]),
    ("[queue]\nexplore_order = 'random'\n", ["[queue].explore_order", "value", "'random'"]),
])
def test_bad_config_names_file_and_key(tmp_path, text, fragments):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InputError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_missing_config_file(tmp_path):
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_integer_accepted_where_a_float_is_expected(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text("[lightgbm]\nlambda_l2 = 2\n")
    assert load_config(path).lightgbm.lambda_l2 == 2


# ------------------------------------------------------------------ time split


def test_split_by_time_orders_fit_before_calibrate_before_test(labelled_frame):
    slices = split_by_time(labelled_frame, 0.6, 0.2)
    n = labelled_frame.height
    assert [s.height for s in slices.values()] == [round(n * 0.6), round(n * 0.8) -
                                                   round(n * 0.6), n - round(n * 0.8)]
    assert slices["fit"]["record_date"].max() <= slices["calibrate"]["record_date"].min()
    assert slices["calibrate"]["record_date"].max() <= slices["test"]["record_date"].min()
    ids = [set(zip(s["record_kind"], s["record_id"])) for s in slices.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert sum(len(i) for i in ids) == n


def test_split_by_time_on_a_tiny_hand_frame():
    frame = pl.DataFrame({"record_date": list(range(10)), "label": [0, 1] * 5})
    slices = split_by_time(frame, 0.5, 0.3)
    assert slices["fit"]["record_date"].to_list() == [0, 1, 2, 3, 4]
    assert slices["calibrate"]["record_date"].to_list() == [5, 6, 7]
    assert slices["test"]["record_date"].to_list() == [8, 9]


# ------------------------------------------------------------------ the layers


def _record_with_many_rule_hits(frame: pl.DataFrame, clean: bool) -> pl.DataFrame:
    from features.rules import rule_points

    points = rule_points(frame)
    order = points.sort("rule_points", descending=not clean).head(1)
    return frame.join(order.select("record_kind", "record_id"), on=["record_kind", "record_id"])


def test_fallback_model_ranks_many_rule_hits_above_a_clean_record(labelled_frame):
    features = model_feature_names()
    model = FallbackModel(features).fit(labelled_frame)
    flagged = _record_with_many_rule_hits(labelled_frame, clean=False)
    clean = _record_with_many_rule_hits(labelled_frame, clean=True)
    layered = model.layers(pl.concat([flagged, clean]))
    assert layered["rule_points"][0] >= 50 and layered["rule_points"][1] == 0
    risk = model.risk(layered)
    assert risk[0] > risk[1]
    assert np.all((risk >= 0) & (risk <= 1))
    # the rule hits are named, not just counted
    assert len(layered["rule_hits"][0]) >= 2 and len(layered["rule_hits"][1]) == 0


def test_supervised_model_is_calibrated_to_probabilities(labelled_frame):
    features = model_feature_names()
    slices = split_by_time(labelled_frame, 0.6, 0.2)
    model = SupervisedModel(features, {"num_threads": 1}, num_boost_round=60,
                            early_stopping_rounds=10).fit(
        slices["fit"], slices["fit"]["label"].to_numpy(),
        valid_frame=slices["calibrate"], valid_labels=slices["calibrate"]["label"].to_numpy())
    assert model.calibrated_
    a, _ = model.calibration_
    assert a > 0  # a higher margin still means riskier after calibration
    p = model.decision_function(slices["test"])
    assert p.shape == (slices["test"].height,)
    assert np.all((p >= 0) & (p <= 1))
    # calibration is monotone: the probability order is the margin order
    margin = model.margin(slices["test"])
    assert np.all(np.diff(p[np.argsort(margin, kind="stable")]) >= 0)
    # confirmed diversions get higher probabilities than cleared records on average
    y = slices["test"]["label"].to_numpy()
    assert p[y == 1].mean() > p[y == 0].mean()


def test_scheme_weights_by_hand():
    y = np.array([1, 1, 1, 1, 0, 0, 1])
    schemes = ["front", "front", "front", "lease", None, "front", None]
    # 5 confirmed, 3 schemes (front x3, lease x1, unspecified x1): 5/9, 5/3, 5/3; the
    # cleared rows weigh 1 whatever their typology; the confirmed keep their total of 5
    assert np.allclose(scheme_weights(y, schemes, 1.0),
                       [5 / 9, 5 / 9, 5 / 9, 5 / 3, 1, 1, 5 / 3])
    half = scheme_weights(y, schemes, 0.5)
    raw = np.sqrt([5 / 9] * 3 + [5 / 3] * 2)
    assert np.allclose(half[[0, 1, 2, 3, 6]], raw * 5 / raw.sum())
    assert np.allclose(half[[4, 5]], 1)
    assert scheme_weights(y, schemes, 0.0) is None
    assert np.allclose(scheme_weights(np.zeros(3), [None] * 3, 1.0), 1)
    cfg = load_config(None)
    assert cfg.lightgbm.balance_schemes == 0 and "balance_schemes" not in cfg.lightgbm_params()


def test_scheme_weights_lift_the_few_cases_of_a_rare_scheme():
    """100 confirmed cases of one scheme (high ``a``), 8 of a new one (high ``b``): weighted,
    the trees rank a record like the new scheme's cases higher than unweighted."""
    rng = np.random.default_rng(5)
    a = np.r_[rng.normal(0, 1, 400), rng.normal(3, 0.5, 100), rng.normal(0, 1, 8)]
    b = np.r_[rng.normal(0, 1, 400), rng.normal(0, 1, 100), rng.normal(3, 0.3, 8)]
    y = np.r_[np.zeros(400), np.ones(108)]
    schemes = [None] * 400 + ["front"] * 100 + ["new"] * 8
    frame = pl.DataFrame({"a": a, "b": b})
    probe = pl.DataFrame({"a": [0.0], "b": [3.0]})
    params = {"num_threads": 1, "min_data_in_leaf": 5, "seed": 0}
    plain = SupervisedModel(["a", "b"], params, num_boost_round=40).fit(frame, y)
    weights = scheme_weights(y, schemes, 1.0)
    assert weights[-1] > 5 * weights[400]  # the new scheme's cases count more
    weighted = SupervisedModel(["a", "b"], params, num_boost_round=40).fit(
        frame, y, sample_weight=weights)
    assert weighted.margin(probe)[0] > plain.margin(probe)[0] + 0.5


def test_supervised_model_refuses_a_single_label(labelled_frame):
    one = labelled_frame.filter(pl.col("label") == 1)
    with pytest.raises(ValueError, match="labels 0 and 1"):
        SupervisedModel(model_feature_names()).fit(one, one["label"].to_numpy())


@pytest.fixture(scope="module")
def fitted_bundle(labelled_frame, world) -> ModelBundle:
    slices = split_by_time(labelled_frame, 0.6, 0.2)
    model = DiversionModel(model_feature_names(), {"num_threads": 1}, num_boost_round=60,
                           early_stopping_rounds=10, unsupervised_detectors=("iforest", "hbos"),
                           random_state=3).fit(
        slices["fit"], slices["fit"]["label"].to_numpy(), valid_frame=slices["calibrate"],
        valid_labels=slices["calibrate"]["label"].to_numpy())
    return ModelBundle(model, model_feature_names(), {"note": "stats"}, "ref-test",
                       {"seed": 3}, {"pr_auc": 0.5}, {"dataset": str(world)})


def test_model_bundle_round_trip_scores_identically(fitted_bundle, labelled_frame, tmp_path):
    directory = fitted_bundle.save(tmp_path / "bundle")
    loaded = ModelBundle.load(directory, expected_features=model_feature_names())
    before = fitted_bundle.model.decision_function(labelled_frame)
    after = loaded.model.decision_function(labelled_frame)
    assert np.array_equal(before, after)
    assert np.all((after >= 0) & (after <= 1))
    assert loaded.model.unsupervised_detectors == ("iforest", "hbos")
    assert loaded.reference_version == "ref-test"
    assert loaded.feature_stats == {"note": "stats"}
    assert loaded.metrics == {"pr_auc": 0.5}
    # contributions survive too (explanations of a loaded model equal the original's)
    head = fitted_bundle.model.layers(labelled_frame.head(5))
    assert np.allclose(fitted_bundle.model.contributions(head), loaded.model.contributions(head))


def test_model_bundle_refuses_different_features(fitted_bundle, tmp_path):
    directory = fitted_bundle.save(tmp_path / "bundle")
    expected = [f for f in model_feature_names() if f != "chip_tpp"] + ["brand_new_feature"]
    with pytest.raises(InputError) as caught:
        ModelBundle.load(directory, expected_features=expected)
    message = str(caught.value)
    assert str(directory) in message
    assert "brand_new_feature" in message and "lacks" in message  # missing from the model
    assert "chip_tpp" in message and "extra" in message  # the model has, the detector doesn't
    assert "retrain" in message


def test_model_bundle_refuses_a_directory_without_a_bundle(tmp_path):
    with pytest.raises(InputError, match="not a detector model bundle"):
        ModelBundle.load(tmp_path)


# ------------------------------------------------------------------ no code from a bundle


class _Payload:
    """Unpickling this creates ``marker``: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _plant_pickle(directory: Path, marker: Path) -> None:
    import pickle

    (directory / "layers.pkl").write_bytes(pickle.dumps({"rules": _Payload(marker)}))
    # the payload is live: unpickling it here does create the marker
    probe = marker.with_name("probe")
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.exists()


def test_a_bundle_holds_no_pickle(fitted_bundle, tmp_path):
    directory = fitted_bundle.save(tmp_path / "bundle")
    names = sorted(p.name for p in directory.iterdir())
    assert names == ["booster.txt", "bundle.json", "detectors.skops", "unsupervised.npz"]
    for p in directory.iterdir():
        assert b"\x80\x04\x95" not in p.read_bytes()[:64]  # no pickle protocol header


def test_a_pickle_planted_in_a_bundle_is_never_unpickled(fitted_bundle, labelled_frame,
                                                         tmp_path):
    directory = fitted_bundle.save(tmp_path / "bundle")
    marker = tmp_path / "code-ran"
    _plant_pickle(directory, marker)
    loaded = ModelBundle.load(directory, expected_features=model_feature_names())
    assert not marker.exists()
    assert np.array_equal(loaded.model.decision_function(labelled_frame.head(50)),
                          fitted_bundle.model.decision_function(labelled_frame.head(50)))


def test_an_old_pickled_bundle_is_refused_without_unpickling(fitted_bundle, tmp_path):
    import json

    directory = fitted_bundle.save(tmp_path / "bundle")
    meta = json.loads((directory / "bundle.json").read_text())
    meta["bundle_format"] = 1
    (directory / "bundle.json").write_text(json.dumps(meta))
    marker = tmp_path / "code-ran"
    _plant_pickle(directory, marker)
    with pytest.raises(InputError, match="format 1 stored its layers as a pickle"):
        ModelBundle.load(directory, expected_features=model_feature_names())
    assert not marker.exists()


def test_a_replaced_detector_file_is_refused(fitted_bundle, tmp_path):
    directory = fitted_bundle.save(tmp_path / "bundle")
    (directory / "detectors.skops").write_bytes(b"PK\x03\x04 not the saved file")
    with pytest.raises(InputError, match="does not match the SHA-256"):
        ModelBundle.load(directory, expected_features=model_feature_names())


def test_a_detector_file_with_foreign_types_is_refused_even_with_a_matching_hash(
        fitted_bundle, tmp_path):
    """An attacker can rewrite bundle.json too: the hash is integrity, the type list is
    the safety. skops builds only the listed classes."""
    import hashlib
    import json
    from collections import Counter

    import skops.io

    directory = fitted_bundle.save(tmp_path / "bundle")
    data = skops.io.dumps({"iforest": Counter("abc"), "hbos": Counter()})
    (directory / "detectors.skops").write_bytes(data)
    meta = json.loads((directory / "bundle.json").read_text())
    meta["files"]["detectors.skops"] = hashlib.sha256(data).hexdigest()
    (directory / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="holds types a detector bundle never contains"):
        ModelBundle.load(directory, expected_features=model_feature_names())

"""Scoring with a booster's trees (detector.models.trees) gives LightGBM's own numbers
bit for bit: binary margins and probabilities, multiclass probabilities, on frames of
every column type the model features have, with nulls, NaN, infinities, zeros and
values too small for LightGBM to tell from zero, sliced and in several chunks."""

from __future__ import annotations

import pickle

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

from detector.models import trees
from detector.models.base import feature_matrix
from detector.models.scheme import SchemeModel
from detector.models.supervised import SupervisedModel
from detector.models.trees import TreePredictor

COLUMNS = ["amount", "count", "flag", "share", "ratio", "stamp"]
EDGES = [None, float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1e-40, -1e-40, 1e-35,
         1e300, -1e300, 5e-324]


def _frame(rows: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(3, 1, rows)
    amount[rng.random(rows) < 0.15] = np.nan
    share = rng.normal(size=rows)
    share[rng.random(rows) < 0.2] = 0.0
    frame = pl.DataFrame({
        "amount": amount,
        "count": pl.Series(rng.integers(0, 6, rows), dtype=pl.Int64),
        "flag": pl.Series(rng.random(rows) < 0.3, dtype=pl.Boolean),
        "share": share,
        "ratio": rng.normal(size=rows).astype(np.float32),
        "stamp": pl.Series(rng.integers(0, 400, rows), dtype=pl.UInt32),
    })
    # nulls in every column (NaN to the model)
    return frame.with_columns(
        pl.when(pl.Series(rng.random(rows) < 0.05)).then(None).otherwise(pl.col(c)).alias(c)
        for c in COLUMNS)


def _with_edges(frame: pl.DataFrame) -> pl.DataFrame:
    edges = pl.DataFrame({c: pl.Series(EDGES, dtype=pl.Float64) for c in ("amount", "share")})
    edges = edges.with_columns(
        pl.lit(None, pl.Int64).alias("count"), pl.lit(None, pl.Boolean).alias("flag"),
        pl.col("share").cast(pl.Float32).alias("ratio"), pl.lit(None, pl.UInt32).alias("stamp"))
    return pl.concat([frame, edges.select(COLUMNS)])  # two chunks


@pytest.fixture(scope="module")
def train() -> tuple[pl.DataFrame, np.ndarray]:
    frame = _frame(6000, 0)
    x = feature_matrix(frame, COLUMNS)
    y = ((np.nan_to_num(x[:, 0]) > 25) ^ (x[:, 2] == 1) | (x[:, 3] > 1.2)).astype(float)
    return frame, y


@pytest.mark.parametrize("params", [{}, {"zero_as_missing": True}, {"use_missing": False}])
def test_binary_margins_and_probabilities_equal_lightgbm_bit_for_bit(train, params,
                                                                    monkeypatch):
    # blocks smaller than the frames, not a multiple of their heights
    monkeypatch.setattr(trees, "PREDICT_BLOCK_ROWS", 701)
    frame, y = train
    booster = lgb.train({"objective": "binary", "num_leaves": 15, "min_data_in_leaf": 5,
                         "verbosity": -1, **params}, lgb.Dataset(feature_matrix(frame, COLUMNS), y),
                        num_boost_round=40)
    test = _with_edges(_frame(3000, 1))
    assert test.n_chunks("all") == [2] * len(COLUMNS)
    first30 = TreePredictor(booster, 30)
    for rows in (test, test.slice(1234, 1700), test.filter(pl.col("flag").fill_null(True))):
        x = feature_matrix(rows, COLUMNS)
        for raw in (True, False):
            expected = booster.predict(x, raw_score=raw, num_iteration=30)
            got = first30.predict(rows, COLUMNS, raw_score=raw)
            assert got.dtype == np.float64 and got.shape == (rows.height,)
            np.testing.assert_array_equal(got, expected)
    # all 40 iterations differ from the first 30: the iteration count is honoured
    assert not np.array_equal(TreePredictor(booster).predict(test, COLUMNS, raw_score=True),
                              first30.predict(test, COLUMNS, raw_score=True))


def test_scheme_model_probabilities_equal_lightgbm_bit_for_bit(train, monkeypatch):
    monkeypatch.setattr(trees, "PREDICT_BLOCK_ROWS", 999)
    frame, _ = train
    rng = np.random.default_rng(2)
    schemes = [["transshipment"], ["shell_company"], ["misdeclaration"]]
    rows = [schemes[int(i)] for i in rng.integers(0, 3, frame.height)]
    model = SchemeModel(COLUMNS).fit(frame, rows)
    test = _with_edges(_frame(2000, 3))
    expected = model.booster_.predict(feature_matrix(test, COLUMNS))
    assert expected.shape == (test.height, 3)
    np.testing.assert_array_equal(model.predict_proba(test), expected)
    # saved and loaded (the bundle's path), and pickled (Dask ships the model to workers)
    state, text = model.to_state()
    loaded = SchemeModel.from_state(state, text)
    np.testing.assert_array_equal(loaded.predict_proba(test), expected)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(loaded)).predict_proba(test),
                                  expected)


def test_supervised_margin_equals_lightgbm_and_survives_pickle_and_refit(train):
    frame, y = train
    model = SupervisedModel(COLUMNS, num_boost_round=25, early_stopping_rounds=5)
    model.fit(frame, y)
    test = _with_edges(_frame(2000, 4))

    def lightgbm_margin(m):
        return m.booster_.predict(feature_matrix(test, COLUMNS), raw_score=True,
                                  num_iteration=m.best_iteration_)

    np.testing.assert_array_equal(model.margin(test), lightgbm_margin(model))
    copy = pickle.loads(pickle.dumps(model))
    assert "_trees_cache" not in copy.__dict__
    np.testing.assert_array_equal(copy.margin(test), lightgbm_margin(model))
    # a new booster (refit) is not scored with the old one's trees
    model.fit(frame, 1.0 - y)
    np.testing.assert_array_equal(model.margin(test), lightgbm_margin(model))


def test_missing_model_input_is_refused_by_name(train):
    frame, y = train
    booster = lgb.train({"objective": "binary", "verbosity": -1},
                        lgb.Dataset(feature_matrix(frame, COLUMNS), y), num_boost_round=3)
    with pytest.raises(ValueError, match="lacks 1 model input.*ratio"):
        TreePredictor(booster).predict(frame.drop("ratio"), COLUMNS)


def test_an_empty_frame_predicts_nothing(train):
    frame, y = train
    booster = lgb.train({"objective": "binary", "verbosity": -1},
                        lgb.Dataset(feature_matrix(frame, COLUMNS), y), num_boost_round=3)
    assert TreePredictor(booster).predict(frame.head(0), COLUMNS).shape == (0,)

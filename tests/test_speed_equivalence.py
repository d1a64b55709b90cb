"""Issue #15 (speed): the fast paths give exactly what the slow ones gave.

The vectorised HBOS (`detector.models.unsupervised.hbos_scores`) must equal pyod's
`HBOS.decision_function` bit for bit: the unsupervised layer maps raw scores to their
percentile among training scores, so a score one ulp off a tied training score would
move its percentile.
"""

from __future__ import annotations

import numpy as np
from pyod.models.hbos import HBOS

from detector.models.unsupervised import hbos_scores


def _data(rng, n, d):
    x = rng.normal(size=(n, d))
    x[:, 0] = rng.integers(0, 4, n)  # few distinct values: many rows tie
    x[:, 1] = np.round(x[:, 1], 1)
    return x


def test_hbos_scores_equal_pyod_bit_for_bit():
    rng = np.random.default_rng(3)
    train = _data(rng, 5_000, 6)
    det = HBOS(n_bins=20).fit(train)
    test = _data(rng, 20_000, 6)
    # values on the edges, just outside them (within tol) and far outside
    edges = det.bin_edges_
    test[:50] = edges[rng.integers(0, 21, 50)][:, :6] if edges.shape[1] >= 6 else test[:50]
    width = edges[1] - edges[0]
    test[50:60] = edges[0] - 0.3 * width
    test[60:70] = edges[0] - 5 * width
    test[70:80] = edges[-1] + 0.3 * (edges[-1] - edges[-2])
    test[80:90] = edges[-1] + 9 * (edges[-1] - edges[-2])
    expected = det.decision_function(test)
    got = hbos_scores(det, test)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert np.array_equal(got, expected)
    # the training rows themselves score as pyod scored them in fit
    assert np.array_equal(hbos_scores(det, train), det.decision_scores_)


def test_hbos_scores_can_fail():
    """A different detector gives different scores (the comparison above can fail)."""
    rng = np.random.default_rng(4)
    train = _data(rng, 2_000, 4)
    a, b = HBOS(n_bins=20).fit(train), HBOS(n_bins=10).fit(train)
    assert not np.array_equal(hbos_scores(a, train), b.decision_function(train))


def test_loda_scores_equal_pyod_bit_for_bit():
    from pyod.models.loda import LODA

    from detector.models.unsupervised import LODA_BLOCK_ROWS, loda_scores

    rng = np.random.default_rng(5)
    train = _data(rng, 5_000, 9)
    det = LODA(n_random_cuts=50, random_state=0).fit(train)
    # more rows than a block, and not a multiple of it
    test = _data(rng, 2 * LODA_BLOCK_ROWS + 123, 9)
    test[:20] *= 50  # beyond every histogram
    expected = det.decision_function(test)
    got = loda_scores(det, test)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)
    # a column-major matrix (as polars hands over a feature matrix) as well
    column_major = np.asfortranarray(test)
    assert np.array_equal(loda_scores(det, column_major), det.decision_function(column_major))
    assert np.array_equal(loda_scores(det, train), det.decision_scores_)
    other = LODA(n_random_cuts=50, random_state=1).fit(train)
    assert not np.array_equal(loda_scores(other, test), expected)


def test_scheme_names_gathered_as_the_row_loop_named_them():
    from detector.schemes import MIN_CONFIDENCE, SCHEMES, UNCLEAR, _names

    rng = np.random.default_rng(6)
    best = rng.integers(0, len(SCHEMES), 10_000)
    confidence = rng.random(10_000)
    confidence[::7] = np.nan
    expected = [SCHEMES[b] if c >= MIN_CONFIDENCE else UNCLEAR
                for b, c in zip(best, confidence)]
    assert _names(best, confidence >= MIN_CONFIDENCE).to_list() == expected
    assert UNCLEAR in expected and len(set(expected)) == len(SCHEMES) + 1


def test_iforest_scores_equal_on_a_row_major_float32_copy():
    """`_decision_function` hands IForest a row-major float32 copy of the matrix (faster
    trees); its scores equal pyod's on the matrix as given, column-major float64."""
    from pyod.models.iforest import IForest

    from detector.models.unsupervised import _decision_function

    rng = np.random.default_rng(7)
    train = _data(rng, 3_000, 8)
    det = IForest(n_estimators=20, max_samples=256, random_state=0, n_jobs=1).fit(train)
    test = np.asfortranarray(_data(rng, 5_000, 8))
    assert np.array_equal(_decision_function(det, test), det.decision_function(test))
    other = IForest(n_estimators=20, max_samples=256, random_state=1, n_jobs=1).fit(train)
    assert not np.array_equal(_decision_function(other, test), det.decision_function(test))


def test_iforest_through_lignum_equals_pyod_bit_for_bit():
    """`iforest_scores` with the forest written as LightGBM trees (`isolation_trees`,
    scored by lignum) gives pyod's scores bit for bit: on ordinary rows, on values at
    every split threshold and one float32 step either side of it (where a float32 copy
    decides differently from the float64 value), on extreme values; a matrix with NaN or
    an infinity is refused as pyod refuses it."""
    import pytest
    from pyod.models.iforest import IForest

    from detector.models.unsupervised import iforest_scores, isolation_trees

    rng = np.random.default_rng(11)
    train = _data(rng, 3_000, 8)
    det = IForest(n_estimators=30, max_samples=256, random_state=0, n_jobs=1).fit(train)
    trees = isolation_trees(det)
    assert trees is not None
    test = np.asfortranarray(_data(rng, 20_000, 8))
    # split values: the double threshold, and the float32 values around it
    splits = [(f, t) for e in det.detector_.estimators_
              for f, t in zip(e.tree_.feature, e.tree_.threshold) if f >= 0]
    for k, (f, t) in enumerate(splits[:3_000]):
        near = np.float32(t)
        row = 3 * k
        test[row, f] = t
        test[row + 1, f] = np.nextafter(near, np.float32(np.inf))
        test[row + 2, f] = np.nextafter(near, np.float32(-np.inf))
    test[-20:] *= 1e6
    expected = det.decision_function(np.ascontiguousarray(test, dtype=np.float32))
    got = iforest_scores(det, trees, test)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert np.array_equal(got, expected)
    assert np.array_equal(iforest_scores(det, trees, train), det.decision_scores_)
    other = IForest(n_estimators=30, max_samples=256, random_state=1, n_jobs=1).fit(train)
    assert not np.array_equal(iforest_scores(other, isolation_trees(other), test), expected)
    for bad in (np.nan, np.inf):
        broken = test.copy()
        broken[5, 2] = bad
        with pytest.raises(ValueError, match="NaN|infinity"):
            det.decision_function(broken)
        with pytest.raises(ValueError, match="NaN|infinity"):
            iforest_scores(det, trees, broken)


def test_ensemble_with_lignum_trees_pickles_and_refits():
    """The ensemble's lignum trees are made once per fitted set of detectors, left out of
    a pickle (remade after it) and remade after a new fit."""
    import pickle

    import polars as pl

    from detector.models import unsupervised

    rng = np.random.default_rng(12)
    columns = [f"f{i}" for i in range(5)]
    train = pl.DataFrame(_data(rng, 2_000, 5), schema=columns)
    test = pl.DataFrame(_data(rng, 3_000, 5), schema=columns)
    ensemble = unsupervised.UnsupervisedEnsemble(columns).fit(train)
    scores = ensemble.raw_scores(test)
    assert ensemble._isolation_trees()["iforest"] is not None
    copy = pickle.loads(pickle.dumps(ensemble))
    assert "_trees_cache" not in copy.__dict__
    for name, values in copy.raw_scores(test).items():
        assert np.array_equal(values, scores[name])
    first = ensemble._isolation_trees()
    ensemble.fit(pl.DataFrame(_data(rng, 2_000, 5), schema=columns))
    assert ensemble._isolation_trees() is not first


def test_feature_matrix_equals_casting_every_column():
    """`feature_matrix` hands number and null-free boolean columns to numpy as they are;
    the matrix equals casting each column to Float64 with nulls as NaN, bit for bit
    (integers beyond 2**53, unsigned, float32, NaN beside nulls, booleans with and
    without nulls, a sliced frame)."""
    import polars as pl

    from detector.models.base import feature_matrix

    frame = pl.DataFrame({
        "i64": pl.Series([1, None, 2 ** 53 + 1, -(2 ** 62) - 3, 7], dtype=pl.Int64),
        "i32": pl.Series([1, 2, None, -4, 5], dtype=pl.Int32),
        "u64": pl.Series([2 ** 64 - 1, 0, 3, None, 9], dtype=pl.UInt64),
        "f32": pl.Series([0.1, None, float("nan"), -1e30, 3.5], dtype=pl.Float32),
        "f64": pl.Series([0.1, None, float("nan"), float("inf"), -0.0]),
        "b": [True, False, True, False, True],
        "b_null": [True, None, False, None, True],
    })
    columns = list(frame.columns)

    def cast_each(df):
        return np.column_stack([df[c].cast(pl.Float64).fill_null(np.nan).to_numpy()
                                for c in columns])

    for df in (frame, frame.slice(1, 3)):
        got, expected = feature_matrix(df, columns), cast_each(df)
        assert got.flags.f_contiguous
        assert np.array_equal(got.view(np.int64), expected.view(np.int64))
    # the comparison can fail: a different column order gives a different matrix
    assert not np.array_equal(feature_matrix(frame, columns[::-1]), cast_each(frame),
                              equal_nan=True)


def test_detectors_score_the_same_side_by_side():
    """The unsupervised layer's detectors run on threads for large parts; each
    detector's percentiles equal those of running them one after another."""
    import polars as pl

    from detector.models import unsupervised

    rng = np.random.default_rng(8)
    columns = [f"f{i}" for i in range(6)]
    train = pl.DataFrame(_data(rng, 4_000, 6), schema=columns)
    test = pl.DataFrame(_data(rng, 6_000, 6), schema=columns)
    ensemble = unsupervised.UnsupervisedEnsemble(columns).fit(train)
    one_by_one = ensemble.detector_scores(test)
    old = unsupervised.PARALLEL_MIN_ROWS
    try:
        unsupervised.PARALLEL_MIN_ROWS = 1
        side_by_side = ensemble.detector_scores(test)
    finally:
        unsupervised.PARALLEL_MIN_ROWS = old
    assert list(side_by_side) == list(one_by_one) == list(ensemble.detectors_)
    for name in one_by_one:
        assert np.array_equal(side_by_side[name], one_by_one[name])


def test_blocks_of_a_part_score_as_the_whole_matrix(monkeypatch):
    """The unsupervised layer prepares and scores a part block by block, the blocks on
    threads; every detector's raw scores equal pyod's own scores of the whole matrix
    (filled, centred and scaled at once, as before), bit for bit, and so do the
    percentiles."""
    import polars as pl

    from detector.models import unsupervised
    from detector.models.base import feature_matrix

    rng = np.random.default_rng(9)
    columns = [f"f{i}" for i in range(6)]
    train = pl.DataFrame(_data(rng, 4_000, 6), schema=columns)
    rows = 3 * unsupervised.LODA_BLOCK_ROWS + 123
    test = _data(rng, rows, 6)
    test[rng.random(test.shape) < 0.05] = np.nan  # filled with the training medians
    test = pl.DataFrame(test, schema=columns).with_columns(pl.col("f2").fill_nan(None))
    ensemble = unsupervised.UnsupervisedEnsemble(columns).fit(train)
    x = feature_matrix(test, columns)
    np.copyto(x, np.broadcast_to(ensemble.fill_values_, x.shape), where=np.isnan(x))
    x -= ensemble.center_
    x /= ensemble.scale_
    expected = {name: det.decision_function(x) for name, det in ensemble.detectors_.items()}
    monkeypatch.setattr(unsupervised, "SCORE_BLOCK_ROWS", unsupervised.LODA_BLOCK_ROWS)
    monkeypatch.setattr(unsupervised, "PARALLEL_MIN_ROWS", 1)
    got = ensemble.raw_scores(test)
    assert list(got) == list(expected) == ["iforest", "hbos", "loda"]
    for name in expected:
        assert got[name].shape == (rows,)
        assert np.array_equal(got[name], expected[name]), name
    percentiles = ensemble.detector_scores(test)
    for name, ref in ensemble.train_scores_.items():
        assert np.array_equal(percentiles[name],
                              np.searchsorted(ref, expected[name], side="right") / len(ref))
    # the comparison can fail: inputs 1% off move HBOS and LODA scores (their bins);
    # IForest's path lengths move with other trees
    nudged = ensemble.raw_scores(test.with_columns(pl.col(columns) * 1.01))
    assert not np.array_equal(nudged["hbos"], expected["hbos"])
    assert not np.array_equal(nudged["loda"], expected["loda"])
    other = unsupervised.UnsupervisedEnsemble(columns, random_state=1).fit(train)
    assert not np.array_equal(other.raw_scores(test)["iforest"], expected["iforest"])


def test_bin_counts_equal_a_binary_search_per_value():
    """`bin_counts` counts by one comparison pass per edge; the counts equal binning each
    value by binary search (bins right-closed at each edge), with NaN and ±inf missing."""
    import numpy as np

    from detector.drift import bin_counts

    rng = np.random.default_rng(11)
    edges = np.unique(np.round(rng.normal(size=9), 2))
    values = np.concatenate([rng.normal(size=5_000), edges, edges - 1e-12,
                             [np.nan, np.nan, np.inf, -np.inf, np.inf]])
    rng.shuffle(values)
    finite = values[np.isfinite(values)]
    expected = np.append(np.bincount(np.searchsorted(edges, finite, side="right"),
                                     minlength=len(edges) + 1), len(values) - len(finite))
    got = bin_counts(values, edges)
    assert got.dtype == np.float64 and np.array_equal(got, expected)
    assert got[-1] == 5 and got.sum() == len(values)
    # no edges: every finite value in one bin; and the comparison can fail
    assert np.array_equal(bin_counts(values, []), [len(finite), 5])
    assert not np.array_equal(bin_counts(values, edges[1:]), expected[1:])

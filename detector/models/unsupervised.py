"""The unsupervised layer: pyod detectors that suit repeated batch scoring.

IForest, HBOS and LODA keep a compact fitted state and score 100k rows in well under
a second (ECOD/COPOD re-scan their training data on every call; see
ENGINEERING_NOTES.md). Each detector's raw score is mapped to its percentile among
the training scores, so the combined score is the mean training percentile: 0.99
means "more unusual than 99% of what the model was fitted on".
"""

from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl

from detector.config import KNOWN_DETECTORS, UnsupervisedSettings
from detector.models.base import RiskModel, feature_matrix

# below this many rows the blocks of a part score one after another (threads cost more)
PARALLEL_MIN_ROWS = 50_000
DETECTORS = KNOWN_DETECTORS  # every detector `_make` builds; the config validates against it
_DEFAULTS = UnsupervisedSettings()


def _make(name: str, random_state: int):
    if name == "iforest":
        from pyod.models.iforest import IForest

        return IForest(n_estimators=50, max_samples=256, random_state=random_state, n_jobs=1)
    if name == "hbos":
        from pyod.models.hbos import HBOS

        return HBOS(n_bins=20)
    if name == "loda":
        from pyod.models.loda import LODA

        return LODA(n_random_cuts=50, random_state=random_state)
    raise ValueError(f"unknown unsupervised detector {name!r}; expected one of {DETECTORS}")


HBOS_BLOCK_ROWS = 65536


def hbos_scores(detector, x: np.ndarray) -> np.ndarray:
    """What pyod's ``HBOS.decision_function(x)`` returns, bit for bit, without its
    per-row loop (a numba function that also compiles for seconds at every start).

    Per feature: the bin of each value (``np.digitize``, right-closed, as pyod does), the
    bin's ``log2(density + alpha)``; a value outside the histogram takes the nearest
    edge bin when within ``tol`` bin widths of it, else the lowest bin score. The
    per-bin scores are taken with ``math.log2`` (the C library's, as the compiled pyod
    code uses), so scores equal to a training score stay equal and its percentile does
    not move.

    Block by block of rows: each feature's scores are written contiguously (feature by
    feature), then the block is laid out row by row, as pyod's score matrix is, for the
    sum over features, so every row's sum runs the same operations in the same order.
    Writing one column at a time into a row-major matrix of every row cost twice the
    rest of the work, and a matrix the size of the input."""
    edges, hist = detector.bin_edges_, detector.hist_
    n_bins, alpha, tol = int(detector.n_bins), detector.alpha, detector.tol
    x = np.asarray(x, dtype=np.float64)
    n_rows, n_features = x.shape
    bin_scores = [np.array([math.log2(h + alpha) for h in hist[:, i]], dtype=np.float64)
                  for i in range(n_features)]
    total = np.empty(n_rows, dtype=np.float64)
    for start in range(0, n_rows, HBOS_BLOCK_ROWS):
        block = x[start:start + HBOS_BLOCK_ROWS]
        per_feature = np.empty((n_features, len(block)), dtype=np.float64)
        for i in range(n_features):
            per_feature[i] = _hbos_feature(block[:, i], edges[:, i], bin_scores[i],
                                           n_bins, tol)
        total[start:start + HBOS_BLOCK_ROWS] = np.sum(np.ascontiguousarray(per_feature.T),
                                                      axis=1)
    return total.ravel() * -1


def _hbos_feature(column: np.ndarray, edges: np.ndarray, scores: np.ndarray, n_bins: int,
                  tol: float) -> np.ndarray:
    """One feature's HBOS score per value (see `hbos_scores`)."""
    bins = np.digitize(column, edges, right=True)
    lowest = scores.min()
    out = scores[np.clip(bins - 1, 0, n_bins - 1)]
    below = bins == 0
    if below.any():
        near = (edges[0] - column[below]) <= (edges[1] - edges[0]) * tol
        out[below] = np.where(near, scores[0], lowest)
    above = bins == n_bins + 1
    if above.any():
        near = (column[above] - edges[-1]) <= (edges[-1] - edges[-2]) * tol
        out[above] = np.where(near, scores[n_bins - 1], lowest)
    return out


# 2,048 rows of 87 inputs (1.4 MB) stay in a core's cache through LODA's 50 projections;
# 8,192 rows did not (1M rows: about a third more CPU)
LODA_BLOCK_ROWS = 2048
# rows of a part the unsupervised layer prepares and scores at once (`detector_scores`):
# a multiple of LODA_BLOCK_ROWS, so LODA's blocks fall where they fall on a whole matrix
SCORE_BLOCK_ROWS = 32 * LODA_BLOCK_ROWS


def loda_scores(detector, x: np.ndarray) -> np.ndarray:
    """What pyod's ``LODA.decision_function(x)`` returns, bit for bit, block by block.

    pyod projects every row on one random direction at a time (a pass over the whole
    matrix per projection); here each block of rows, small enough to stay in cache, goes
    through every projection. Each projection and each row's sum are computed by the same
    operations in the same order, so the scores are equal: a block keeps the memory order
    of ``x`` (row- or column-major), so its projection runs the same BLAS kernel. BLAS runs
    on one thread here: threads started and joined for every small product cost far more
    than they save (several times the whole work on a busy machine)."""
    from threadpoolctl import threadpool_limits

    x = np.asarray(x, dtype=np.float64)
    same_order = np.asfortranarray if x.flags.f_contiguous and not x.flags.c_contiguous \
        else np.ascontiguousarray
    cuts, n_bins = detector.n_random_cuts, int(detector.n_bins)
    limits = detector.limits_[:, :n_bins - 1]
    scores = np.zeros([x.shape[0], 1])
    with threadpool_limits(1, user_api="blas"):
        for start in range(0, x.shape[0], LODA_BLOCK_ROWS):
            block = same_order(x[start:start + LODA_BLOCK_ROWS])
            out = scores[start:start + LODA_BLOCK_ROWS, 0]
            for i in range(cuts):
                projected = detector.projections_[i, :].dot(block.T)
                bins = np.searchsorted(limits[i], projected, side="left")
                out += -detector.weights[i] * np.log(detector.histograms_[i, bins])
    scores /= cuts
    return scores.ravel()


def isolation_trees(detector):
    """pyod IForest ``detector``'s trees as a LightGBM model scored through lignum
    (`detector.models.trees.TreePredictor`), with the denominator of its path lengths;
    None where the trees cannot be written so (features subsampled per tree, a tree of
    a single node, scikit-learn's fitted attributes not where 1.9 keeps them).

    scikit-learn scores a row by adding, tree after tree from zero, ``path length to its
    leaf + average path length of the leaf's samples - 1``: a value per leaf, summed in
    tree order. A LightGBM tree with those leaf values and the same splits (``x <=
    threshold`` goes left in both; the thresholds are the same doubles) gives each
    tree's value, and lignum sums the trees from zero in the same order, so the depths
    are the same bits (`iforest_scores`). About half the CPU of scikit-learn's per-tree
    ``apply``."""
    try:
        from sklearn.ensemble._iforest import _average_path_length

        forest = detector.detector_
        estimators = forest.estimators_
        path_lengths = forest._decision_path_lengths
        leaf_lengths = forest._average_path_length_per_tree
        n_features = int(forest.n_features_in_)
        subsampled = forest._max_features != n_features
        denominator = len(estimators) * _average_path_length([forest._max_samples])
    except (ImportError, AttributeError):
        return None
    if subsampled or not estimators or any(e.tree_.node_count < 3 for e in estimators):
        return None
    def line(key, items):
        return f"{key}=" + " ".join(items)

    texts = []
    for i, estimator in enumerate(estimators):
        tree = estimator.tree_
        left, right = tree.children_left, tree.children_right
        internal, leaves = np.flatnonzero(left != -1), np.flatnonzero(left == -1)
        # LightGBM numbers split nodes 0.. (the root first) and leaves as ~0, ~1, ...
        index = np.empty(tree.node_count, dtype=np.int64)
        index[internal] = np.arange(len(internal))
        index[leaves] = ~np.arange(len(leaves))
        # the sum scikit-learn adds per tree, `_parallel_compute_tree_depths`
        values = path_lengths[i][leaves] + leaf_lengths[i][leaves] - 1.0
        zeros, ones = ["0"] * len(internal), ["1"] * len(leaves)
        texts.append("\n".join([
            f"Tree={i}", f"num_leaves={len(leaves)}", "num_cat=0",
            line("split_feature", (str(int(f)) for f in tree.feature[internal])),
            line("split_gain", zeros),
            line("threshold", (repr(float(t)) for t in tree.threshold[internal])),
            line("decision_type", zeros),  # numerical, x <= threshold left, no missing type
            line("left_child", (str(int(index[c])) for c in left[internal])),
            line("right_child", (str(int(index[c])) for c in right[internal])),
            line("leaf_value", (repr(float(v)) for v in values)),
            line("leaf_weight", ones), line("leaf_count", ones),
            line("internal_value", zeros), line("internal_weight", ["1"] * len(internal)),
            line("internal_count", ["1"] * len(internal)),
            "is_linear=0", "shrinkage=1", "", ""]) + "\n")
    text = "\n".join([
        "tree", "version=v4", "num_class=1", "num_tree_per_iteration=1", "label_index=0",
        f"max_feature_idx={n_features - 1}", "objective=regression",
        line("feature_names", (f"x{j}" for j in range(n_features))),
        line("feature_infos", ["none"] * n_features),
        line("tree_sizes", (str(len(t)) for t in texts)), "", ""]) + "".join(texts) \
        + "end of trees\n\nparameters:\nend of parameters\n\npandas_categorical:null\n"
    import lightgbm

    from detector.models.trees import TreePredictor

    # LightGBM parses the text first: a model it would not read is never scored
    return TreePredictor(lightgbm.Booster(model_str=text)), denominator


def iforest_scores(detector, trees, x: np.ndarray) -> np.ndarray:
    """What pyod's ``IForest.decision_function(x)`` returns, bit for bit: through
    ``trees`` (`isolation_trees`) when given, else scikit-learn's own trees.

    Either way the matrix is cast to float32 row by row, the cast scikit-learn makes
    itself (a column-major matrix made every split a read from another column); lignum
    reads the float32 values widened back to float64, exactly the values scikit-learn
    compares with its double thresholds. A matrix with NaN or infinities goes to pyod,
    which refuses it as it always did."""
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    if trees is None or not np.isfinite(x32).all():
        return detector.decision_function(x32)
    predictor, denominator = trees
    depths = predictor.predict_matrix(x32.astype(np.float64), raw_score=True)
    # scikit-learn's `_compute_score_samples`, `score_samples` (negated) and
    # `decision_function` (less the offset), then pyod's `invert_order`
    scores = 2 ** (-np.divide(depths, denominator, out=np.ones_like(depths),
                              where=denominator != 0))
    return (-scores - detector.detector_.offset_) * -1


def _decision_function(detector, x: np.ndarray, trees=None) -> np.ndarray:
    """A fitted detector's raw scores; HBOS and LODA with a fixed bin count through
    `hbos_scores` and `loda_scores`, IForest through `iforest_scores` (with ``trees``,
    its `isolation_trees`, when given): the same scores, faster."""
    from pyod.models.hbos import HBOS
    from pyod.models.iforest import IForest
    from pyod.models.loda import LODA

    if isinstance(detector, HBOS) and not isinstance(detector.n_bins, str):
        return hbos_scores(detector, x)
    if isinstance(detector, LODA) and not isinstance(detector.n_bins, str):
        return loda_scores(detector, x)
    if isinstance(detector, IForest):
        return iforest_scores(detector, trees, x)
    return detector.decision_function(x)


class UnsupervisedEnsemble(RiskModel):
    """Mean training-percentile of several pyod detectors over the model features."""

    def __init__(self, features: list[str], detectors: tuple[str, ...] = _DEFAULTS.detectors,
                 max_fit_rows: int = _DEFAULTS.max_fit_rows, random_state: int = 0):
        self.features = features
        self.detectors = detectors
        self.max_fit_rows = max_fit_rows
        self.random_state = random_state

    def _prepare(self, frame: pl.DataFrame) -> np.ndarray:
        """The model inputs as a column-major float64 matrix, nulls filled with the
        training medians, centred and scaled: column by column, each while it is in cache
        (the same operations as on the whole matrix at once, without its temporaries)."""
        x = feature_matrix(frame, self.features)
        for j in range(x.shape[1]):
            column = x[:, j]
            np.copyto(column, self.fill_values_[j], where=np.isnan(column))
            column -= self.center_[j]
            column /= self.scale_[j]
        return x

    def fit_rows(self, n_rows: int) -> np.ndarray | None:
        """Positions of the rows `fit` uses from a frame of ``n_rows`` (None: all of them).

        A sample describes "normal" as well as the whole; chunked scoring uses this to
        gather the same rows without holding the whole frame."""
        if n_rows <= self.max_fit_rows:
            return None
        rng = np.random.default_rng(self.random_state)
        return np.sort(rng.choice(n_rows, self.max_fit_rows, replace=False))

    def fit(self, frame: pl.DataFrame, labels: np.ndarray | None = None):
        x = feature_matrix(frame, self.features)
        rows = self.fit_rows(len(x))
        # one memory layout whether sampled or not: the reductions below then give the
        # same bits for the same rows however they were gathered (chunked scoring)
        x = np.ascontiguousarray(x if rows is None else x[rows])
        with warnings.catch_warnings():  # a column with no values at all is expected
            warnings.simplefilter("ignore", RuntimeWarning)
            fill = np.nanmedian(x, axis=0)
        self.fill_values_ = np.where(np.isnan(fill), 0.0, fill)
        nan = np.isnan(x)
        x[nan] = np.take(self.fill_values_, np.nonzero(nan)[1])
        self.center_ = np.median(x, axis=0)
        spread = np.quantile(x, 0.95, axis=0) - np.quantile(x, 0.05, axis=0)
        self.scale_ = np.where(spread > 0, spread, np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0))
        x = (x - self.center_) / self.scale_
        self.detectors_ = {}
        self.train_scores_ = {}
        for name in self.detectors:
            det = _make(name, self.random_state).fit(x)
            self.detectors_[name] = det
            self.train_scores_[name] = np.sort(det.decision_scores_.astype(np.float64))
        return self

    def detector_scores(self, frame: pl.DataFrame) -> dict[str, np.ndarray]:
        """Each detector's score as its percentile among the training scores (0..1)."""
        return {name: np.searchsorted(self.train_scores_[name], raw, side="right")
                / len(self.train_scores_[name])
                for name, raw in self.raw_scores(frame).items()}

    def raw_scores(self, frame: pl.DataFrame) -> dict[str, np.ndarray]:
        """Each detector's own score (`_decision_function`) of the prepared rows.

        Block by block of `SCORE_BLOCK_ROWS` rows: a block's matrix is prepared and every
        detector scores it, so no matrix of the whole part exists (0.5 GiB for a million
        rows, and IForest's float32 copy of it). Every detector scores each row on its
        own, so the blocks give the scores the whole matrix gives. Large parts spread
        their blocks over the cores."""
        names = list(self.detectors_)
        if frame.height == 0:
            return {name: np.zeros(0) for name in names}
        from threadpoolctl import threadpool_limits

        trees = self._isolation_trees()

        def block(start: int) -> list[np.ndarray]:
            x = self._prepare(frame.slice(start, SCORE_BLOCK_ROWS))
            return [_decision_function(self.detectors_[name], x, trees.get(name))
                    for name in names]

        starts = range(0, frame.height, SCORE_BLOCK_ROWS)
        workers = min(len(starts), os.cpu_count() or 1)
        # BLAS on one thread for the whole layer (LODA's products): limits set and
        # restored by several threads at once would race
        with threadpool_limits(1, user_api="blas"):
            if workers < 2 or frame.height < PARALLEL_MIN_ROWS:
                raw = [block(start) for start in starts]
            else:
                # numpy and the compiled tree code release the GIL; blocks come back in order
                with ThreadPoolExecutor(workers, thread_name_prefix="detector-unsupervised"
                                        ) as pool:
                    raw = list(pool.map(block, starts))
        return {name: np.concatenate([r[k] for r in raw]) for k, name in enumerate(names)}

    def _isolation_trees(self) -> dict:
        """`isolation_trees` of each IForest detector, made once per fitted set of
        detectors and left out of pickles (a Dask worker makes its own)."""
        from pyod.models.iforest import IForest

        cached = self.__dict__.get("_trees_cache")
        if cached is None or cached[0] is not self.detectors_:
            trees = {name: isolation_trees(det) for name, det in self.detectors_.items()
                     if isinstance(det, IForest)}
            cached = (self.detectors_, trees)
            self.__dict__["_trees_cache"] = cached
        return cached[1]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_trees_cache", None)
        return state

    def decision_function(self, frame: pl.DataFrame) -> np.ndarray:
        scores = self.detector_scores(frame)
        return np.mean(np.vstack(list(scores.values())), axis=0) if scores else np.zeros(0)

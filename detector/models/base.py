"""One small interface for every risk model.

A model is ``fit`` + ``decision_function``: higher score = riskier, stated once here.
``predict`` (flag the top share) is derived from it, as in pyod's BaseDetector.
"""

from __future__ import annotations

import numpy as np
import polars as pl


class RiskModel:
    """Base class: subclasses implement ``fit`` and ``decision_function``.

    ``__init__`` of a subclass only stores parameters; anything learned in ``fit``
    is an attribute ending in ``_``.
    """

    def fit(self, frame: pl.DataFrame, labels: np.ndarray | None = None) -> "RiskModel":
        raise NotImplementedError

    def decision_function(self, frame: pl.DataFrame) -> np.ndarray:
        """Risk of each row of ``frame``; higher = riskier."""
        raise NotImplementedError

    def predict(self, frame: pl.DataFrame, share: float = 0.01) -> np.ndarray:
        """1 for the riskiest ``share`` of rows, 0 for the rest."""
        scores = self.decision_function(frame)
        if len(scores) == 0:
            return np.zeros(0, dtype=np.int8)
        cut = np.quantile(scores, 1.0 - share)
        return (scores >= cut).astype(np.int8)


def feature_matrix(frame: pl.DataFrame, columns: list[str]) -> np.ndarray:
    """The model inputs as a float matrix: booleans as 0/1, nulls as NaN.

    Refuses a frame that lacks any of ``columns``: a model must see exactly the
    features it was fitted on.
    """
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"feature frame lacks {len(missing)} model input(s): {missing[:8]}")
    # column by column into one column-major matrix (the layout DataFrame.to_numpy gives):
    # casting every column first and then converting held the matrix twice. A number
    # column (nulls as NaN) or a boolean one without nulls is handed over as it is and
    # converted as it is copied in, the same conversion as polars' cast to Float64
    # without its two intermediate copies; the rest (booleans with nulls) is cast
    out = np.empty((frame.height, len(columns)), dtype=np.float64, order="F")
    for j, name in enumerate(columns):
        series = frame[name]
        dtype = series.dtype
        if (dtype.is_numeric() and not dtype.is_decimal()) \
                or (dtype == pl.Boolean and series.null_count() == 0):
            out[:, j] = series.to_numpy()
        else:
            out[:, j] = series.cast(pl.Float64).fill_null(np.nan).to_numpy()
    return out

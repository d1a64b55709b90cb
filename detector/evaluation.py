"""Detection-quality metrics at an analyst's review capacity.

Used by training (metrics logged to MLflow) and by the evaluation benchmark, so the
two report the same numbers the same way.
"""

from __future__ import annotations

import numpy as np
import polars as pl


def _order(scores: np.ndarray) -> np.ndarray:
    # Stable descending order: ties keep input order, so results are reproducible.
    return np.argsort(-scores, kind="stable")


def average_precision(y: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve (average precision); NaN without positives."""
    y = np.asarray(y, dtype=np.float64)
    if y.sum() == 0:
        return float("nan")
    hits = y[_order(scores)]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def at_capacity(y: np.ndarray, scores: np.ndarray, share: float) -> tuple[float, float]:
    """(precision, recall) among the top ``share`` of records by score."""
    y = np.asarray(y, dtype=np.float64)
    k = max(1, int(np.ceil(share * len(y)))) if len(y) else 0
    if k == 0:
        return float("nan"), float("nan")
    top = y[_order(scores)[:k]]
    recall = float(top.sum() / y.sum()) if y.sum() else float("nan")
    return float(top.mean()), recall


def brier(y: np.ndarray, probability: np.ndarray) -> float:
    return float(np.mean((np.asarray(probability) - np.asarray(y)) ** 2)) if len(y) else float("nan")


def reliability_table(y: np.ndarray, probability: np.ndarray, bands: int = 10) -> pl.DataFrame:
    """Predicted vs observed rate per score band (equal-width bands over 0..1)."""
    df = pl.DataFrame({"p": np.asarray(probability, np.float64), "y": np.asarray(y, np.float64)})
    edges = np.linspace(0, 1, bands + 1)
    df = df.with_columns(band=pl.col("p").mul(bands).floor().clip(0, bands - 1).cast(pl.Int32))
    out = (df.group_by("band").agg(records=pl.len(), mean_predicted=pl.col("p").mean(),
                                   observed_rate=pl.col("y").mean())
           .sort("band"))
    return out.with_columns(
        band_low=pl.col("band").map_elements(lambda b: float(edges[b]), return_dtype=pl.Float64),
        band_high=pl.col("band").map_elements(lambda b: float(edges[b + 1]),
                                              return_dtype=pl.Float64),
    ).select("band_low", "band_high", "records", "mean_predicted", "observed_rate")


def typology_recall(y: np.ndarray, scores: np.ndarray, typology: list[str | None],
                    share: float) -> dict[str, float]:
    """Recall at the top ``share`` for the positives of each typology."""
    y = np.asarray(y)
    k = max(1, int(np.ceil(share * len(y)))) if len(y) else 0
    flagged = np.zeros(len(y), dtype=bool)
    flagged[_order(scores)[:k]] = True
    typ = np.array([t or "unspecified" for t in typology], dtype=object)
    out = {}
    for t in sorted(set(typ[y == 1])):
        mask = (y == 1) & (typ == t)
        out[t] = float(flagged[mask].mean())
    return out


def evaluate(y: np.ndarray, scores: np.ndarray, typology: list[str | None] | None = None,
             probability: bool = True) -> dict[str, float]:
    """The standard metric set: PR-AUC, precision/recall at 1% and 5%, Brier, per typology."""
    p1, r1 = at_capacity(y, scores, 0.01)
    p5, r5 = at_capacity(y, scores, 0.05)
    metrics = {
        "records": float(len(y)),
        "positives": float(np.sum(y)),
        "pr_auc": average_precision(y, scores),
        "precision_at_1pct": p1, "recall_at_1pct": r1,
        "precision_at_5pct": p5, "recall_at_5pct": r5,
    }
    if probability:
        metrics["brier"] = brier(y, scores)
    if typology is not None:
        for t, r in typology_recall(y, scores, typology, 0.05).items():
            metrics[f"recall_at_5pct_{t}"] = r
    return metrics


def capacity_ceilings(records: int, positives: int, shares: tuple[float, ...] = (0.01, 0.05)
                      ) -> dict[str, float]:
    """The best precision and recall the top ``share`` of ``records`` can reach.

    With k = ceil(share x records) records reviewed, recall cannot exceed k / positives
    and precision cannot exceed positives / k: on a small held-out slice a perfect model
    can score recall@5% 0.36, and that figure says nothing about the model.
    """
    out = {}
    for share in shares:
        k = max(1, int(np.ceil(share * records))) if records else 0
        tag = f"{share * 100:g}pct"
        out[f"precision_at_{tag}.ceiling"] = min(1.0, positives / k) if k else float("nan")
        out[f"recall_at_{tag}.ceiling"] = min(1.0, k / positives) if positives else float("nan")
    return out


MIN_POSITIVES = 30  # fewer held-out positives than this: the metrics cannot rank models


def held_out_warnings(metrics: dict, what: str = "the held-out slice") -> list[str]:
    """Plain-language warnings about metrics that cannot mean much (few positives, ceilings
    below 1)."""
    out = []
    positives, records = int(metrics.get("positives", 0)), int(metrics.get("records", 0))
    if positives < MIN_POSITIVES:
        out.append(f"{what} holds {positives} confirmed diversion(s) among {records} records "
                   f"(fewer than {MIN_POSITIVES}): its metrics cannot tell similar models apart")
    for key, value in sorted(metrics.items()):
        if key.endswith(".ceiling") and value == value and value < 1:
            metric = key[:-len(".ceiling")]
            out.append(f"{metric} cannot exceed {value:.3f} on {what} ({records} records, "
                       f"{positives} positives): read {metric} "
                       f"{metrics.get(metric, float('nan')):.3f} against that ceiling")
    return out

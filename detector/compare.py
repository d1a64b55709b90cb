"""`detector compare` and the promotion gate: two models on the same labelled records.

Which records: by default the labelled records that neither model learned from. Each
model stores its training cut-off (`detector.training.training_cutoff`): the latest
record date and the latest decision date among the labelled records it was fitted and
calibrated on. A record is unseen by a model when it is dated after the first or
decided after the second; both models must not have seen it. ``all_labels`` uses every
labelled record of the dataset instead (and says the figures may flatter a model that
learned from them).

Figures: PR-AUC (tied scores as one threshold) and precision/recall at a review capacity (a share or count of the
evaluated records, default 5%, like the held-out metrics of `detector train`), recall at
that capacity per scheme (typology), each with a bootstrap 90% interval; and the paired
bootstrap difference (B - A), which decides:

- fewer than ``MIN_POSITIVES`` confirmed diversions: too few to decide;
- B worse beyond noise: the 90% interval of B - A lies below 0 for PR-AUC or for
  recall at the capacity;
- B better beyond noise: the interval for PR-AUC lies above 0 and recall at the
  capacity is not worse beyond noise;
- otherwise: no difference beyond noise (the intervals overlap).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl

from detector.errors import InputError
from detector.evaluation import MIN_POSITIVES

DEFAULT_CAPACITY = "5%"
DEFAULT_BOOTSTRAP = 1000
INTERVAL = (5.0, 95.0)  # percentiles of the bootstrap: a 90% interval

TOO_FEW = "too few to decide"
WORSE = "B worse beyond noise"
BETTER = "B better beyond noise"
NO_DIFFERENCE = "no difference beyond noise"


@dataclass
class Compared:
    """A model as compared: what it is and what it learned from."""

    ref: str
    label: str
    version: int | None
    run_id: str | None
    records_through: date | None
    decided_through: date | None


@dataclass
class Comparison:
    a: Compared
    b: Compared
    dataset: str
    selection: str  # which labelled records, in words
    records: int
    positives: int
    capacity: int  # records reviewed at the capacity
    n_boot: int
    figures: pl.DataFrame  # metric, a, a_low, a_high, b, b_low, b_high, diff, diff_low, diff_high
    disagreements: pl.DataFrame
    verdict: str
    reasons: list[str] = field(default_factory=list)
    run_id: str | None = None

    def figure(self, metric: str) -> dict:
        rows = self.figures.filter(pl.col("metric") == metric).to_dicts()
        if not rows:
            raise KeyError(metric)
        return rows[0]

    def text(self) -> str:
        """The comparison as printed by `detector compare`."""
        lines = [
            f"A = {self.a.label}  (learned from records through {self.a.records_through}, "
            f"decisions through {self.a.decided_through})",
            f"B = {self.b.label}  (learned from records through {self.b.records_through}, "
            f"decisions through {self.b.decided_through})",
            f"records: {self.selection}: {self.records} labelled records, {self.positives} "
            f"confirmed diversions; capacity {self.capacity} records (recall at capacity "
            f"cannot exceed {min(1.0, self.capacity / max(self.positives, 1)):.3f}); "
            f"{self.n_boot} bootstrap resamples, 90% intervals",
            "",
            f"{'metric':<40} {'A':>22} {'B':>22} {'B - A':>24}",
        ]

        def cell(v, lo, hi, signed=False):
            if v is None or v != v:
                return "-"
            fmt = "+.3f" if signed else ".3f"
            return f"{v:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"
        for r in self.figures.iter_rows(named=True):
            lines.append(f"{r['metric']:<40} {cell(r['a'], r['a_low'], r['a_high']):>22} "
                         f"{cell(r['b'], r['b_low'], r['b_high']):>22} "
                         f"{cell(r['diff'], r['diff_low'], r['diff_high'], True):>24}")
        lines += ["", f"verdict: {self.verdict}"] + [f"  {r}" for r in self.reasons]
        if self.disagreements.height:
            lines += ["", "records the two models disagree on most (risk rank among the "
                          "evaluated records, 1 = riskiest):",
                      f"  {'kind':<8} {'record_id':<22} {'label':>5}  {'typology':<20} "
                      f"{'risk A':>7} {'rank A':>6} {'risk B':>7} {'rank B':>6}"]
            for r in self.disagreements.iter_rows(named=True):
                lines.append(f"  {r['record_kind']:<8} {r['record_id']:<22} {r['label']:>5}  "
                             f"{(r['typology'] or '-')[:20]:<20} {r['risk_a']:7.3f} "
                             f"{r['rank_a']:>6} {r['risk_b']:7.3f} {r['rank_b']:>6}")
        if self.run_id:
            lines += ["", f"logged to MLflow: run {self.run_id}"]
        return "\n".join(lines)


def _date(value) -> date | None:
    if value in (None, "", "None"):
        return None
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def _cutoff(bundle) -> tuple[date | None, date | None]:
    """(records_through, decided_through) of a bundle; older bundles: the end of their
    calibration slice, decision dates unknown."""
    provenance = bundle.provenance or {}
    cut = provenance.get("training_cutoff")
    if cut:
        return _date(cut.get("records_through")), _date(cut.get("decided_through"))
    slices = provenance.get("slices") or {}
    return _date((slices.get("calibrate") or {}).get("to")), None


def unseen_by(records_through: date | None, decided_through: date | None) -> pl.Expr:
    """Labelled records a model with this cut-off did not learn from."""
    if records_through is None:
        raise InputError("the model stores no training cut-off: compare it with --all-labels")
    unseen = pl.col("record_date") > pl.lit(records_through)
    if decided_through is not None:
        unseen = unseen | (pl.col("decided_on") > pl.lit(decided_through)).fill_null(False)
    return unseen


def _ranks(scores: np.ndarray) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty(len(scores), dtype=np.int64)
    ranks[order] = np.arange(1, len(scores) + 1)
    return ranks


def tied_average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision with tied scores taken as one threshold (as scikit-learn does).

    A model that gives many records the same score (a weak one does) would otherwise get
    a PR-AUC that depends on the order of the tied records, which resampling shuffles.
    """
    if y.sum() == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    ys, ss = y[order], s[order]
    tp = np.cumsum(ys)
    last = np.r_[np.flatnonzero(np.diff(ss) != 0), len(ss) - 1]  # end of each tie block
    precision = tp[last] / (last + 1)
    recall = tp[last] / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _metrics(y: np.ndarray, s: np.ndarray, typ: np.ndarray, k: int,
             schemes: list[str]) -> list[float]:
    order = np.argsort(-s, kind="stable")
    top = np.zeros(len(y), dtype=bool)
    top[order[:k]] = True
    positives = y.sum()
    out = [tied_average_precision(y, s),
           float(y[top].mean()) if k else float("nan"),
           float(y[top].sum() / positives) if positives else float("nan")]
    for t in schemes:
        mask = (y == 1) & (typ == t)
        out.append(float(top[mask].mean()) if mask.any() else float("nan"))
    return out


def bootstrap_figures(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray,
                      typology: np.ndarray, capacity: int, n_boot: int = DEFAULT_BOOTSTRAP,
                      seed: int = 0) -> pl.DataFrame:
    """Each metric for A and B with percentile bootstrap intervals, and the paired
    difference B - A (same resampled records for both)."""
    schemes = sorted({t for t, label in zip(typology, y) if label == 1})
    names = ["pr_auc", "precision_at_capacity", "recall_at_capacity",
             *[f"recall_at_capacity_{t}" for t in schemes]]
    share = capacity / len(y)
    point_a = _metrics(y, score_a, typology, capacity, schemes)
    point_b = _metrics(y, score_b, typology, capacity, schemes)
    rng = np.random.default_rng(seed)
    boot_a = np.full((n_boot, len(names)), np.nan)
    boot_b = np.full((n_boot, len(names)), np.nan)
    n = len(y)
    for i in range(n_boot):
        idx = rng.integers(0, n, n)
        k = max(1, int(np.ceil(share * n - 1e-9)))
        boot_a[i] = _metrics(y[idx], score_a[idx], typology[idx], k, schemes)
        boot_b[i] = _metrics(y[idx], score_b[idx], typology[idx], k, schemes)
    diff = boot_b - boot_a

    def interval(values: np.ndarray) -> tuple[float, float]:
        values = values[~np.isnan(values)]
        if not len(values):
            return float("nan"), float("nan")
        lo, hi = np.percentile(values, INTERVAL)
        return float(lo), float(hi)
    rows = []
    for j, name in enumerate(names):
        a_lo, a_hi = interval(boot_a[:, j])
        b_lo, b_hi = interval(boot_b[:, j])
        d_lo, d_hi = interval(diff[:, j])
        rows.append({"metric": name, "a": point_a[j], "a_low": a_lo, "a_high": a_hi,
                     "b": point_b[j], "b_low": b_lo, "b_high": b_hi,
                     "diff": point_b[j] - point_a[j], "diff_low": d_lo, "diff_high": d_hi})
    return pl.DataFrame(rows)


def verdict(figures: pl.DataFrame, positives: int) -> tuple[str, list[str]]:
    """The decision and why, in words (module docstring)."""
    by = {r["metric"]: r for r in figures.iter_rows(named=True)}
    pr, rec = by["pr_auc"], by["recall_at_capacity"]
    said = (f"PR-AUC B - A {pr['diff']:+.3f} [{pr['diff_low']:+.3f}, {pr['diff_high']:+.3f}]; "
            f"recall at capacity B - A {rec['diff']:+.3f} [{rec['diff_low']:+.3f}, "
            f"{rec['diff_high']:+.3f}]")
    overlap = not (pr["b_low"] > pr["a_high"] or pr["a_low"] > pr["b_high"])
    if positives < MIN_POSITIVES:
        return TOO_FEW, [f"only {positives} confirmed diversions among the evaluated records "
                         f"(at least {MIN_POSITIVES} are needed to tell models apart)", said]
    if pr["diff_high"] < 0 or rec["diff_high"] < 0:
        worse = [m for m, r in (("PR-AUC", pr), ("recall at capacity", rec))
                 if r["diff_high"] < 0]
        return WORSE, [f"B is worse than A beyond noise on {' and '.join(worse)} (the 90% "
                       f"interval of B - A lies below 0)", said]
    if pr["diff_low"] > 0:
        return BETTER, ["B's PR-AUC is higher beyond noise (the 90% interval of B - A lies "
                        "above 0) and recall at capacity is not worse beyond noise", said]
    return NO_DIFFERENCE, [
        "the 90% interval of B - A includes 0"
        + ("; the two PR-AUC intervals overlap" if overlap else ""), said]


def _labelled_scores(batch, bundle, labels: pl.DataFrame) -> np.ndarray:
    """The model's risk for the labelled records (in ``labels`` order), features built
    with the model's own learned statistics over the whole batch."""
    from detector.batch import feature_frame
    from features.stats import FeatureStats

    frame = feature_frame(batch, FeatureStats.from_dict(bundle.feature_stats))
    frame = labels.select("record_kind", "record_id").join(
        frame, on=["record_kind", "record_id"], how="left", maintain_order="left")
    return np.asarray(bundle.model.decision_function(frame), dtype=np.float64)


def compare_models(dataset_dir: str | Path, ref_a: str, ref_b: str,
                   history_dirs: list[str | Path] = (), *, name: str | None = None,
                   capacity: str = DEFAULT_CAPACITY, n_boot: int = DEFAULT_BOOTSTRAP,
                   all_labels: bool = False, screening_list: str | Path | None = None,
                   seed: int = 0, log_to_mlflow: bool = True, disagreements: int = 10,
                   log: Callable[[str], None] = lambda _: None) -> Comparison:
    """Score the same labelled records with models A and B and compare them."""
    from detector import tracking
    from detector.batch import load_batch
    from detector.errors import UsageError
    from detector.report import parse_capacity
    from detector.scoring import load_bundle_dir

    name = name or tracking.DEFAULT_MODEL_NAME
    if n_boot < 100:
        raise UsageError(f"--bootstrap {n_boot}: expected at least 100 resamples")
    models = []
    for ref in (ref_a, ref_b):
        resolved = tracking.resolve_reference(ref, name)
        bundle = load_bundle_dir(resolved.bundle_dir)
        models.append((Compared(ref, resolved.label, resolved.version, resolved.run_id,
                                *_cutoff(bundle)), bundle))
    (a, bundle_a), (b, bundle_b) = models
    log(f"reading {dataset_dir}")
    batch = load_batch(dataset_dir, history_dirs, screening_list, log=log)
    keys = batch.batch_keys()
    record_dates = pl.concat([
        batch.dataset.shipments.select(pl.lit("shipment").alias("record_kind"),
                                       pl.col("shipment_id").alias("record_id"),
                                       pl.col("export_date").alias("record_date")),
        batch.dataset.leases.select(pl.lit("lease").alias("record_kind"),
                                    pl.col("lease_id").alias("record_id"),
                                    pl.col("start_date").alias("record_date")),
    ])
    from detector.training import stored_labels

    dataset_labels, _ = stored_labels(batch, log)  # the analysts' stored decisions count too
    labels = (dataset_labels.select("record_kind", "record_id", "label", "typology",
                                    "decided_on")
              .join(keys, on=["record_kind", "record_id"], how="semi")
              .join(record_dates, on=["record_kind", "record_id"], how="left")
              .sort(["record_kind", "record_id"]))
    if all_labels:
        selection = ("every labelled record of the dataset (--all-labels: a model may have "
                     "learned from some of them)")
    else:
        labels = labels.filter(unseen_by(a.records_through, a.decided_through)
                               & unseen_by(b.records_through, b.decided_through))
        selection = ("labelled records neither model learned from (dated after "
                     f"{max(a.records_through, b.records_through)} or decided after both "
                     "models' latest training decisions)")
    if labels.height == 0 or labels["label"].n_unique() < 2:
        raise InputError(
            f"{dataset_dir}: no labelled records to compare on ({selection}: "
            f"{labels.height} record(s), label values {sorted(labels['label'].unique())}); "
            "give a dataset with decisions newer than both models, or --all-labels")
    k = parse_capacity(capacity, labels.height)
    log(f"scoring {labels.height} labelled records with {a.label} and {b.label}")
    score_a = _labelled_scores(batch, bundle_a, labels)
    score_b = _labelled_scores(batch, bundle_b, labels)
    y = labels["label"].to_numpy().astype(np.int64)
    typology = np.array([t or "unspecified" for t in labels["typology"].to_list()], dtype=object)
    log(f"bootstrapping {n_boot} resamples")
    figures = bootstrap_figures(y, score_a, score_b, typology, min(k, labels.height), n_boot,
                                seed)
    decision, reasons = verdict(figures, int(y.sum()))

    rank_a, rank_b = _ranks(score_a), _ranks(score_b)
    table = labels.select("record_kind", "record_id", "label", "typology").with_columns(
        risk_a=pl.Series(score_a), rank_a=pl.Series(rank_a),
        risk_b=pl.Series(score_b), rank_b=pl.Series(rank_b),
        rank_gap=pl.Series(np.abs(rank_a - rank_b)))
    top = table.filter(pl.col("rank_gap") > 0).sort(
        ["rank_gap", "record_kind", "record_id"], descending=[True, False, False]
    ).head(disagreements)
    comparison = Comparison(a, b, str(Path(dataset_dir).resolve()), selection, labels.height,
                            int(y.sum()), min(k, labels.height), n_boot, figures, top,
                            decision, reasons)
    if log_to_mlflow:
        comparison.run_id = log_comparison(comparison, table, name)
    return comparison


def log_comparison(comparison: Comparison, table: pl.DataFrame, name: str) -> str:
    from detector import tracking

    metrics = {"records": comparison.records, "positives": comparison.positives,
               "capacity": comparison.capacity}
    for r in comparison.figures.iter_rows(named=True):
        for key in ("a", "a_low", "a_high", "b", "b_low", "b_high", "diff", "diff_low",
                    "diff_high"):
            metrics[f"{r['metric']}.{key}"] = r[key]
    return tracking.log_comparison(
        experiment=f"{name}-comparisons",
        params={"model_a": comparison.a.label, "model_b": comparison.b.label,
                "dataset": comparison.dataset, "records": comparison.selection,
                "bootstrap": comparison.n_boot},
        metrics=metrics,
        tags={"verdict": comparison.verdict, "why": " ".join(comparison.reasons),
              "model_a_run": comparison.a.run_id or "", "model_b_run": comparison.b.run_id or ""},
        tables={"figures": comparison.figures, "scores": table,
                "disagreements": comparison.disagreements})


class PromotionRefused(InputError):
    """The challenger is worse than the champion beyond noise (exit 1)."""


@dataclass
class Promotion:
    version: int
    previous: int | None
    how: str  # compared, forced, rollback, first, unchanged
    comparison: Comparison | None = None
    note: str = ""


def promote(name: str, version: int | None = None, run_id: str | None = None, *,
            data: str | Path | None = None, history_dirs: list[str | Path] = (),
            force: bool = False, reason: str | None = None, rollback: bool = False,
            capacity: str = DEFAULT_CAPACITY, n_boot: int = DEFAULT_BOOTSTRAP,
            screening_list: str | Path | None = None,
            log: Callable[[str], None] = lambda _: None) -> Promotion:
    """Make a version champion after comparing it with the current champion.

    The comparison runs on ``data`` (default: the dataset the challenger was trained on,
    whose held-out latest slice neither model learned from when the champion is older).
    A challenger worse beyond noise is refused (`PromotionRefused`); too few records to
    decide, or no difference beyond noise, promote and say so. ``force`` promotes without
    comparing; ``rollback`` points the champion back at the previous one, and so does
    naming a version that was champion before (no comparison: it served already). Every
    promotion is recorded in MLflow (`tracking.promote`).
    """
    from detector import tracking
    from detector.errors import UsageError

    current = tracking.champion_version(name)
    if rollback:
        if version is not None or run_id is not None:
            raise UsageError("--rollback takes no --version or --run")
        history = tracking.champion_history(name)
        if len(history) < 2:
            raise InputError(f"{name!r}: no earlier champion to roll back to "
                             f"(champion history: {history})")
        target = history[-2]
        tracking.promote(name, target, record={"how": "rollback", "reason": reason or ""})
        return Promotion(target, current, "rollback")
    target = tracking.find_version(name, version, run_id)
    if current is not None and current != target and not force \
            and target in tracking.champion_history(name):
        # it served as champion before: going back to it is a rollback, not a new model
        tracking.promote(name, target, record={"how": "rollback", "reason": reason or ""})
        return Promotion(target, current, "rollback to an earlier champion")
    if current is None or current == target:
        how = "first" if current is None else "unchanged"
        tracking.promote(name, target, record={"how": how, "reason": reason or ""})
        return Promotion(target, current, how)
    if force:
        tracking.promote(name, target, record={"how": "forced", "forced": True,
                                               "reason": reason or "no reason given"})
        return Promotion(target, current, "forced",
                         note="promoted with --force, without comparing (logged)")
    if data is None:
        challenger = tracking.resolve_reference(str(target), name)
        from detector.scoring import load_bundle_dir

        provenance = load_bundle_dir(challenger.bundle_dir).provenance or {}
        data = provenance.get("dataset")
        history_dirs = provenance.get("history") or []
        if not data or not Path(data).is_dir() or not all(Path(h).is_dir()
                                                           for h in history_dirs):
            raise InputError(
                f"cannot compare version {target} with champion version {current}: the "
                f"dataset it was trained on ({data}) is gone; give --data DIR with labelled "
                "records neither model learned from, or --force to promote without comparing")
        log(f"comparing on {data}, the dataset version {target} was trained on")
    comparison = compare_models(data, str(current), str(target), history_dirs, name=name,
                                capacity=capacity, n_boot=n_boot,
                                screening_list=screening_list, log=log)
    if comparison.verdict == WORSE:
        raise PromotionRefused(
            f"version {target} not promoted: it is worse than champion version {current} "
            f"beyond noise on {comparison.records} labelled records "
            f"({comparison.positives} confirmed). " + " ".join(comparison.reasons)
            + f" (comparison logged as run {comparison.run_id}); --force overrides")
    note = {TOO_FEW: "the comparison cannot decide (too few confirmed diversions): promoted "
                     "on your decision",
            NO_DIFFERENCE: "no difference beyond noise: promoted on your decision",
            BETTER: "better than the champion beyond noise"}[comparison.verdict]
    tracking.promote(name, target, record={
        "how": "compared", "verdict": comparison.verdict, "comparison_run": comparison.run_id,
        "reason": reason or ""})
    return Promotion(target, current, "compared", comparison, note)

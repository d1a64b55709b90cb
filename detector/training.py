"""`detector train`: features → rules + unsupervised + LightGBM → MLflow run and version.

Protocol (CLI.md): labelled records ordered by date; the model is fitted on the older
part, early stopping and calibration use a later part, and the logged metrics come from
the latest part, which none of them saw. Unlabelled records are never negatives: they
only shape the unsupervised layer (those dated inside the fitting period).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from detector.batch import feature_frame, read_batch
from detector.config import load_config
from detector.errors import InputError
from detector.evaluation import capacity_ceilings, evaluate, held_out_warnings, reliability_table
from detector.progress import Progress
from detector.queue import LABELLED_CELLS, labelled_cells
from detector.settings import DEFAULT_EXPERIMENT, DEFAULT_MODEL_NAME


@dataclass
class TrainResult:
    run_id: str
    name: str
    version: int
    champion: bool
    experiment: str
    metrics: dict
    reliability: pl.DataFrame
    slices: dict
    warnings: list = None


def _labelled(frame: pl.DataFrame, labels: pl.DataFrame) -> pl.DataFrame:
    return (
        frame.join(labels.select("record_kind", "record_id", "label", "typology",
                                 "decided_on"),
                   on=["record_kind", "record_id"], how="inner")
        .sort(["record_date", "record_kind", "record_id"])
    )


def stored_labels(batch, log: Callable[[str], None] = lambda _: None):
    """The dataset's labels together with the analysts' stored decisions
    (detector.decisions.merge_labels: the latest decided_on wins; on equal dates the
    stored decision). They replace ``batch.dataset.labels`` so that everything reading
    the batch's labels sees them. Returns (labels, counts)."""
    from detector.decisions import DecisionStore, merge_labels

    labels, counts = merge_labels(batch.dataset.labels, DecisionStore().labels(),
                                  batch.batch_keys())
    batch.dataset.labels = labels
    log(f"labels: {counts.dataset} from the dataset, {counts.stored} stored decisions for its "
        f"records ({counts.stored_used} used, {counts.stored_overriding} overriding a different "
        f"dataset label; {counts.stored_elsewhere} for other records, not used); "
        f"{counts.final} labelled records")
    return labels, counts


def split_by_time(labelled: pl.DataFrame, fit: float, calibrate: float) -> dict[str, pl.DataFrame]:
    """Oldest ``fit`` share, next ``calibrate`` share, the latest rest (rows sorted by date)."""
    n = labelled.height
    a, b = int(round(n * fit)), int(round(n * (fit + calibrate)))
    return {"fit": labelled[:a], "calibrate": labelled[a:b], "test": labelled[b:]}


def train(dataset_dir: str | Path, history_dirs: list[str | Path] = (), *,
          config_path: str | Path | None = None, experiment: str = DEFAULT_EXPERIMENT,
          model_name: str = DEFAULT_MODEL_NAME, screening_list: str | Path | None = None,
          engine: str = "local", scheduler: str | None = None,
          log: Callable[[str], None] = lambda _: None,
          progress: Progress | None = None) -> TrainResult:
    """``engine="dask"``: the LightGBM layer trains with lightgbm.dask on a dask.distributed
    cluster (``scheduler`` address, else a LocalCluster of worker processes). ``log``
    receives notices, ``progress`` the phases of the work."""
    from contextlib import nullcontext

    from detector import tracking
    from detector.errors import UsageError

    if engine not in ("local", "dask"):
        raise UsageError(f"--engine {engine}: expected local or dask")
    from detector.models.ensemble import DiversionModel, ModelBundle
    from detector.models.supervised import scheme_weights
    from features.build import fit_feature_stats
    from features.learned import input_names
    from features.registry import model_feature_names

    progress = progress or Progress.silent()
    config = load_config(config_path)
    batch = read_batch(progress, dataset_dir, history_dirs, screening_list)
    labels, label_counts = stored_labels(batch, log)
    counts = labels["label"].value_counts()
    present = set(counts["label"].to_list())
    if not {0, 1} <= present:
        raise InputError(
            f"{dataset_dir}: training needs labels 0 (reviewed and cleared) and 1 (confirmed "
            f"diversion); the labels table has {labels.height} usable row(s) with label values "
            f"{sorted(present) or 'none'}")

    from detector.reference import load_reference

    with progress.phase("feature statistics") as phase:
        stats = fit_feature_stats(batch.shipments, batch.leases, batch.parties,
                                  load_reference(),
                                  categorical=list(config.inputs.categorical),
                                  numeric=list(config.inputs.numeric))
        phase.finish(f"from {stats.fitted_rows:,} records")
    # case memory: every label known (the dataset's and the history's), each row seeing
    # only decisions dated before it (features.case_memory)
    known_labels = pl.concat([batch.dataset.labels, *[h.labels for h in batch.history]],
                             how="diagonal_relaxed")
    memory: dict = {}
    with progress.phase("features") as phase:
        frame = feature_frame(batch, stats, labels=known_labels, memory_out=memory)
        phase.finish(f"{frame.height:,} records x {frame.width} columns")
    stats = dataclasses.replace(stats, case_memory=memory["case_memory"])
    features = [*model_feature_names(config.inputs.without), *input_names(stats.inputs)]

    labelled = _labelled(frame, labels)
    slices = split_by_time(labelled, config.split.fit, config.split.calibrate)
    for name, part in slices.items():
        if part["label"].n_unique() < 2:
            raise InputError(
                f"{dataset_dir}: the {name} slice of the labelled records (ordered by date) "
                f"holds only label {part['label'].unique().to_list()}; training needs both "
                f"labels in each of the fit, calibrate and test slices "
                f"({labelled.height} labelled records in all)")
    cutoff = slices["fit"]["record_date"].max()
    unlabelled = frame.join(labels, on=["record_kind", "record_id"], how="anti") \
        .filter(pl.col("record_date") <= cutoff)

    if engine == "dask":
        from detector.distributed import dask_client

        cluster = dask_client(scheduler, log, processes=True)
    else:
        cluster = nullcontext(None)
    with cluster as client, progress.phase(
            f"fit on {slices['fit'].height:,} labelled + {unlabelled.height:,} unlabelled "
            f"records, calibrate on {slices['calibrate'].height:,}") as phase:
        model = DiversionModel(
            features,
            lightgbm_params=config.lightgbm_params(),
            num_boost_round=config.lightgbm.num_boost_round,
            early_stopping_rounds=config.lightgbm.early_stopping_rounds,
            unsupervised_detectors=config.unsupervised.detectors,
            max_fit_rows=config.unsupervised.max_fit_rows,
            random_state=config.seed,
        ).fit(slices["fit"], slices["fit"]["label"].to_numpy(), unlabelled=unlabelled,
              valid_frame=slices["calibrate"],
              valid_labels=slices["calibrate"]["label"].to_numpy(), dask_client=client,
              sample_weight=scheme_weights(slices["fit"]["label"].to_numpy(),
                                           slices["fit"]["typology"].to_list(),
                                           config.lightgbm.balance_schemes))
        phase.finish(f"{model.supervised_.best_iteration_} trees")

    test = slices["test"]
    y = test["label"].to_numpy()
    with progress.phase(f"evaluate on {test.height:,} later labelled records"):
        probability = model.decision_function(test)
        metrics = evaluate(y, probability, test["typology"].to_list())
    metrics["best_iteration"] = float(model.supervised_.best_iteration_)
    metrics.update(capacity_ceilings(int(metrics["records"]), int(metrics["positives"])))
    warnings = held_out_warnings(metrics, "the test slice")
    for w in warnings:
        log(f"warning: {w}")
    scheme_model, scheme_metrics = fit_scheme_model(
        pl.concat([slices["fit"], slices["calibrate"]], how="vertical_relaxed"), test,
        features, log)
    metrics.update(scheme_metrics)
    reliability = reliability_table(y, probability)
    evaluation_table = test.select("record_kind", "record_id", "record_date", "label",
                                   "typology").with_columns(risk_score=probability)
    importance = model.supervised_.feature_importance()

    slice_info = {name: {"records": part.height, "positives": int(part["label"].sum()),
                         "from": str(part["record_date"].min()),
                         "to": str(part["record_date"].max())}
                  for name, part in slices.items()}
    case = stats.case_memory
    case_info = {"cutoff": case.get("cutoff"), "decisions": case.get("decisions", 0),
                 "confirmed": case.get("confirmed", 0)}
    learned_through = training_cutoff(pl.concat([slices["fit"], slices["calibrate"]],
                                                 how="vertical_relaxed"))
    log("storing the training distributions (drift checks)")
    provenance = {**batch.provenance, "config": config.source, "slices": slice_info,
                  "training_cutoff": learned_through, "case_memory": case_info,
                  "model_inputs": features,
                  # what its trees learned from, per cell: the review queue's familiarity
                  # (the fit slice only: the calibration slice, the newest labels, sets the
                  # probability scale but teaches the trees nothing)
                  LABELLED_CELLS: labelled_cells(slices["fit"]),
                  "training_profile": _training_profile(model, frame, batch, config.seed)}
    bundle = ModelBundle(model, model_feature_names(), stats.to_dict(), batch.reference_version,
                         config.as_params(), metrics, provenance, scheme_model)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with progress.phase("save the model bundle and evaluation plots"):
            bundle_dir = bundle.save(tmp / "bundle")
            plots = _plots(importance, y, probability, reliability, tmp)
        with progress.phase("log the run to MLflow and register the model"):
            run = tracking.log_training_run(
                experiment=experiment, model_name=model_name, bundle_dir=bundle_dir,
                params={**config.as_params(),
                        **{f"labels.{k}": v for k, v in label_counts.__dict__.items()},
                        **{f"slice.{k}.{kk}": vv for k, v in slice_info.items()
                           for kk, vv in v.items()},
                        **{f"cutoff.{k}": v for k, v in learned_through.items()},
                        **{f"case_memory.{k}": v for k, v in case_info.items()}},
                metrics=metrics,
                tags={"data_fingerprint": batch.fingerprint,
                      "screening_list": batch.screening_source,
                      "reference_version": batch.reference_version,
                      "dataset": provenance["dataset"], "config": config.source},
                artifacts=plots,
                tables={"feature_importance": importance, "reliability": reliability,
                        "evaluation": evaluation_table},
                summary=_summary(metrics, slice_info, config.source),
            )
    return TrainResult(run.run_id, run.name, run.version, run.champion, run.experiment,
                       metrics, reliability, slice_info, warnings)


def _training_profile(model, frame: pl.DataFrame, batch, seed: int) -> dict:
    """Compact training distributions for drift checks (detector.drift), from a sample of
    the training records scored by the fitted model."""
    from detector.drift import SKETCH_ROWS, training_profile

    sample = frame.sample(SKETCH_ROWS, seed=seed) if frame.height > SKETCH_ROWS else frame
    layered = model.layers(sample)
    return training_profile(layered, model.model_inputs, model.risk(layered),
                            _collected(batch.shipments), _collected(batch.leases))


def _collected(frame):
    return frame.collect() if isinstance(frame, pl.LazyFrame) else frame


def training_cutoff(learned: pl.DataFrame) -> dict:
    """What the model learned from, as dates: the latest record date and the latest
    decision date among the labelled records it was fitted and calibrated on.

    A labelled record dated after ``records_through`` or decided after
    ``decided_through`` was not among them; `detector compare` evaluates on such records.
    """
    decided = learned["decided_on"].max() if "decided_on" in learned.columns else None
    return {"records_through": str(learned["record_date"].max()),
            "decided_through": None if decided is None else str(decided)}


def _summary(metrics: dict, slices: dict, config: str) -> str:
    """The registry description after "NAME version N: "."""
    test = slices["test"]
    return (f"held-out test slice {test['from']} to {test['to']}: {int(metrics['records'])} "
            f"labelled records, {int(metrics['positives'])} confirmed; PR-AUC "
            f"{metrics['pr_auc']:.3f}, precision@1% {metrics['precision_at_1pct']:.3f} "
            f"(ceiling {metrics['precision_at_1pct.ceiling']:.3f}), recall@5% "
            f"{metrics['recall_at_5pct']:.3f} (ceiling {metrics['recall_at_5pct.ceiling']:.3f}), "
            f"Brier {metrics['brier']:.4f}; config {config}")


def fit_scheme_model(train: pl.DataFrame, test: pl.DataFrame, features: list[str],
                     log: Callable[[str], None] = lambda _: None):
    """The scheme model from every confirmed diversion of ``train`` and ``test`` whose
    typology maps to a scheme (None when fewer than two schemes can be told apart:
    scoring then uses the rule families), and its held-out accuracy: a model fitted on
    ``train``'s alone, scored on ``test``'s (the share whose likely scheme is one of the
    schemes their typology names). The labelled diversions are few (a few dozen a
    training run), so the saved model learns from all of them once measured."""
    from detector.models.scheme import SchemeModel
    from detector.schemes import scheme_columns, schemes_of

    def examples(part: pl.DataFrame) -> tuple[pl.DataFrame, list[list[str]]]:
        positives = part.filter(pl.col("label") == 1)
        schemes = [schemes_of(t) for t in positives["typology"].to_list()]
        keep = [i for i, s in enumerate(schemes) if s]
        return positives[keep], [schemes[i] for i in keep]

    earlier, earlier_schemes = examples(train)
    held, held_schemes = examples(test)
    both = pl.concat([earlier, held], how="vertical_relaxed")
    both_schemes = earlier_schemes + held_schemes
    if not SchemeModel.trainable(both_schemes):
        log("likely schemes will come from the rule families: the labelled typologies name "
            "fewer than two schemes with enough examples")
        return None, {}
    metrics = {}
    if held.height and SchemeModel.trainable(earlier_schemes):
        measured = SchemeModel(features).fit(earlier, earlier_schemes)
        predicted = scheme_columns(held, measured)["likely_scheme"].to_list()
        metrics["likely_scheme_accuracy"] = sum(
            p in truth for p, truth in zip(predicted, held_schemes)) / held.height
    model = SchemeModel(features).fit(both, both_schemes)
    log(f"scheme model: {both.height} labelled diversions, schemes "
        + ", ".join(f"{s} {n}" for s, n in model.class_counts_.items()))
    return model, metrics


def _plots(importance: pl.DataFrame, y: np.ndarray, probability: np.ndarray,
           reliability: pl.DataFrame, directory: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    top = importance.head(20).reverse()
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.barh(top["feature"].to_list(), top["gain"].to_list(), color="#3b6ea5")
    ax.set_title("Feature importance (gain)")
    fig.tight_layout()
    out["importance"] = directory / "feature_importance.png"
    fig.savefig(out["importance"], dpi=110)
    plt.close(fig)

    order = np.argsort(-probability, kind="stable")
    hits = y[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    recall = np.cumsum(hits) / max(hits.sum(), 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot(recall, precision, color="#a53b3b")
    axes[0].set(xlabel="recall", ylabel="precision", title="Precision-recall (test slice)",
                xlim=(0, 1), ylim=(0, 1.02))
    axes[1].plot([0, 1], [0, 1], ls="--", color="grey")
    axes[1].plot(reliability["mean_predicted"].to_list(), reliability["observed_rate"].to_list(),
                 marker="o", color="#3b6ea5")
    axes[1].set(xlabel="predicted probability", ylabel="observed rate",
                title="Reliability (test slice)", xlim=(0, 1), ylim=(0, 1))
    fig.tight_layout()
    out["precision_recall"] = directory / "precision_recall.png"
    fig.savefig(out["precision_recall"], dpi=110)
    plt.close(fig)
    return out

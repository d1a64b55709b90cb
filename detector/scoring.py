"""`detector score` and `detector explain`: a batch plus a model → ranked risk with reasons.

Scoring is a stateless function of one batch and a loaded bundle, so it can run per
partition on another engine. Without a registered model it falls back to rules +
unsupervised detectors fitted on the batch itself, and says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from detector.batch import Batch, feature_frame, load_batch
from detector.contract import SCORES, write_quarantine, write_table
from detector.errors import InputError, UsageError

FALLBACK_LABEL = "rules+unsupervised"
MAX_REASONS = 5


@dataclass
class LoadedModel:
    """A bundle ready to score (None members = the fallback)."""

    bundle: object | None  # detector.models.ensemble.ModelBundle
    label: str  # NAME/VERSION or rules+unsupervised
    info: dict = field(default_factory=dict)

    @property
    def fallback(self) -> bool:
        return self.bundle is None


def load_bundle_dir(directory: Path):
    from detector.models.ensemble import ModelBundle
    from features.registry import model_feature_names

    return ModelBundle.load(directory, expected_features=model_feature_names())


def load_model(uri: str | None, log: Callable[[str], None] = lambda _: None) -> LoadedModel:
    """Resolve ``--model`` (or the default champion); None → the documented fallback."""
    from detector import tracking

    resolved = tracking.resolve_model(uri)
    if resolved is None:
        log(f"no model registered as {tracking.DEFAULT_MODEL_URI} in {tracking.tracking_uri()}: "
            f"scoring with rules + unsupervised detectors fitted on this batch "
            f"(model = {FALLBACK_LABEL}); train one with `detector train`")
        return LoadedModel(None, FALLBACK_LABEL)
    bundle = load_bundle_dir(resolved.bundle_dir)
    info = {"name": resolved.name, "version": resolved.version, "run_id": resolved.run_id,
            "metrics": bundle.metrics, "provenance": bundle.provenance}
    return LoadedModel(bundle, resolved.label, info)


@dataclass
class Scored:
    """Every scored record: features, layer scores, risk, rank and reasons."""

    frame: pl.DataFrame  # sorted by rank
    model: LoadedModel
    batch: Batch | None = None

    def scores_table(self) -> pl.DataFrame:
        return self.frame.select(SCORES.column_names)


def _layers_and_risk(frame: pl.DataFrame, model: LoadedModel) -> tuple[pl.DataFrame, object]:
    from detector.models.ensemble import FallbackModel
    from features.registry import model_feature_names

    if model.fallback:
        scorer = FallbackModel(model_feature_names()).fit(frame)
    else:
        scorer = model.bundle.model
    layered = scorer.layers(frame)
    return layered.with_columns(risk_score=pl.Series(scorer.risk(layered), dtype=pl.Float64)), \
        scorer


def rank(frame: pl.DataFrame) -> pl.DataFrame:
    """Highest risk first; ties broken by record_kind, then record_id (DATA_CONTRACT.md)."""
    return frame.sort(["risk_score", "record_kind", "record_id"],
                      descending=[True, False, False]).with_row_index("rank", offset=1) \
        .with_columns(pl.col("rank").cast(pl.Int64))


def score_frame(frame: pl.DataFrame, model: LoadedModel, top: int) -> pl.DataFrame:
    """Layer scores, risk, rank and reasons for a feature frame."""
    layered, scorer = _layers_and_risk(frame, model)
    return rank_with_reasons(layered, scorer, model, top)


def rank_with_reasons(layered: pl.DataFrame, scorer, model: LoadedModel, top: int
                      ) -> pl.DataFrame:
    """Rank layered, risk-scored rows; full reasons for the top N, rule labels for the rest.

    The step after the per-partition work: ranking needs every risk score at once.
    """
    from detector.reasons import full_reasons, rule_labels

    ranked = rank(layered)
    head, tail = ranked[:top], ranked[top:]
    head = head.with_columns(reasons=pl.Series(full_reasons(head, scorer, model.fallback),
                                               dtype=pl.String))
    tail = tail.with_columns(reasons=rule_labels(pl.col("rule_hits")))
    return pl.concat([head, tail], how="vertical_relaxed").with_columns(
        model=pl.lit(model.label))


def score_batch(batch: Batch, model: LoadedModel, top: int = 1000) -> Scored:
    stats = None
    if not model.fallback:
        from features.stats import FeatureStats

        stats = FeatureStats.from_dict(model.bundle.feature_stats)
    frame = feature_frame(batch, stats)
    return Scored(score_frame(frame, model, top), model, batch)


def score(dataset_dir: str | Path, out: str | Path, history_dirs: list[str | Path] = (), *,
          model_uri: str | None = None, quarantine: str | Path | None = None, top: int = 1000,
          screening_list: str | Path | None = None, engine: str = "local",
          scheduler: str | None = None,
          log: Callable[[str], None] = lambda _: None) -> Scored:
    """Score every shipment and lease of a dataset and write the scores table.

    ``engine="dask"`` applies the model layers per partition on a dask.distributed
    cluster (``scheduler`` address, else a LocalCluster); see detector.distributed.
    """
    if engine not in ("local", "dask"):
        raise UsageError(f"--engine {engine}: expected local or dask")
    out = Path(out)
    if out.suffix.lower() not in (".csv", ".parquet"):
        raise UsageError(f"--out {out}: the scores file must end in .csv or .parquet")
    if top < 0:
        raise UsageError(f"--top {top}: expected a count of 0 or more")
    batch = load_batch(dataset_dir, history_dirs, screening_list,
                       allow_errors=quarantine is not None)
    model = load_model(model_uri, log)
    log(f"scoring {batch.dataset.shipments.height} shipments and "
        f"{batch.dataset.leases.height} leases with {model.label}")
    if engine == "dask":
        from detector.distributed import score_batch_dask

        scored = score_batch_dask(batch, model, top, scheduler=scheduler, log=log)
    else:
        scored = score_batch(batch, model, top)
    provenance = {**batch.provenance, "model": model.label,
                  "model_run_id": model.info.get("run_id"), "records": scored.frame.height,
                  "quarantined_rows": batch.dataset.quarantined_rows}
    if quarantine is not None and batch.dataset.quarantined:
        write_quarantine(batch.dataset, quarantine)
    write_scores(scored.scores_table(), out, provenance)
    return scored


def write_scores(table: pl.DataFrame, out: Path, provenance: dict) -> None:
    """The scores table, and beside it ``<out>.provenance.json`` tracing it to its inputs."""
    sidecar = out.with_name(out.name + ".provenance.json")
    write_table(table, out)
    try:
        sidecar.write_text(json.dumps(provenance, indent=2, default=str))
    except OSError:
        out.unlink(missing_ok=True)  # no scores file without its provenance
        raise


def explain(dataset_dir: str | Path, record_id: str, kind: str | None = None,
            history_dirs: list[str | Path] = (), *, model_uri: str | None = None,
            screening_list: str | Path | None = None,
            log: Callable[[str], None] = lambda _: None) -> dict:
    """Why one record scored as it did: feature values, rule hits, contributions."""
    from detector.reasons import explain_record

    if kind not in (None, "shipment", "lease"):
        raise UsageError(f"--kind {kind}: expected shipment or lease")
    batch = load_batch(dataset_dir, history_dirs, screening_list)
    keys = batch.batch_keys().filter(pl.col("record_id") == record_id)
    if kind:
        keys = keys.filter(pl.col("record_kind") == kind)
    if keys.height == 0:
        raise InputError(f"{dataset_dir}: no {kind or 'shipment or lease'} with id {record_id!r}")
    if keys.height > 1:
        raise UsageError(f"{record_id!r} is both a shipment and a lease id: add --kind")
    model = load_model(model_uri, log)
    scored = score_batch(batch, model, top=0)
    row = scored.frame.filter((pl.col("record_kind") == keys["record_kind"][0])
                              & (pl.col("record_id") == record_id))
    return explain_record(row, scored, model)


def score_shipments_frame(shipments: pl.DataFrame, bundle, label: str) -> pl.DataFrame:
    """Score a bare frame of contract shipment columns with a bundle (the MLflow pyfunc)."""
    from detector.contract import LEASES, PARTIES, SHIPMENTS
    from detector.reference import default_screening_list_path, load_reference, \
        read_screening_list
    from features.build import build_features
    from features.stats import FeatureStats

    missing = [c.name for c in SHIPMENTS.columns if c.required and c.name not in shipments.columns]
    if missing:
        raise InputError(f"shipments frame: required column(s) missing: {missing}")
    shipments = shipments.with_columns(
        pl.lit(None, dtype).alias(name) for name, dtype in SHIPMENTS.schema.items()
        if name not in shipments.columns
    ).select(SHIPMENTS.column_names).cast(SHIPMENTS.schema)
    frame = build_features(shipments, pl.DataFrame(schema=LEASES.schema),
                           pl.DataFrame(schema=PARTIES.schema),
                           read_screening_list(default_screening_list_path()), load_reference(),
                           FeatureStats.from_dict(bundle.feature_stats))
    model = LoadedModel(bundle, label)
    top = min(frame.height, 1000)
    return score_frame(frame, model, top).select(SCORES.column_names)


def top_table(scored: Scored, n: int) -> str:
    """The top-N table printed on stdout."""
    head = scored.frame.head(n)
    lines = [f"{'rank':>5}  {'kind':<8}  {'record_id':<22}  {'risk':>6}  reasons"]
    for r in head.iter_rows(named=True):
        reasons = r["reasons"] or ""
        lines.append(f"{r['rank']:>5}  {r['record_kind']:<8}  {r['record_id']:<22}  "
                     f"{r['risk_score']:6.3f}  {reasons}")
    return "\n".join(lines)


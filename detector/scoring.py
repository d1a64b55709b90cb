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
from detector.contract import SCORES, write_quarantine
from detector.errors import InputError, UsageError
from detector.files import check_output_path, temporary_directory
from detector.queue import (
    DEFAULT_CAPACITY,
    DEFAULT_EXPLORE,
    check_explore,
    mark_queue,
    parse_capacity,
    queue_summary,
)

FALLBACK_LABEL = "rules+unsupervised"


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
    quarantined_rows: int = 0

    def scores_table(self) -> pl.DataFrame:
        return scores_columns(self.frame)


def scores_columns(frame: pl.DataFrame) -> pl.DataFrame:
    """The contract's scores columns of ``frame``, in order and type; v2 columns the frame
    does not carry (yet: `queue_reason` until a review queue fills it) are null."""
    return frame.select(pl.col(c).cast(t) if c in frame.columns else pl.lit(None, t).alias(c)
                        for c, t in SCORES.schema.items())


def with_scheme_and_context(layered: pl.DataFrame, model: LoadedModel) -> pl.DataFrame:
    """The scores table's v2 columns for a feature frame (same rows, same order): the
    likely scheme (detector.schemes: the bundle's scheme model, else the rule families)
    and the context a reader needs (date, counterparty, destination, goods, quantity,
    value)."""
    from detector.schemes import scheme_columns

    if "likely_scheme" not in layered.columns:
        scheme_model = None if model.fallback else getattr(model.bundle, "scheme_model", None)
        layered = layered.hstack(scheme_columns(layered, scheme_model))
    return layered.with_columns(
        pl.col("counterparty_name").alias("counterparty"),
        pl.coalesce(pl.col("destination_country"), pl.col("lessee_country"))
        .alias("destination"),
        pl.col("declared_quantity").cast(pl.Int64).alias("quantity"))


# What the scores table keeps of each record besides its key, risk and rule hits.
CONTEXT_COLUMNS = ("likely_scheme", "scheme_confidence", "record_date", "counterparty",
                   "destination", "goods", "quantity", "value_usd")


def _layers_and_risk(frame: pl.DataFrame, model: LoadedModel, scorer=None
                     ) -> tuple[pl.DataFrame, object]:
    """Layer scores and risk; ``scorer`` None: the bundle's model, or the fallback fitted
    on ``frame``."""
    from detector.models.ensemble import FallbackModel
    from features.registry import model_feature_names

    if scorer is None and model.fallback:
        scorer = FallbackModel(model_feature_names()).fit(frame)
    elif scorer is None:
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

    ranked = rank(with_scheme_and_context(layered, model))
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


# Shipments whose features are built and scored at once by `detector score`. A batch of
# up to this many shipments is one part (the whole feature frame in memory, as before);
# a larger one is cut into parts of this size, so memory follows the part, not the batch
# (docs/scale.md: about 4 GiB for one part of 1M).
DEFAULT_CHUNK_ROWS = 1_000_000


def _rule_mask_labels(masks: pl.Series) -> pl.DataFrame:
    """rule_mask -> `rule_labels` text, rendered once per distinct mask."""
    from detector.reasons import rule_labels
    from features.rules import rule_hits_by_mask

    return rule_hits_by_mask(masks).select(
        "rule_mask", rule_labels(pl.col("rule_hits")).alias("reasons"))


def _parts(frame: pl.DataFrame, rows: int) -> list[pl.DataFrame]:
    return [frame.slice(start, rows) for start in range(0, frame.height, rows)]


def _spill_own_shipments(batch: Batch, rows: int, directory: Path) -> list[pl.LazyFrame]:
    """Move the batch's own shipments to a Parquet file in ``directory``; their parts of
    ``rows`` as lazy slices of it.

    At 10M shipments the typed frame is 2.5 GiB that would otherwise stay in memory for
    the whole run; the feature builder reads one part when it needs it. The batch's
    frames are replaced by a scan of that file (valid while ``directory`` exists), so no
    reference keeps the in-memory copy alive.
    """
    path = directory / "own_shipments.parquet"
    height = batch.dataset.shipments.height
    batch.dataset.shipments.write_parquet(path, compression="lz4", row_group_size=rows)
    scan = pl.scan_parquet(path)
    batch.dataset.shipments = scan
    if not batch.history:
        batch.shipments = scan
    return [scan.slice(start, rows) for start in range(0, height, rows)]


def score_records(batch: Batch, model: LoadedModel, top: int = 1000, *,
                  chunk_rows: int | None = None, spill_dir: Path | None = None,
                  log: Callable[[str], None] = lambda _: None) -> Scored:
    """Score the batch's records in parts of ``chunk_rows`` shipments; the scores table.

    The same scores as `score_batch` (same risk, rank and reasons) in memory bounded by
    one part: cross-record features are computed once over every record
    (`features.build.FeatureBuilder`); each part's wide features and model layers are
    then built and dropped, keeping only (record_kind, record_id, risk_score, rule mask)
    per record and the part's top ``top`` rows. Ranking is global, and the global top N
    is among the parts' top N, so reasons for it come from those rows. ``Scored.frame``
    is the scores table, sorted by rank. With ``spill_dir`` and more than one part, the
    batch's own shipments are moved there first (`_spill_own_shipments`).
    """
    from detector.models.ensemble import FallbackModel
    from detector.reasons import full_reasons
    from detector.reference import load_reference
    from features.build import FeatureBuilder
    from features.registry import model_feature_names
    from features.rules import rule_mask
    from features.stats import FeatureStats

    chunk_rows = DEFAULT_CHUNK_ROWS if chunk_rows is None else chunk_rows
    if chunk_rows < 1:
        raise UsageError(f"--chunk-rows {chunk_rows}: expected a count of 1 or more")
    stats = None if model.fallback else FeatureStats.from_dict(model.bundle.feature_stats)
    if spill_dir is not None and batch.dataset.shipments.height > chunk_rows:
        own = _spill_own_shipments(batch, chunk_rows, spill_dir)
    else:
        own = _parts(batch.dataset.shipments, chunk_rows)
    context = [p for ds in batch.history for p in _parts(ds.shipments, chunk_rows)]
    builder = FeatureBuilder([*own, *context], batch.leases, batch.parties,
                             batch.screening_list, load_reference(), stats)
    own_leases = batch.dataset.leases.select(pl.lit("lease").alias("record_kind"),
                                             pl.col("lease_id").alias("record_id"))

    def features(part: int | None) -> pl.DataFrame:
        """Part ``part``'s shipment features; None: the batch's own leases."""
        if part is None:
            return builder.lease_features().join(own_leases, on=["record_kind", "record_id"],
                                                 how="semi")
        return builder.shipment_features(part)

    parts: list[int | None] = [None, *range(len(own))]  # leases, then shipment parts
    cached: dict = {}
    if model.fallback:
        scorer = FallbackModel(model_feature_names()).fit(
            _fallback_population(features, parts, cached))
    else:
        scorer = model.bundle.model
    kept, heads = [], []
    for n, part in enumerate(parts, 1):
        frame = cached.pop(part, None)
        frame = features(part) if frame is None else frame
        layered, _ = _layers_and_risk(frame, model, scorer)
        del frame
        layered = with_scheme_and_context(layered, model)
        kept.append(layered.select("record_kind", "record_id", "risk_score",
                                   "unsupervised_score", rule_mask(), *CONTEXT_COLUMNS))
        # gathered, not sliced: a slice would keep the whole part's buffers alive
        order = rank(layered.with_row_index("__i"))["__i"].head(top)
        heads.append(layered[order])
        del layered
        if len(parts) > 2:
            log(f"scored part {n} of {len(parts)} ({kept[-1].height} records)")
    ranked = rank(pl.concat(kept))
    del kept
    head = ranked.head(top).select("record_kind", "record_id", "rank").join(
        pl.concat(heads, how="vertical_relaxed"), on=["record_kind", "record_id"],
        how="left").sort("rank")
    head_reasons = pl.Series(full_reasons(head, scorer, model.fallback), dtype=pl.String)
    labels = _rule_mask_labels(ranked["rule_mask"])
    table = ranked.join(labels, on="rule_mask", how="left").sort("rank")
    table = table.with_columns(
        reasons=pl.when(pl.col("rank") <= top).then(
            pl.lit(head_reasons.extend_constant(None, table.height - head.height)))
        .otherwise(pl.col("reasons")),
        model=pl.lit(model.label))
    # the unsupervised score stays for choosing the review queue (detector.queue)
    return Scored(scores_columns(table).with_columns(table["unsupervised_score"]), model,
                  batch)


def _fallback_population(features, parts, cached: dict) -> pl.DataFrame:
    """The rows `FallbackModel.fit` sees in `score_batch`: every record's features sorted
    by (record_kind, record_id), or the unsupervised layer's sample of them, gathered
    part by part. With one part of each kind the frames are kept for scoring."""
    from detector.models.unsupervised import UnsupervisedEnsemble
    from features.registry import model_feature_names

    keys = []
    for part in parts:
        frame = features(part)
        if len(parts) <= 2:
            cached[part] = frame
        keys.append(frame.select("record_kind", "record_id"))
    keys = pl.concat(keys).sort(["record_kind", "record_id"])
    rows = UnsupervisedEnsemble(model_feature_names()).fit_rows(keys.height)
    wanted = keys if rows is None else keys[rows]
    gathered = [(cached.get(part) if part in cached else features(part))
                .join(wanted, on=["record_kind", "record_id"], how="semi") for part in parts]
    return pl.concat(gathered, how="vertical_relaxed").sort(["record_kind", "record_id"])


def score(dataset_dir: str | Path, out: str | Path, history_dirs: list[str | Path] = (), *,
          model_uri: str | None = None, quarantine: str | Path | None = None, top: int = 1000,
          screening_list: str | Path | None = None, engine: str = "local",
          scheduler: str | None = None, chunk_rows: int | None = None,
          capacity: str = DEFAULT_CAPACITY, explore: float = DEFAULT_EXPLORE,
          log: Callable[[str], None] = lambda _: None) -> Scored:
    """Score every shipment and lease of a dataset and write the scores table.

    The review queue (``capacity`` records, a share ``explore`` of them chosen for
    learning; detector.queue) is marked in ``queue_reason``.

    Locally the shipments are scored in parts of ``chunk_rows`` (default
    `DEFAULT_CHUNK_ROWS`: one part up to 1M shipments) with `score_records`.
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
    if chunk_rows is not None and chunk_rows < 1:
        raise UsageError(f"--chunk-rows {chunk_rows}: expected a count of 1 or more")
    parse_capacity(capacity, 1)
    check_explore(explore)
    check_output_path(out)
    check_output_path(out.with_name(out.name + ".provenance.json"), "--out's provenance file")
    if quarantine is not None and Path(quarantine).exists() and not Path(quarantine).is_dir():
        raise InputError(f"--quarantine {quarantine}: is a file; give a directory")
    batch = load_batch(dataset_dir, history_dirs, screening_list,
                       allow_errors=quarantine is not None)
    model = load_model(model_uri, log)
    log(f"scoring {batch.dataset.shipments.height} shipments and "
        f"{batch.dataset.leases.height} leases with {model.label}")
    # a large batch's shipments wait on disk while scoring (score_records, spill_dir)
    with temporary_directory("score") as spill:
        if engine == "dask":
            from detector.distributed import score_batch_dask

            scored = score_batch_dask(batch, model, top, scheduler=scheduler, log=log)
        else:
            scored = score_records(batch, model, top, chunk_rows=chunk_rows,
                                   spill_dir=spill, log=log)
        scored.frame = mark_queue(scored.frame, capacity, explore,
                                  supervised=not model.fallback)
        log(queue_summary(scored.frame))
        provenance = {**batch.provenance, "model": model.label,
                      "capacity": capacity, "explore": explore,
                      "model_run_id": model.info.get("run_id"),
                      "records": scored.frame.height,
                      "quarantined_rows": batch.dataset.quarantined_rows}
        if quarantine is not None and batch.dataset.quarantined:
            write_quarantine(batch.dataset, quarantine)
        write_scores(scored.scores_table(), out, provenance)
    scored.quarantined_rows = batch.dataset.quarantined_rows
    # A large batch's shipments were moved to the temporary folder just removed: do not
    # hand out a batch whose frames point there.
    scored.batch = None
    return scored


def write_scores(table: pl.DataFrame, out: Path, provenance: dict) -> None:
    """The scores table, and beside it ``<out>.provenance.json`` tracing it to its inputs.

    Both are written in full before either replaces anything: a failure leaves the
    previous pair as it was.
    """
    from detector.contract import table_writer
    from detector.files import atomic_write_many

    sidecar = out.with_name(out.name + ".provenance.json")
    write_scores_file = table_writer(table, out)

    def write(tmps: list[Path]) -> None:
        write_scores_file(tmps[0])
        tmps[1].write_text(json.dumps(provenance, indent=2, default=str))

    atomic_write_many([out, sidecar], write)


def record_frame(batch: Batch, model: LoadedModel, kind: str, record_id: str) -> pl.DataFrame:
    """One record's feature frame, layer scores, risk and likely scheme, built from only
    the records its features read (features.neighbourhood), not the whole batch: what
    `detector explain` needs in about a second. A model is required (the fallback's
    detectors are fitted on the whole batch)."""
    from detector.reference import load_reference
    from features.build import FeatureBuilder
    from features.neighbourhood import shipments_around
    from features.stats import FeatureStats

    stats = FeatureStats.from_dict(model.bundle.feature_stats)
    if kind == "shipment":
        shipments = shipments_around(batch.shipments, batch.parties, record_id)
        leases = batch.leases.clear()
    else:
        shipments = batch.shipments.clear()
        leases = batch.leases.filter(pl.col("lease_id") == record_id)
    builder = FeatureBuilder([shipments], leases, batch.parties, batch.screening_list,
                             load_reference(), stats)
    frame = builder.shipment_features(0) if kind == "shipment" else builder.lease_features()
    frame = frame.filter(pl.col("record_id") == record_id)
    layered, _ = _layers_and_risk(frame, model)
    return with_scheme_and_context(layered, model)


def _record_key(batch: Batch, dataset_dir, record_id: str, kind: str | None) -> str:
    if kind not in (None, "shipment", "lease"):
        raise UsageError(f"--kind {kind}: expected shipment or lease")
    keys = batch.batch_keys().filter(pl.col("record_id") == record_id)
    if kind:
        keys = keys.filter(pl.col("record_kind") == kind)
    if keys.height == 0:
        raise InputError(f"{dataset_dir}: no {kind or 'shipment or lease'} with id {record_id!r}")
    if keys.height > 1:
        raise UsageError(f"{record_id!r} is both a shipment and a lease id: add --kind")
    return keys["record_kind"][0]


def explain(dataset_dir: str | Path, record_id: str, kind: str | None = None,
            history_dirs: list[str | Path] = (), *, model_uri: str | None = None,
            screening_list: str | Path | None = None, scores: str | Path | None = None,
            log: Callable[[str], None] = lambda _: None) -> dict:
    """Why one record scored as it did: feature values, rule hits, contributions.

    With a model, only the records the record's features read are built and scored
    (`record_frame`); its rank in the batch then comes from ``scores`` (a scores table
    of this batch) when given, else it is not known. Without a model the fallback's
    detectors are fitted on the whole batch, which is scored to rank the record.
    """
    from detector.reasons import explain_record

    if kind not in (None, "shipment", "lease"):
        raise UsageError(f"--kind {kind}: expected shipment or lease")
    batch = load_batch(dataset_dir, history_dirs, screening_list)
    kind = _record_key(batch, dataset_dir, record_id, kind)
    model = load_model(model_uri, log)
    if model.fallback:
        scored = score_batch(batch, model, top=0)
        row = scored.frame.filter((pl.col("record_kind") == kind)
                                  & (pl.col("record_id") == record_id))
        return explain_record(row, scored, model)
    row = record_frame(batch, model, kind, record_id)
    rank = of = None
    if scores is not None:
        rank, of = _rank_in(scores, kind, record_id)
    return explain_record(row, None, model, of_records=of, rank=rank)


def _rank_in(scores: str | Path, kind: str, record_id: str) -> tuple[int | None, int]:
    path = Path(scores)
    if not path.is_file():
        raise InputError(f"--scores {path}: no such file")
    table = (pl.scan_parquet(path) if path.suffix.lower() == ".parquet"
             else pl.scan_csv(path, infer_schema=False))
    found = table.select(
        pl.len().alias("of"),
        pl.col("rank").filter((pl.col("record_kind") == kind)
                              & (pl.col("record_id") == record_id)).first().alias("rank")
    ).collect()
    rank = found["rank"][0]
    return (None if rank is None else int(rank)), int(found["of"][0])


def score_shipments_frame(shipments: pl.DataFrame, bundle, label: str) -> pl.DataFrame:
    """Score a bare frame of contract shipment columns with a bundle (the MLflow pyfunc).

    The frame may be raw (as ``pd.read_csv`` of a shipments file gives it) or typed; it
    is parsed and checked like a shipments file (`contract.read_frame`).
    """
    from detector.contract import LEASES, PARTIES, SHIPMENTS, read_frame
    from detector.reference import default_screening_list_path, load_reference, \
        read_screening_list
    from features.build import build_features
    from features.stats import FeatureStats

    shipments = read_frame(shipments, SHIPMENTS, "shipments frame")
    frame = build_features(shipments, pl.DataFrame(schema=LEASES.schema),
                           pl.DataFrame(schema=PARTIES.schema),
                           read_screening_list(default_screening_list_path()), load_reference(),
                           FeatureStats.from_dict(bundle.feature_stats))
    model = LoadedModel(bundle, label)
    top = min(frame.height, 1000)
    return scores_columns(score_frame(frame, model, top))


def _cut(text, width: int) -> str:
    text = "" if text is None else " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _money(value) -> str:
    if value is None:
        return "-"
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"${value / size:,.1f}{unit}"
    return f"${value:,.0f}"


def top_table(scored: Scored, n: int) -> str:
    """The top-N table printed on stdout: rank, risk, likely scheme, the record in a
    reader's terms (date, counterparty, destination, goods, quantity, value), reasons."""
    head = scored.frame.head(n)
    lines = [f"{'rank':>5}  {'kind':<8}  {'record_id':<16}  {'risk':>5}  {'likely scheme':<22}  "
             f"{'date':<10}  {'counterparty':<28}  {'dest':<4}  {'goods':<26}  {'qty':>5}  "
             f"{'value':>8}  reasons"]
    for r in head.iter_rows(named=True):
        scheme = r.get("likely_scheme") or ""
        if r.get("scheme_confidence") is not None:
            scheme += f" {r['scheme_confidence']:.2f}"
        quantity = "" if r.get("quantity") is None else f"{r['quantity']:,}"
        lines.append(
            f"{r['rank']:>5}  {r['record_kind']:<8}  {r['record_id']:<16}  "
            f"{r['risk_score']:5.3f}  {_cut(scheme, 22):<22}  "
            f"{str(r.get('record_date') or ''):<10}  {_cut(r.get('counterparty'), 28):<28}  "
            f"{r.get('destination') or '':<4}  {_cut(r.get('goods'), 26):<26}  {quantity:>5}  "
            f"{_money(r.get('value_usd')):>8}  {r['reasons'] or ''}")
    return "\n".join(lines)

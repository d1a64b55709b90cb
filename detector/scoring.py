"""`detector score` and `detector explain`: a batch plus a model → ranked risk with reasons.

Scoring is a stateless function of one batch and a loaded bundle, so it can run per
partition on another score_engine. Without a registered model it falls back to rules +
unsupervised detectors fitted on the batch itself, and says so.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from detector import engine as score_engine
from detector.batch import Batch, load_batch, read_batch
from detector.engine import (  # noqa: F401 (the API)
    FALLBACK_LABEL,
    LoadedModel,
    rank,
    scores_columns,
)
from detector.errors import InputError, UsageError
from detector.files import check_output_path, temporary_directory
from detector.progress import Progress
from detector.queue import (
    DEFAULT_CAPACITY,
    DEFAULT_EXPLORE,
    check_explore,
    explore_order,
    familiar_cells,
    mark_queue,
    parse_capacity,
    queue_summary,
)
from detector.settings import DEFAULT_CHUNK_ROWS
from detector.tables import Spill, write_quarantine

if TYPE_CHECKING:
    from detector.drift import DriftReport


def load_bundle_dir(directory: Path):
    from detector.models.ensemble import load_bundle

    return load_bundle(directory)


def import_while_reading(model_uri: str | None) -> threading.Thread:
    """Import the model's libraries (and mlflow, for a registry model) on a side thread,
    started before the batch is read: reading spends most of its time in polars, outside
    the GIL, so the imports' seconds overlap it instead of following it. An import that
    fails here fails again, with its message, where the model is loaded."""
    from detector.modelref import is_registry_uri

    def run() -> None:
        try:
            from detector.models.ensemble import import_model_libraries

            import_model_libraries()
            if model_uri is None or is_registry_uri(model_uri):
                import detector.tracking  # noqa: F401 (mlflow)
        except Exception:  # noqa: BLE001 - raised again by the import in load_model
            pass

    thread = threading.Thread(target=run, name="detector-imports", daemon=True)
    thread.start()
    return thread


def load_model(uri: str | None, log: Callable[[str], None] = lambda _: None) -> LoadedModel:
    """Resolve ``--model`` (or the default champion); None → the documented fallback.

    A local bundle directory loads without the tracking store (and without importing
    mlflow)."""
    from detector.modelref import is_registry_uri, local_bundle

    if uri is not None and not is_registry_uri(uri):
        bundle = load_bundle_dir(local_bundle(uri))
        return LoadedModel(bundle, str(Path(uri)),
                           {"name": None, "version": None, "run_id": None,
                            "metrics": bundle.metrics, "provenance": bundle.provenance})
    from detector import tracking

    resolved = tracking.resolve_model(uri)
    if resolved is None:
        log(f"no model registered as {tracking.DEFAULT_MODEL_URI} in {tracking.tracking_uri()}: "
            f"scoring with rules + unsupervised detectors fitted on this batch "
            f"(model = {FALLBACK_LABEL}); train one with `detector train`")
        return score_engine.fallback_model()
    bundle = load_bundle_dir(resolved.bundle_dir)
    info = {"name": resolved.name, "version": resolved.version, "run_id": resolved.run_id,
            "metrics": bundle.metrics, "provenance": bundle.provenance}
    return LoadedModel(bundle, resolved.label, info)


@dataclass
class Scored:
    """Scored records, sorted by rank: the scores table (`score`), or every record's
    features, layer scores, risk, rank and reasons (`score_batch`)."""

    frame: pl.DataFrame  # sorted by rank
    model: LoadedModel
    batch: Batch | None = None
    quarantined_rows: int = 0
    drift: object | None = None  # detector.drift.DriftReport after `score`

    def scores_table(self) -> pl.DataFrame:
        return scores_columns(self.frame)


def score_frame(frame: pl.DataFrame, model: LoadedModel, top: int) -> pl.DataFrame:
    """Layer scores, risk, rank and reasons for one feature frame (one part)."""
    return score_engine.score_parts([frame], model, top, keep=score_engine.keep_all).kept


def score_with_progress(records: score_engine.Records, model: LoadedModel, top: int,
                        progress: Progress, **options) -> score_engine.Scores:
    """`detector.engine.score_records` in two phases: the cross-record context, then the
    parts (features, layers, risk), ranking and reasons."""
    with progress.phase("features across records (names, ownership, windows, re-exports)"):
        parts = score_engine.feature_parts(records, model.feature_stats())
    with progress.phase(f"score with {model.label}", total=len(parts), unit="parts") as phase:
        records_seen = [0]

        def advance(done: int, total: int, records: int) -> None:
            records_seen[0] += records
            phase.advance(1, f"{records:,} records")

        scores = score_engine.score_parts(parts, model, top, progress=advance, **options)
        phase.finish(f"{records_seen[0]:,} records ranked"
                     + (f", reasons for the top {min(top, scores.table.height):,}" if top else ""))
    return scores


def score_records(batch: Batch, model: LoadedModel, top: int = 1000, *,
                  chunk_rows: int | None = None, spill_dir: Path | None = None,
                  progress: Progress | None = None,
                  observe: Callable[[pl.DataFrame], None] | None = None) -> Scored:
    """The batch's scores table, scored in parts of ``chunk_rows`` shipments (memory
    bounded by one part; the same scores however the batch is cut), with the
    unsupervised score kept for choosing the review queue (detector.queue).
    ``observe`` sees each layered part (drift counts, `detector.engine.score_parts`)."""
    records = batch.records(chunk_rows, spill_dir)
    scores = score_with_progress(records, model, top, progress or Progress.silent(),
                                 observe=observe)
    return Scored(scores.table, model, batch)


def score_batch(batch: Batch, model: LoadedModel, top: int = 1000) -> Scored:
    """Every record of the batch with its features, layer scores, risk, rank and reasons
    (the whole feature frame in memory: for evaluation and small batches)."""
    scores = score_engine.score_records(batch.records(), model, top,
                                       keep=score_engine.keep_all)
    return Scored(scores.kept, model, batch)


def score(dataset_dir: str | Path, out: str | Path, history_dirs: list[str | Path] = (), *,
          model_uri: str | None = None, quarantine: str | Path | None = None, top: int = 1000,
          screening_list: str | Path | None = None, engine: str = "local",
          scheduler: str | None = None, chunk_rows: int | None = None,
          capacity: str = DEFAULT_CAPACITY, explore: float = DEFAULT_EXPLORE,
          log: Callable[[str], None] = lambda _: None,
          progress: Progress | None = None) -> Scored:
    """Score every shipment and lease of a dataset and write the scores table.

    The review queue (``capacity`` records, a share ``explore`` of them chosen for
    learning; detector.queue) is marked in ``queue_reason``. ``log`` receives notices
    (the fallback, the queue); ``progress`` the phases of the work.

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
    progress = progress or Progress.silent()
    # A batch of more than one part waits on disk (a temporary folder) from the moment
    # its rows pass validation until it is scored (detector.tables.Spill).
    with temporary_directory("score") as spill:
        importing = import_while_reading(model_uri)
        batch = read_batch(progress, dataset_dir, history_dirs, screening_list,
                           allow_errors=quarantine is not None,
                           spill=Spill(spill, chunk_rows or DEFAULT_CHUNK_ROWS), log=log)
        with progress.phase("load model") as phase:
            importing.join()
            model = load_model(model_uri, log)
            phase.finish(model.label)
        # drift counts of the model inputs and risk, taken as each part is scored (locally)
        counts = drift_counts(model) if engine != "dask" else None
        observe = None if counts is None else counts.add
        records = batch.records(chunk_rows, spill)
        hold = hold_on_disk(records, spill)
        if engine == "dask":
            from detector.distributed import dask_client, dask_mapper

            with dask_client(scheduler, log) as client:
                scores = score_with_progress(records, model, top, progress,
                                             mapper=dask_mapper(client), hold=hold)
        else:
            scores = score_with_progress(records, model, top, progress, observe=observe,
                                         hold=hold)
        scored = Scored(scores.table, model, batch)
        scored.frame = mark_queue(scored.frame, capacity, explore,
                                  supervised=not model.fallback,
                                  familiar=familiar_cells(model), order=explore_order(model))
        log(queue_summary(scored.frame))
        provenance = {**batch.provenance, "model": model.label,
                      "capacity": capacity, "explore": explore,
                      "model_run_id": model.info.get("run_id"),
                      "records": scored.frame.height,
                      "quarantined_rows": batch.dataset.quarantined_rows}
        with progress.phase(f"write {out}") as phase:
            if quarantine is not None and batch.dataset.quarantined:
                write_quarantine(batch.dataset, quarantine)
            write_scores(scored.scores_table(), out, provenance)
            phase.finish(f"{scored.frame.height:,} scores")
        scored.drift = check_drift(batch, model, counts, log)
    scored.quarantined_rows = batch.dataset.quarantined_rows
    # A large batch's shipments were moved to the temporary folder just removed: do not
    # hand out a batch whose frames point there.
    scored.batch = None
    return scored


def spill_rows(directory: Path) -> Callable[[pl.DataFrame], Callable[[], pl.DataFrame]]:
    """`detector.engine.score_parts`' ``hold`` for a batch of several parts: each part's
    rows for the ranking wait in a Parquet file in ``directory`` (exact: same types and
    values), so memory holds one part, not every part's rows (10M: about 1.5 GiB)."""
    count = [0]

    def hold(rows: pl.DataFrame) -> Callable[[], pl.DataFrame]:
        path = directory / f"ranking-{count[0]:05d}.parquet"
        count[0] += 1
        rows.write_parquet(path, compression="lz4")
        return lambda: pl.read_parquet(path)

    return hold


def hold_on_disk(records, spill: Path) \
        -> Callable[[pl.DataFrame], Callable[[], pl.DataFrame]] | None:
    """For a batch of several parts, what waits in ``spill`` while the parts are scored:
    the cross-record frame (sets ``records.hold_context``, `spill_context`) and each
    part's ranking rows (the hold returned, `spill_rows`, for `score_parts`). One part:
    both stay in memory (None)."""
    if len(records.shipment_parts) <= 1:
        return None
    records.hold_context = spill_context(spill)
    return spill_rows(spill)


def spill_context(directory: Path) -> Callable[[pl.DataFrame], Callable[[], pl.LazyFrame]]:
    """`detector.engine.Records`' ``hold_context`` for a batch of several parts: the
    cross-record frame waits in a Parquet file in ``directory`` (exact: same types and
    values), in row groups about a part's size, and each part scans its slice of it, so
    memory does not hold it while the parts are scored and ranked (10M: about 1.9 GiB)."""

    def hold(frame: pl.DataFrame) -> Callable[[], pl.LazyFrame]:
        path = directory / "cross-record.parquet"
        frame.write_parquet(path, compression="lz4", row_group_size=250_000)
        return lambda: pl.scan_parquet(path)

    return hold


def drift_counts(model: LoadedModel):
    """Bin counters for the batch's model inputs (detector.drift); None without a
    trained model or without stored training distributions."""
    from detector.drift import PROFILE_KEY, InputCounts

    profile = None if model.fallback else (model.bundle.provenance or {}).get(PROFILE_KEY)
    return InputCounts(profile) if profile else None


def check_drift(batch: Batch, model: LoadedModel, counts, log: Callable[[str], None]):
    """How the scored batch differs from the model's training data: alerts on stderr,
    figures to MLflow (detector.drift.check_batch). None for the fallback."""
    if model.fallback:
        return None
    from detector.drift import check_batch

    return check_batch(batch, model, counts, log=log)


def drift(dataset_dir, history_dirs=(), *, model_uri: str | None = None,
          screening_list=None, log: Callable[[str], None] = lambda _: None) -> DriftReport:
    """`detector drift DIR`: score the batch with the model and compare it with the
    model's training data."""
    from detector.drift import PROFILE_KEY, InputCounts, check_batch

    batch = load_batch(dataset_dir, history_dirs, screening_list, log=log)
    model = load_model(model_uri, log)
    if model.fallback:
        raise InputError("no trained model to compare with: drift needs the training "
                         "distributions a trained model stores (train one, or give --model)")
    profile = (model.bundle.provenance or {}).get(PROFILE_KEY)
    counts = None
    chips = None
    if profile:
        counts = InputCounts(profile)
        # scored by the one engine; the counts see each part's inputs and risk
        score_engine.score_records(batch.records(), model, top=0, observe=counts.add)
    return check_batch(batch, model, counts, frame_chips=chips, log=log)


def write_scores(table: pl.DataFrame, out: Path, provenance: dict) -> None:
    """The scores table, and beside it ``<out>.provenance.json`` tracing it to its inputs.

    Both are written in full before either replaces anything: a failure leaves the
    previous pair as it was.
    """
    from detector.files import atomic_write_many
    from detector.tables import table_writer

    sidecar = out.with_name(out.name + ".provenance.json")
    write_scores_file = table_writer(table, out)

    def write(tmps: list[Path]) -> None:
        write_scores_file(tmps[0])
        tmps[1].write_text(json.dumps(provenance, indent=2, default=str))

    atomic_write_many([out, sidecar], write)


def record_frame(batch: Batch, model: LoadedModel, kind: str, record_id: str) -> pl.DataFrame:
    """One record's feature frame, layer scores, risk and likely scheme, scored by the
    engine from only the records its features read (features.neighbourhood), not the
    whole batch: what `detector explain` needs in about a second. A model is required
    (the fallback's detectors are fitted on the whole batch).

    The case memory reads the parties, route and product of every decided record
    (`Batch.scoring_labels`), so those records come along as context too: the record then
    counts the same decisions as when the whole batch is scored."""
    from detector.reference import load_reference

    labels = batch.scoring_labels
    decided = (pl.DataFrame(schema={"record_kind": pl.String, "record_id": pl.String})
               if labels is None else labels.select("record_kind", "record_id"))
    decided_shipments = decided.filter(pl.col("record_kind") == "shipment")["record_id"]
    decided_leases = decided.filter(pl.col("record_kind") == "lease")["record_id"]
    if kind == "shipment":
        around = batch.shipment_index().around(record_id)
        # the record alone in the first part, the only one whose features are built; its
        # neighbours are the context its cross-record features read
        one = pl.col("shipment_id") == record_id
        parts = [around.filter(one), around.filter(~one)]
        leases = batch.leases.filter(pl.col("lease_id").is_in(decided_leases.implode()))
        near = around["shipment_id"]
    else:
        parts = [batch.shipments.clear()]
        leases = batch.leases.filter((pl.col("lease_id") == record_id)
                                     | pl.col("lease_id").is_in(decided_leases.implode()))
        near = pl.Series([], dtype=pl.String)
    if decided_shipments.len():
        context = batch.shipments.lazy().filter(
            pl.col("shipment_id").is_in(decided_shipments.implode())
            & ~pl.col("shipment_id").is_in(near.implode())).collect()
        if context.height:
            parts.append(context)
    records = score_engine.Records(parts, leases, batch.parties, batch.screening_list,
                                   load_reference(), labels=labels)
    return score_engine.score_record(records, model, kind, record_id)


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
    # A batch of more than one part waits on disk once validated: only the columns the
    # neighbourhood index reads, and the record's neighbourhood, come back (Spill).
    with temporary_directory("explain") as spill:
        batch = load_batch(dataset_dir, history_dirs, screening_list,
                           spill=Spill(spill, DEFAULT_CHUNK_ROWS), log=log)
        kind = _record_key(batch, dataset_dir, record_id, kind)
        model = load_model(model_uri, log)
        if model.fallback:
            scored = score_engine.score_records(
                batch.records(), model, top=0, keep=score_engine.keep_record(kind, record_id))
            return explain_record(scored.kept, scored.table.height, model)
        row = record_frame(batch, model, kind, record_id)
    position = of = None
    if scores is not None:
        position, of = _rank_in(scores, kind, record_id)
    return explain_record(row, of, model, rank=position)


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
    position = found["rank"][0]
    return (None if position is None else int(position)), int(found["of"][0])


def score_shipments_frame(shipments: pl.DataFrame, bundle, label: str) -> pl.DataFrame:
    """Score a bare frame of contract shipment columns with a bundle (as the MLflow
    pyfunc does), with the shipped screening list.

    The frame may be raw (as ``pd.read_csv`` of a shipments file gives it) or typed; it
    is parsed and checked like a shipments file (`contract.read_frame`).
    """
    from detector.reference import default_screening_list_path, load_reference, read_screening_list

    return score_engine.score_shipments(shipments, LoadedModel(bundle, label),
                                        read_screening_list(default_screening_list_path()),
                                        load_reference())


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

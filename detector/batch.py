"""A batch to score or train on: one dataset, its history, the screening list, provenance."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from detector.contract import RECORD_TABLES
from detector.engine import Records
from detector.errors import InputError, UsageError
from detector.progress import Progress
from detector.settings import DEFAULT_CHUNK_ROWS
from detector.tables import Dataset, Spill, height, read_dataset

if TYPE_CHECKING:
    from detector.decisions import DecisionStore


@dataclass
class Batch:
    dataset: Dataset
    history: list[Dataset]
    shipments: pl.DataFrame | pl.LazyFrame  # the dataset's and the history's, each once
    leases: pl.DataFrame
    parties: pl.DataFrame  # history first, the dataset's row wins for a repeated party_id
    screening_list: pl.DataFrame
    screening_source: str
    fingerprint: str
    reference_version: str
    provenance: dict = field(default_factory=dict)
    # notices (the case memory's count of stored decisions, `scoring_labels`)
    log: Callable[[str], None] = field(default=lambda _: None, repr=False)
    # the decision store the case memory reads at scoring (`scoring_labels`); None: the
    # default one, `$DETECTOR_HOME/decisions.sqlite`
    decisions: DecisionStore | None = field(default=None, repr=False)

    def records(self, chunk_rows: int | None = None, spill_dir: Path | None = None):
        """The batch as the scoring engine's records: its own shipments in parts of
        ``chunk_rows`` (default `DEFAULT_CHUNK_ROWS`; scored), the history's shipments
        (context), every lease (its own scored). With ``spill_dir`` and more than one
        part, the own shipments are moved there first (`_spill_own_shipments`)."""
        return _records(self, chunk_rows, spill_dir)

    def shipment_index(self):
        """The batch's features.neighbourhood.ShipmentIndex, prepared on first use and kept:
        each record `explain` builds then pays only for its own neighbourhood."""
        if getattr(self, "_shipment_index", None) is None:
            from features.neighbourhood import ShipmentIndex

            self._shipment_index = ShipmentIndex(self.shipments, self.parties)
        return self._shipment_index

    @cached_property
    def scoring_labels(self) -> pl.DataFrame | None:
        """The decisions the case memory counts at scoring, besides those stored with the
        model: the labels of the --history datasets and the decision store's (the latest
        decision per record, `detector.decisions.DecisionStore.labels`), one per record,
        the latest ``decided_on`` winning and, on equal dates, the stored decision (as
        training's `detector.decisions.merge_labels`). The scored dataset's own labels file
        is not used. None: no such decision.

        The one place every scoring path takes them from (score, explain, report, review,
        drift through `Batch.records`, `feature_frame` and `record_frame`), read from
        ``decisions`` once per batch (a cached property). Only decisions about records of
        the batch or its history can count (the case memory needs the record's parties,
        route and product); the others are counted and left out. How many counted goes to ``batch.log`` and ``batch.provenance``. The
        features count a decision only for records dated after it (features.case_memory).
        """
        return _scoring_labels(self)

    def batch_keys(self) -> pl.DataFrame:
        """(record_kind, record_id) of the records being scored: the dataset's own."""
        return pl.concat([
            self.dataset.shipments.lazy().select(pl.lit("shipment").alias("record_kind"),
                                                 pl.col("shipment_id").alias("record_id")),
            self.dataset.leases.lazy().select(pl.lit("lease").alias("record_kind"),
                                              pl.col("lease_id").alias("record_id")),
        ]).collect()


def fingerprint(datasets: list[Dataset]) -> str:
    """sha256 over the bytes of every table file read, in a fixed order."""
    digest = hashlib.sha256()
    for ds in datasets:
        for name in sorted(ds.files):
            digest.update(name.encode())
            with open(ds.files[name], "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


def _combine_records(dataset: Dataset, history: list[Dataset], kind: str
                     ) -> pl.DataFrame | pl.LazyFrame:
    table = RECORD_TABLES[kind]
    if not history:  # one dataset: reading checked its ids
        return getattr(dataset, table.name)
    frames = [getattr(ds, table.name) for ds in [dataset, *history]]
    # diagonal: datasets may carry different extra columns (a column one lacks is null)
    if any(isinstance(f, pl.LazyFrame) for f in frames):  # the dataset's, spilled
        combined = pl.concat([f.lazy() for f in frames], how="diagonal_relaxed")
        ids = combined.select(table.id_column).collect().to_series()
    else:
        combined = pl.concat(frames, how="diagonal_relaxed")
        ids = combined[table.id_column]
    repeated = ids.filter(ids.is_duplicated())
    if repeated.len():
        raise InputError(
            f"{table.id_column}: {repeated.n_unique()} id(s) appear both in {dataset.directory} "
            f"and in a --history dataset (records never repeat across them): "
            f"{repeated.unique(maintain_order=True).head(5).to_list()}")
    return combined


def load_batch(dataset_dir: str | Path, history_dirs: list[str | Path] = (),
               screening_list: str | Path | None = None, *,
               allow_errors: bool = False, spill: Spill | None = None,
               log: Callable[[str], None] | None = None,
               decisions: DecisionStore | None = None) -> Batch:
    """Read the dataset and its history, resolve the screening list, fingerprint the inputs.

    With ``spill``, the dataset's shipments, if longer than ``spill.over_rows``, wait on
    disk as they pass validation (`detector.tables.Spill`). ``log`` receives the batch's
    notices (`Batch.scoring_labels`); ``decisions``: the decision store its case memory
    reads (None: the default one under ``$DETECTOR_HOME``)."""
    from detector.reference import load_reference, resolve_screening_list

    dataset = read_dataset(dataset_dir, allow_errors=allow_errors, spill=spill)
    history = [read_dataset(d) for d in history_dirs]
    parties = (
        pl.concat([ds.parties for ds in [*history[::-1], dataset]])
        .unique("party_id", keep="last", maintain_order=True)
    )
    sl, sl_source = resolve_screening_list(
        Path(screening_list) if screening_list else None, dataset.screening_list)
    reference = load_reference()
    fp = fingerprint([dataset, *history])
    return Batch(
        dataset=dataset,
        history=history,
        shipments=_combine_records(dataset, history, "shipment"),
        leases=_combine_records(dataset, history, "lease"),
        parties=parties,
        screening_list=sl,
        screening_source=sl_source,
        fingerprint=fp,
        reference_version=reference.version,
        provenance={
            "dataset": str(Path(dataset_dir).resolve()),
            "history": [str(Path(d).resolve()) for d in history_dirs],
            "data_fingerprint": fp,
            "screening_list": sl_source,
            "reference_version": reference.version,
        },
        log=log or (lambda _: None),
        decisions=decisions,
    )


def read_batch(progress: Progress, dataset_dir: str | Path,
               history_dirs: list[str | Path] = (), screening_list: str | Path | None = None,
               *, allow_errors: bool = False, spill: Spill | None = None,
               log: Callable[[str], None] | None = None) -> Batch:
    """`load_batch` as a phase of the work."""
    with progress.phase(f"read {dataset_dir}" + (f" and {len(history_dirs)} history "
                                                 "dataset(s)" if history_dirs else "")) as phase:
        batch = load_batch(dataset_dir, history_dirs, screening_list,
                           allow_errors=allow_errors, spill=spill, log=log)
        phase.finish(f"{height(batch.dataset.shipments):,} shipments, "
                     f"{batch.dataset.leases.height:,} leases, "
                     f"{batch.parties.height:,} parties")
    return batch


def _history_labels(batch: Batch) -> pl.DataFrame | None:
    frames = [h.labels for h in batch.history if h.labels.height]
    return pl.concat(frames, how="diagonal_relaxed") if frames else None


def _scoring_labels(batch: Batch) -> pl.DataFrame | None:
    from detector.contract import LABELS
    from detector.decisions import DecisionStore, merge_labels

    history = _history_labels(batch)
    store = batch.decisions if batch.decisions is not None else DecisionStore()
    stored = store.labels()
    if stored.height == 0:  # no store, or nothing decided: the history's labels alone
        return history
    decided = stored.select("record_kind", "record_id")
    shipments = decided.filter(pl.col("record_kind") == "shipment")["record_id"]
    leases = decided.filter(pl.col("record_kind") == "lease")["record_id"]
    # the stored records the batch holds (own or history), found without reading every id
    present = pl.concat([
        batch.shipments.lazy().select(pl.col("shipment_id").alias("record_id"))
        .filter(pl.col("record_id").is_in(shipments.implode()))
        .select(pl.lit("shipment").alias("record_kind"), "record_id"),
        batch.leases.lazy().select(pl.col("lease_id").alias("record_id"))
        .filter(pl.col("record_id").is_in(leases.implode()))
        .select(pl.lit("lease").alias("record_kind"), "record_id"),
    ]).collect()
    base = history if history is not None else pl.DataFrame(schema=LABELS.schema)
    labels, counts = merge_labels(base, stored, present)
    batch.provenance["case_memory_stored_decisions"] = {
        "history_labels": counts.dataset, "stored": counts.stored,
        "stored_used": counts.stored_used, "stored_overriding": counts.stored_overriding,
        "stored_elsewhere": counts.stored_elsewhere}
    batch.log(f"case memory: {counts.stored_used} of {counts.stored} stored decisions about "
              f"this batch and its history count ({counts.stored_overriding} overriding a "
              f"different --history label; {counts.stored_elsewhere} about other records, "
              f"not used), with {counts.dataset} --history labels; each counts only for "
              "records dated after it")
    return labels


def feature_frame(batch: Batch, stats=None, *, labels: pl.DataFrame | None = None,
                  memory_out: dict | None = None) -> pl.DataFrame:
    """The feature frame of the batch's own records (history is context only).

    ``labels`` feed the case memory (training: every label known); None: those of
    `scoring_labels` (scoring)."""
    from detector.reference import load_reference
    from features.build import build_features

    frame = build_features(batch.shipments, batch.leases, batch.parties, batch.screening_list,
                           load_reference(), stats,
                           labels=batch.scoring_labels if labels is None else labels,
                           memory_out=memory_out)
    return frame.join(batch.batch_keys(), on=["record_kind", "record_id"], how="semi") \
        .sort(["record_kind", "record_id"])


def _parts(frame: pl.DataFrame | pl.LazyFrame, rows: int) -> list:
    return [frame.slice(start, rows) for start in range(0, height(frame), rows)]


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


def _records(batch: Batch, chunk_rows: int | None, spill_dir: Path | None):
    """The batch as the engine's records: its own shipments in parts of ``chunk_rows``
    (scored), the history's shipments (context), every lease (its own scored).

    With ``spill_dir`` and more than one part, the batch's own shipments are moved there
    first (`_spill_own_shipments`)."""
    from detector.reference import load_reference

    chunk_rows = DEFAULT_CHUNK_ROWS if chunk_rows is None else chunk_rows
    if chunk_rows < 1:
        raise UsageError(f"--chunk-rows {chunk_rows}: expected a count of 1 or more")
    if spill_dir is not None and isinstance(batch.dataset.shipments, pl.DataFrame) \
            and batch.dataset.shipments.height > chunk_rows:
        own = _spill_own_shipments(batch, chunk_rows, spill_dir)
    else:
        own = _parts(batch.dataset.shipments, chunk_rows)
    context = [p for ds in batch.history for p in _parts(ds.shipments, chunk_rows)]
    return Records([*own, *context], batch.leases, batch.parties, batch.screening_list,
                   load_reference(), scored_parts=len(own),
                   scored_lease_ids=batch.dataset.leases["lease_id"],
                   labels=batch.scoring_labels)

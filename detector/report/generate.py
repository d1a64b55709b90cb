"""`detector report` end to end: read the batch, score it (the report month's review queue
with full reasons), compare it with the model's training data, build the page, write it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl

from detector.errors import UsageError
from detector.queue import (
    cell_expr,
    check_explore,
    explore_order,
    explore_slots,
    explore_value,
    familiar_cells,
    familiarity,
    mark_queue,
    novelty_order,
    parse_capacity,
    unsureness,
)
from detector.report.cards import CARD_FEATURES, KEY
from detector.report.data import among, parse_period, period_keys, report_months, report_period
from detector.report.render import build_report, write_report


def queue_candidates(frame: pl.DataFrame, capacities: dict[str, int], supervised: bool,
                      explore: float = 0.0, familiar: dict[str, int] | None = None,
                      order: str = "lists") -> pl.DataFrame:
    """The rows of ``frame`` (one part of the scored records) that can be in their month's
    review queue (detector.queue.choose_queue), ties in rank order:

    - by risk: in each month, the first ``capacities[month]``: a record the queue takes
      by risk has fewer than the capacity ahead of it, so also within its part;
    - to explore (least sure when supervised: p(1-p); new to the model: unusualness;
      each over the square root of its cell's familiarity): the queue spreads these
      lists over cells, so a record it takes is among the first (explore slots x 2 +
      records by risk) of its month and cell in that list's order; so also within its
      part. With ``order`` ``value`` (a supervised model's `explore_order`), the same for
      the one list by risk x unusualness / familiarity ** 0.25.
    """
    # chosen on the columns the queue reads, then gathered: the wide part is not sorted
    ranked = frame.select("risk_score", "record_kind", "record_id", "record_date",
                          "destination", "unsupervised_score").with_row_index("__i") \
        .sort(["risk_score", "record_kind", "record_id"], descending=[True, False, False])
    month = pl.col("record_date").dt.strftime("%Y-%m")
    first = pl.int_range(pl.len()).over(month) < month.replace_strict(capacities, default=0)
    kept = [ranked.filter(first)]
    slots = {m: explore_slots(c, explore) for m, c in capacities.items()}
    if explore > 0 and any(slots.values()):
        reach = {m: c + slots[m] for m, c in capacities.items()}
        within = pl.int_range(pl.len()).over(month, cell_expr()) < month.replace_strict(
            reach, default=0)
        # The same sort values as choose_queue, or a record it takes could be cut here.
        known = None if familiar is None else familiarity(ranked, familiar)
        values = [novelty_order(ranked["unsupervised_score"].to_numpy(), known)]
        if supervised:
            values.append(unsureness(ranked["risk_score"].to_numpy(), known))
        if supervised and order == "value":
            values.append(explore_value(ranked["risk_score"].to_numpy(),
                                        ranked["unsupervised_score"].to_numpy(), known))
        orders = [ranked.with_columns(__order=pl.Series(v))
                  .sort("__order", descending=True, maintain_order=True).drop("__order")
                  for v in values]
        kept += [o.filter(within) for o in orders]
    chosen = pl.concat(kept).unique(["record_kind", "record_id"], maintain_order=True)
    return frame[chosen["__i"]]


def with_queue(table: pl.DataFrame, review: pl.DataFrame, full: pl.Series) -> pl.DataFrame:
    """``table`` (every record, by rank: row i has rank i + 1) with ``queue_reason`` and
    the full reasons ``full`` set on the rows of ``review`` (by rank); the other rows'
    reasons as they are, their queue_reason null. Two columns are made, the others are
    ``table``'s own (a join would copy every column of every record)."""
    at = review["rank"] - 1
    if not table.select(KEY).gather(at).equals(review.select(KEY)):
        raise RuntimeError("report: the scores table is not in rank order")
    reasons = table["reasons"]
    full = pl.select(pl.coalesce(full, reasons.gather(at))).to_series()
    queue = pl.repeat(None, table.height, dtype=pl.String, eager=True).alias("queue_reason")
    return table.with_columns(reasons.clone().scatter(at, full),
                              queue.scatter(at, review["queue_reason"].cast(pl.String)))


def generate_report(dataset_dir: str | Path, out: str | Path,
                    history_dirs: Sequence[str | Path] = (), *, model_uri: str | None = None,
                    period: str | None = None, capacity: str = "1%",
                    explore: float = 0.0, screening_list: str | Path | None = None,
                    log: Callable[[str], None] = lambda _: None,
                    progress=None) -> Path:
    """`detector report`: score the dataset, build the page, write HTML or PDF atomically.

    ``log`` receives notices, ``progress`` (detector.progress.Progress) the phases."""
    from detector import engine
    from detector.batch import read_batch
    from detector.files import temporary_directory
    from detector.progress import Progress
    from detector.scoring import (
        check_drift,
        drift_counts,
        hold_on_disk,
        load_model,
        score_with_progress,
    )
    from detector.settings import DEFAULT_CHUNK_ROWS
    from detector.tables import Spill

    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm", ".pdf"):
        raise UsageError(f"--out {out}: the report must end in .html or .pdf")
    if period is not None:
        parse_period(period)
    parse_capacity(capacity, 1)
    check_explore(explore)
    progress = progress or Progress.silent()
    # A batch of more than one part waits on disk from the moment its rows pass
    # validation (detector.tables.Spill), and so do its parts' rows for the ranking.
    with temporary_directory("report") as spill:
        batch = read_batch(progress, dataset_dir, history_dirs, screening_list,
                           spill=Spill(spill, DEFAULT_CHUNK_ROWS), log=log)
        with progress.phase("load model") as phase:
            model = load_model(model_uri, log)
            phase.finish(model.label)
        # The period's review queue (detector.queue: by risk, plus a share to explore) gets
        # full reasons and cards: the engine keeps each part's candidates for it. Only that
        # month's, so a large batch keeps a month's candidates, not every month's.
        # Only the months present and the period's keys are held: not every record's month.
        period = report_period(report_months(batch.dataset), period, batch.dataset.directory)
        in_period = period_keys(batch.dataset, period)
        capacities = {period: parse_capacity(capacity, in_period.height)}
        supervised = not model.fallback
        familiar = familiar_cells(model)
        order = explore_order(model)
        counts = drift_counts(model)  # the batch's model inputs and risk, binned while scoring
        records = batch.records()
        scores = score_with_progress(
            records, model, 0, progress, hold=hold_on_disk(records, spill),
            keep=lambda layered: queue_candidates(layered, capacities, supervised, explore,
                                                   familiar, order),
            observe=None if counts is None else counts.add)
        with progress.phase("reasons for the month's review queue") as phase:
            # the period's rows of the table, in rank order (a filter: the table not copied)
            queue = mark_queue(scores.table.filter(among(in_period)), capacity, explore,
                               supervised=supervised, familiar=familiar, order=order) \
                .filter(pl.col("queue_reason").is_not_null()).select(*engine.KEY, "queue_reason")
            review = scores.kept.join(queue, on=engine.KEY, how="inner").sort("rank")
            if review.height != queue.height:  # queue_candidates must hold every queue row
                raise RuntimeError(f"report: {queue.height - review.height} queue rows missing "
                                   "from the scored candidates")
            full = pl.Series("_full", scores.reasons(review), dtype=pl.String)
            phase.finish(f"{review.height:,} records")
        scores = engine.scores_columns(with_queue(scores.table, review, full))
        model_info = None
        if not model.fallback:
            from detector import tracking

            metrics = model.info.get("metrics") or {}
            if model.info.get("run_id"):
                metrics = tracking.run_info(model.info["run_id"])["metrics"] or metrics
            model_info = {"name": model.info.get("name") or model.label,
                          "version": model.info.get("version") or "",
                          "run_id": model.info.get("run_id"), "metrics": metrics,
                          "trained_on": (model.info.get("provenance") or {}).get("dataset")}
        with progress.phase("compare the batch with the model's training data") as phase:
            drift = check_drift(batch, model, counts, log)  # None for the fallback
            phase.finish("no model" if drift is None else f"{len(drift.alerts)} alert(s)")
        with progress.phase("build the page"):
            html = build_report(batch.dataset, scores, model_info=model_info, period=period,
                                capacity=capacity, history=batch.history,
                                provenance={**batch.provenance, "model": model.label},
                                scored_rows=review.select(*engine.KEY, *CARD_FEATURES),
                                drift=drift)
        with progress.phase(f"write {out}"):
            return write_report(html, out)


"""What the review page shows and does, without the web framework.

A `ReviewSession` holds one scored batch in memory: the scores table (from a file
written by `detector score`, or scored once when the page starts) joined with each
record's context (date, counterparty, destination, goods, quantity, value). A queue page
is a filter, a sort and a slice of that table plus the latest stored decisions, so
nothing is rescored per request. A case page adds the record's explanation (feature
values, contributions, rule hits) from one scoring of the batch kept in memory, and
the parties, ownership chain, route and re-export trail the risk report's case cards
show (detector.report).

Decisions go through detector.decisions (validated there) into the append-only store.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from detector.decisions import (
    CONFIRM,
    DECISION_TEXT,
    DECISIONS,
    KNOWN_SCHEMES,
    DecisionStore,
    make_decision,
)
from detector.errors import InputError, UsageError
from detector.queue import EXPLORE, RISK, explore_order, familiar_cells, mark_queue

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
STATUSES = ("undecided", *DECISIONS)  # filter values
STATUS_TEXT = {"undecided": "undecided", **DECISION_TEXT}
BANDS = {"high": (0.9, None), "elevated": (0.5, 0.9), "low": (None, 0.5)}
BAND_TEXT = {"high": "0.9 and above", "elevated": "0.5 to 0.9", "low": "below 0.5"}
SORTS = {"rank": ("rank", False), "risk": ("risk_score", True), "date": ("record_date", True),
         "value": ("value_usd", True), "counterparty": ("counterparty", False),
         "destination": ("destination", False)}
SCOPES = ("queue", "all")
KEY = ["record_kind", "record_id"]
FEATURES_SHOWN = 15


@dataclass
class QueueQuery:
    """The queue page's parameters, validated (bad values are errors, not guesses)."""

    scope: str = "queue"
    kind: str | None = None
    destination: str | None = None
    status: str | None = None
    band: str | None = None
    scheme: str | None = None
    party: str | None = None
    sort: str = "rank"
    page: int = 1
    per_page: int = PAGE_SIZE

    @classmethod
    def parse(cls, params: dict[str, str]) -> QueueQuery:
        def pick(name: str, allowed) -> str | None:
            value = (params.get(name) or "").strip() or None
            if value is not None and value not in allowed:
                raise InputError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")
            return value

        def number(name: str, default: int, high: int) -> int:
            text = (params.get(name) or "").strip()
            if not text:
                return default
            if not text.isdigit() or not 1 <= int(text) <= high:
                raise InputError(f"{name}: expected a whole number from 1 to {high}, "
                                 f"got {text!r}")
            return int(text)

        def text(name: str) -> str | None:
            value = (params.get(name) or "").strip()
            return value[:200] or None

        return cls(scope=pick("scope", SCOPES) or "queue", kind=pick("kind", ("shipment", "lease")),
                   destination=text("destination"), status=pick("status", STATUSES),
                   band=pick("band", BANDS), scheme=text("scheme"), party=text("party"),
                   sort=pick("sort", SORTS) or "rank", page=number("page", 1, 10**9),
                   per_page=number("per_page", PAGE_SIZE, MAX_PAGE_SIZE))

    def params(self, **override) -> dict[str, str]:
        """The query as URL parameters (for links that change one thing)."""
        values = {"scope": self.scope, "kind": self.kind, "destination": self.destination,
                  "status": self.status, "band": self.band, "scheme": self.scheme,
                  "party": self.party, "sort": self.sort, "page": self.page,
                  "per_page": self.per_page} | override
        return {k: str(v) for k, v in values.items()
                if v is not None and not (k == "page" and v == 1)
                and not (k == "per_page" and v == PAGE_SIZE)
                and not (k == "sort" and v == "rank") and not (k == "scope" and v == "queue")}


@dataclass
class QueuePage:
    rows: list[dict]
    total: int
    page: int
    pages: int
    query: QueueQuery
    destinations: list[str]
    schemes: list[str]
    counts: dict[str, int]


def record_context(shipments: pl.DataFrame, leases: pl.DataFrame) -> pl.DataFrame:
    """Each record's context for a reader, in the scores table's v2 column names."""
    return pl.concat([
        shipments.select(
            pl.lit("shipment").alias("record_kind"), pl.col("shipment_id").alias("record_id"),
            pl.col("export_date").alias("record_date"),
            pl.col("consignee_name").alias("counterparty"),
            pl.col("destination_country").alias("destination"),
            pl.col("description").alias("goods"), pl.col("quantity"), pl.col("value_usd"),
            pl.col("consignee_country").alias("counterparty_country")),
        leases.select(
            pl.lit("lease").alias("record_kind"), pl.col("lease_id").alias("record_id"),
            pl.col("start_date").alias("record_date"),
            pl.col("lessee_name").alias("counterparty"),
            pl.col("datacenter_country").alias("destination"),
            pl.col("gpu_model").alias("goods"), pl.col("gpu_count").alias("quantity"),
            pl.col("value_usd"), pl.col("lessee_country").alias("counterparty_country")),
    ], how="vertical_relaxed")


def with_chip_columns(table: pl.DataFrame, features: pl.DataFrame) -> pl.DataFrame:
    """The queue table plus the recognised chip model and whether it is controlled
    (from the feature frame), so the queue can say what the goods are."""
    chips = features.select(*KEY, pl.col("chip_model"),
                            pl.col("chip_controlled").cast(pl.Boolean, strict=False))
    return table.join(chips, on=KEY, how="left", maintain_order="left")


def read_scores(path: Path) -> pl.DataFrame:
    """A scores table written by `detector score` (CSV or Parquet), typed."""
    from detector.contract import SCORES

    if not path.is_file():
        raise InputError(f"--scores {path}: file not found")
    if path.suffix.lower() == ".parquet":
        frame = pl.read_parquet(path)
    elif path.suffix.lower() == ".csv":
        frame = pl.read_csv(path, infer_schema=False)
    else:
        raise UsageError(f"--scores {path}: expected a .csv or .parquet scores file")
    required = [c.name for c in SCORES.columns if c.required]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise InputError(f"--scores {path}: not a scores table; missing column(s) {missing}")
    casts = []
    for name, dtype in SCORES.schema.items():
        if name not in frame.columns:
            casts.append(pl.lit(None, dtype).alias(name))
        elif dtype == pl.Date:
            casts.append(pl.col(name).cast(pl.String).str.to_date("%Y-%m-%d", strict=False))
        else:
            casts.append(pl.col(name).cast(dtype, strict=False))
    typed = frame.select(casts)
    bad = typed.filter(pl.col("risk_score").is_null() | pl.col("rank").is_null())
    if bad.height:
        raise InputError(f"--scores {path}, columns risk_score/rank: {bad.height} rows without "
                         f"a number, e.g. {bad['record_id'].head(5).to_list()}")
    if frame["reasons"].dtype == pl.String:  # CSV cells were neutralised with a leading '
        typed = typed.with_columns(pl.col("reasons").fill_null(""))
    return typed.sort("rank")


class ReviewSession:
    """One batch under review: the queue table, explanations, case context, decisions."""

    def __init__(self, batch, scores: pl.DataFrame, model, *, store: DecisionStore,
                 analyst: str | None = None, scored=None, dataset_dir: Path | None = None,
                 log: Callable[[str], None] = lambda _: None):
        self.batch = batch
        self.model = model
        self.store = store
        self.analyst = analyst
        self.dataset_dir = dataset_dir
        self.log = log
        self._scored = scored  # detector.scoring.Scored with every feature, or None (lazy)
        self._lock = threading.Lock()
        self._order_lock = threading.Lock()
        self._orders: dict[str, pl.Series] = {}
        self._registry = None
        context = record_context(batch.dataset.shipments, batch.dataset.leases)
        table = scores.join(context, on=KEY, how="left", suffix="_ctx", maintain_order="left")
        for name in ("record_date", "counterparty", "destination", "goods", "quantity",
                     "value_usd"):
            if f"{name}_ctx" in table.columns:  # the scores' own value first (v2 columns)
                table = table.with_columns(pl.coalesce(name, f"{name}_ctx").alias(name)) \
                    .drop(f"{name}_ctx")
        missing = table.filter(pl.col("counterparty_country").is_null())
        if missing.height:
            raise InputError(f"scores: {missing.height} scored records are not in "
                             f"{dataset_dir}, e.g. {missing['record_id'].head(5).to_list()}; "
                             "give the dataset the scores were made from")
        table = table.with_columns(
            first_reasons=pl.col("reasons").fill_null("").str.split("; ").list.head(2)
            .list.join("; ")).sort("rank")
        # replaced whole (never changed in place) when the chip columns arrive: requests
        # read whichever table is current
        self.table = table if scored is None else with_chip_columns(table, scored.frame)
        # what the queue filters and sorts on, with each row's position in self.table
        self.index = table.select(
            *KEY, "queue_reason", "destination", "risk_score", "rank", "record_date",
            "value_usd", "counterparty", "likely_scheme").with_row_index("__row")
        self.records = self.table.height
        self.destinations = sorted(d for d in self.table["destination"].unique().to_list() if d)
        self.has_schemes = self.table["likely_scheme"].is_not_null().any()
        # the likely schemes named in each scope (the filter's choices)
        self._schemes = {scope: (self.index if scope == "all" else self.index.filter(
            pl.col("queue_reason").is_not_null()))["likely_scheme"].drop_nulls().unique()
            .to_list() for scope in SCOPES}

    # ------------------------------------------------------------------ queue

    def statuses(self) -> pl.DataFrame:
        latest = self.store.latest()
        return latest.select(*KEY, pl.col("decision").alias("status"),
                             pl.col("typology").alias("decided_scheme"),
                             pl.col("analyst").alias("decided_by"),
                             pl.col("decided_at"))

    def queue_page(self, query: QueueQuery) -> QueuePage:
        """One page of the queue: a mask over a narrow index of the table, the positions
        in the sort's order that pass it (computed once per sort), then only the page's
        rows gathered from the wide table. The decisions (few) are placed by position,
        never joined to every row, so a 1M-row batch stays fast."""
        index = self.index
        n = index.height
        scope = index["queue_reason"].is_not_null() if query.scope == "queue" else None
        decided = self.statuses().join(index.select(*KEY, "__row"), on=KEY, how="inner")
        if scope is not None:
            decided = decided.filter(scope.gather(decided["__row"]))
        in_scope = n if scope is None else int(scope.sum())
        counts = dict(decided.group_by("status").len().iter_rows())
        if in_scope - decided.height:
            counts["undecided"] = in_scope - decided.height
        schemes = sorted({*self._schemes[query.scope],
                          *decided["decided_scheme"].drop_nulls().to_list()})
        conditions = [] if scope is None else [scope]
        if query.kind:
            conditions.append(index["record_kind"] == query.kind)
        if query.destination:
            conditions.append(index["destination"] == query.destination.upper())
        if query.status or query.scheme:
            status = self._by_position(decided, "status", n)
        if query.status == "undecided":
            conditions.append(status.is_null())
        elif query.status:
            conditions.append((status == query.status).fill_null(False))
        if query.band:
            low, high = BANDS[query.band]
            if low is not None:
                conditions.append((index["risk_score"] >= low).fill_null(False))
            if high is not None:
                conditions.append((index["risk_score"] < high).fill_null(False))
        if query.scheme:
            scheme = self._by_position(decided, "decided_scheme", n)
            conditions.append((index["likely_scheme"] == query.scheme).fill_null(False)
                              | (scheme == query.scheme).fill_null(False))
        if query.party:
            conditions.append((index["counterparty"] == query.party).fill_null(False))
        mask = None
        for condition in conditions:
            mask = condition if mask is None else mask & condition
        if query.sort == "rank":  # the table is in rank order
            rows = index["__row"] if mask is None else index["__row"].filter(mask)
        else:
            order = self.order(query.sort)
            rows = order if mask is None else order.filter(mask.gather(order))
        total = rows.len()
        pages = max(1, math.ceil(total / query.per_page))
        page = min(query.page, pages)
        shown = rows.slice((page - 1) * query.per_page, query.per_page)
        wide = self.table[shown]
        marks = wide.select(*KEY).join(
            decided.select(*KEY, "status", "decided_scheme", "decided_by"), on=KEY,
            how="left", maintain_order="left")
        rows_out = []
        for row, status in zip(wide.to_dicts(), marks.select(
                "status", "decided_scheme", "decided_by").to_dicts()):
            row.update(status, status_text=STATUS_TEXT[status["status"] or "undecided"])
            rows_out.append(row)
        return QueuePage(rows_out, total, page, pages, query, self.destinations, schemes,
                         counts)

    @staticmethod
    def _by_position(decided: pl.DataFrame, column: str, n: int) -> pl.Series:
        """``column`` of the decisions at their rows' positions, null elsewhere."""
        return pl.repeat(None, n, dtype=pl.String, eager=True).alias(column) \
            .scatter(decided["__row"], decided[column].cast(pl.String))

    def order(self, sort: str) -> pl.Series:
        """Row positions of the table in ``sort`` order (ties by rank), computed once:
        a page sorted by value then filters an ordered index instead of sorting 1M rows."""
        with self._order_lock:
            if sort not in self._orders:
                column, descending = SORTS[sort]
                self._orders[sort] = self.index.sort(
                    [column, "rank"], descending=[descending, False],
                    nulls_last=True)["__row"]
            return self._orders[sort]

    # ------------------------------------------------------------------ case

    def row(self, kind: str, record_id: str) -> dict:
        if kind not in ("shipment", "lease"):
            raise KeyError(kind)
        found = self.table.filter((pl.col("record_kind") == kind)
                                  & (pl.col("record_id") == record_id))
        if found.height == 0:
            raise KeyError(record_id)
        return found.row(0, named=True)

    def scored(self):
        """The batch scored once with every feature (for explanations), on first use."""
        with self._lock:
            if self._scored is None:
                from detector.scoring import score_batch

                self.log("scoring the batch once for case explanations")
                self._scored = score_batch(self.batch, self.model, top=0)
            if "chip_controlled" not in self.table.columns:
                self.table = with_chip_columns(self.table, self._scored.frame)
            return self._scored

    def prepare_in_background(self) -> threading.Thread:
        """Score the batch for explanations and index its parties while the queue is
        already served, so the first case page does not wait for them."""
        def work():
            for sort in SORTS:
                if sort != "rank":
                    self.order(sort)
            self.scored()
            self.registry()
            self.log("case pages ready")

        thread = threading.Thread(target=work, name="review-prepare", daemon=True)
        thread.start()
        return thread

    def registry(self):
        with self._lock:
            if self._registry is None:
                from detector.report.cards import build_registry

                self._registry = build_registry(self.batch.dataset, self.batch.history)
            return self._registry

    def explanation(self, kind: str, record_id: str) -> dict:
        from detector.reasons import explain_record

        scored = self.scored()
        row = scored.frame.filter((pl.col("record_kind") == kind)
                                  & (pl.col("record_id") == record_id))
        explained = explain_record(row, scored.frame.height, self.model)
        # the features that matter: a contribution, or a value that is a red flag; like
        # explain's drivers, never a null or another kind's feature
        features = [f for f in explained["features"] if f["applies"] and (
                    (f["contribution"] is not None and abs(f["contribution"]) >= 0.005)
                    or (f["contribution"] is None and f["reason"]))]
        features.sort(key=lambda f: -abs(f["contribution"] or 0.0))
        explained["features_shown"] = features[:FEATURES_SHOWN]
        explained["features_hidden"] = max(0, len(features) - FEATURES_SHOWN)
        return explained

    def case(self, kind: str, record_id: str) -> dict:
        """Everything the case page shows for one record."""
        from detector.report.cards import lease_card, shipment_card

        row = self.row(kind, record_id)
        # the parties scoring resolved (the same scored frame the explanation reads)
        scored = self.scored().frame.filter((pl.col("record_kind") == kind)
                                            & (pl.col("record_id") == record_id))
        scored = scored.row(0, named=True) if scored.height else None
        if kind == "shipment":
            raw = self.batch.dataset.shipments.filter(pl.col("shipment_id") == record_id) \
                .row(0, named=True)
            card = shipment_card(raw, {}, self.registry(), scored)
        else:
            raw = self.batch.dataset.leases.filter(pl.col("lease_id") == record_id) \
                .row(0, named=True)
            card = lease_card(raw, {}, self.registry(), scored)
        entity = self.table.filter((pl.col("counterparty") == row["counterparty"])
                                   & ~((pl.col("record_kind") == kind)
                                       & (pl.col("record_id") == record_id))) \
            .join(self.statuses(), on=KEY, how="left").sort("record_date")
        earlier_keys = entity.select(KEY)
        history = self.store.history()
        earlier_decisions = history.join(earlier_keys, on=KEY, how="semi").sort("id",
                                                                                 descending=True)
        past_filings = self._history_filings(kind, row)
        return {
            "row": row, "raw": raw, "card": card,
            "explanation": self.explanation(kind, record_id),
            "decisions": history.filter((pl.col("record_kind") == kind)
                                        & (pl.col("record_id") == record_id))
            .sort("id", descending=True).to_dicts(),
            "status": self._status(kind, record_id),
            "entity_records": entity.head(50).to_dicts(),
            "entity_more": max(0, entity.height - 50),
            "entity_decisions": earlier_decisions.head(50).to_dicts(),
            "past_filings": past_filings,
        }

    def _history_filings(self, kind: str, row: dict) -> list[dict]:
        """The counterparty's filings in the --history datasets (context, not scored)."""
        out = []
        for ds in self.batch.history:
            if kind == "shipment":
                part = ds.shipments.filter(pl.col("consignee_name") == row["counterparty"]) \
                    .select(pl.col("shipment_id").alias("record_id"),
                            pl.col("export_date").alias("record_date"),
                            pl.col("destination_country").alias("destination"),
                            pl.col("description").alias("goods"), "value_usd")
            else:
                part = ds.leases.filter(pl.col("lessee_name") == row["counterparty"]) \
                    .select(pl.col("lease_id").alias("record_id"),
                            pl.col("start_date").alias("record_date"),
                            pl.col("datacenter_country").alias("destination"),
                            pl.col("gpu_model").alias("goods"), "value_usd")
            out.extend(part.to_dicts())
        return sorted(out, key=lambda r: str(r["record_date"]))[-50:]

    def _status(self, kind: str, record_id: str) -> str | None:
        latest = self.store.history(kind, record_id)
        if latest.height == 0:
            return None
        from detector.decisions import latest_per_record

        return latest_per_record(latest)["decision"][0]

    # ------------------------------------------------------------------ decide

    def decide(self, kind: str, record_id: str, form: dict[str, str]):
        """Validate and store one decision from the case page's form."""
        row = self.row(kind, record_id)  # KeyError: not a record of this batch
        decision = (form.get("decision") or "").strip()
        scheme = (form.get("scheme") or "").strip()
        other = (form.get("scheme_other") or "").strip()
        if scheme == "other":
            scheme = other
        elif scheme and scheme not in KNOWN_SCHEMES:
            raise InputError(f"scheme: expected one of {', '.join(KNOWN_SCHEMES)} or other, "
                             f"got {scheme!r}")
        analyst = (form.get("analyst") or "").strip() or self.analyst
        stored = make_decision(kind, record_id, decision, analyst,
                               typology=scheme if decision == CONFIRM else None,
                               note=form.get("note"), model=row["model"],
                               risk_score=row["risk_score"], source="review")
        self.store.add([stored])
        return stored

    def export_labels(self) -> pl.DataFrame:
        return self.store.labels()


def open_review(dataset_dir: str | Path, *, scores_path: str | Path | None = None,
                history_dirs=(), model_uri: str | None = None, capacity: str = "1%",
                explore: float = 0.1, screening_list=None, analyst: str | None = None,
                store: DecisionStore | None = None,
                log: Callable[[str], None] = lambda _: None) -> ReviewSession:
    """Load (or score) the batch and build the session the page serves."""
    from detector.batch import load_batch
    from detector.queue import check_explore, parse_capacity
    from detector.scoring import FALLBACK_LABEL, load_model, score_batch, scores_columns

    parse_capacity(capacity, 1)
    check_explore(explore)
    store = store if store is not None else DecisionStore()
    # the store the page writes to is the one its scoring's case memory reads
    batch = load_batch(dataset_dir, history_dirs, screening_list, log=log,
                       decisions=store)
    scored = None
    if scores_path is not None:
        scores = read_scores(Path(scores_path))
        labels = scores["model"].drop_nulls().unique().to_list()
        if model_uri is None and len(labels) == 1 and labels[0] != FALLBACK_LABEL:
            model_uri = f"models:/{labels[0]}"  # explain with the model that scored the file
        model = load_model(model_uri, log)
        if scores["queue_reason"].is_null().all():
            scores = mark_queue(scores, capacity, explore, supervised=not model.fallback,
                                familiar=familiar_cells(model), order=explore_order(model))
        log(f"{scores.height} scores from {scores_path}")
    else:
        model = load_model(model_uri, log)
        log(f"scoring {batch.dataset.shipments.height} shipments and "
            f"{batch.dataset.leases.height} leases with {model.label}")
        scored = score_batch(batch, model, top=1000)
        scored.frame = mark_queue(scored.frame, capacity, explore,
                                  supervised=not model.fallback,
                                  familiar=familiar_cells(model), order=explore_order(model))
        scores = scores_columns(scored.frame)
    return ReviewSession(batch, scores, model, store=store, analyst=analyst,
                         scored=scored, dataset_dir=Path(dataset_dir), log=log)


__all__ = ["EXPLORE", "KNOWN_SCHEMES", "RISK", "QueueQuery", "ReviewSession", "open_review"]

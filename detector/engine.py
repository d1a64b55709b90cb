"""The scoring engine: parts of records plus a scorer in, scored frames out.

Every path that scores goes through `score_records` (records not yet featurised) or
`score_parts` (feature frames, or functions that build them):

- `detector score` maps over parts of the batch locally (memory follows one part);
- `--engine dask` passes its own map, which runs the per-part step on a cluster;
- the MLflow pyfunc hands one in-memory part (`score_shipments`);
- `detector report` scores the batch and keeps the rows it shows;
- `detector explain` scores one record from the records its features read
  (`score_record`; the fallback, fitted on the whole batch, scores the batch).

Per part: features (`features.build.FeatureBuilder`, cross-record context computed once
over every part), then the model layers and risk (`layer`, a pure per-row step). Then,
once, over every record: the ranking, full reasons for the top N (the global top N is
among the parts' top N, so only those rows are kept), rule labels for the rest.

"Bundle or fallback" is decided in one place (`LoadedModel.scorer`), and so are the
feature statistics (`LoadedModel.feature_stats`). No I/O here: callers read datasets,
load models (detector.scoring, detector.tracking) and write tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import polars as pl

from detector.contract import SCORES

FALLBACK_LABEL = "rules+unsupervised"
KEY = ["record_kind", "record_id"]
# What the engine computes for every record: the scores table's own columns, and the
# unsupervised score (the review queue chooses records to explore by it).
# What the scores table keeps of each record besides its key, risk and rule hits.
CONTEXT_COLUMNS = ("likely_scheme", "scheme_confidence", "record_date", "counterparty",
                   "destination", "goods", "quantity", "value_usd")
TABLE_COLUMNS = ["record_kind", "record_id", "risk_score", "rank", "reasons", "model",
                 *CONTEXT_COLUMNS, "unsupervised_score"]
# Context texts that repeat across records: held as categoricals while the parts are
# scored (a 10M batch's names and descriptions would otherwise be held once per record),
# text again in the table.
REPEATED_TEXT = ("likely_scheme", "counterparty", "destination", "goods")


def scores_columns(frame: pl.DataFrame) -> pl.DataFrame:
    """The contract's scores columns of ``frame``, in order and type; v2 columns the frame
    does not carry (yet: `queue_reason` until a review queue fills it) are null."""
    return frame.select(pl.col(c).cast(t) if c in frame.columns else pl.lit(None, t).alias(c)
                        for c, t in SCORES.schema.items())


def with_scheme_and_context(layered: pl.DataFrame, model: LoadedModel) -> pl.DataFrame:
    """The scores table's v2 columns for a layered part (same rows, same order): the
    likely scheme (detector.schemes: the bundle's scheme model, else the rule families)
    and the context a reader needs (date, counterparty, destination, goods, quantity,
    value)."""
    from detector.schemes import scheme_columns

    if "likely_scheme" not in layered.columns:
        layered = layered.hstack(scheme_columns(layered, model.scheme_model))
    return layered.with_columns(
        pl.col("counterparty_name").alias("counterparty"),
        pl.coalesce(pl.col("destination_country"), pl.col("lessee_country"))
        .alias("destination"),
        pl.col("declared_quantity").cast(pl.Int64).alias("quantity"))


@dataclass
class LoadedModel:
    """What scores: a loaded bundle, or (bundle None) the fallback of rules + unsupervised
    detectors fitted on the records being scored."""

    bundle: object | None  # detector.models.ensemble.ModelBundle
    label: str  # NAME/VERSION, a directory, or rules+unsupervised
    info: dict = field(default_factory=dict)

    @property
    def fallback(self) -> bool:
        return self.bundle is None

    @property
    def scheme_model(self):
        """The bundle's scheme model (detector.models.scheme); None for the fallback or a
        bundle without one (the rule families then decide the likely scheme)."""
        return None if self.fallback else getattr(self.bundle, "scheme_model", None)

    def feature_stats(self):
        """The statistics features are built with: the bundle's (learned in training), or
        None (the neutral defaults of features.stats) for the fallback."""
        if self.fallback:
            return None
        from features.stats import FeatureStats

        return FeatureStats.from_dict(self.bundle.feature_stats)

    def scorer(self, population: Callable[[], pl.DataFrame]):
        """The fitted risk model: the bundle's, or the fallback fitted on ``population()``
        (called only for the fallback)."""
        if not self.fallback:
            return self.bundle.model
        from detector.models.ensemble import FallbackModel
        from features.registry import model_feature_names

        return FallbackModel(model_feature_names()).fit(population())


def fallback_model() -> LoadedModel:
    return LoadedModel(None, FALLBACK_LABEL)


# ----------------------------------------------------------------------------- steps

def layer(frame: pl.DataFrame, scorer) -> pl.DataFrame:
    """The stateless per-part step: rule, unsupervised and risk columns for ``frame``
    (same rows, same order). Runs wherever a mapper sends it."""
    layered = scorer.layers(frame)
    return layered.with_columns(risk_score=pl.Series(scorer.risk(layered), dtype=pl.Float64))


def rank(frame: pl.DataFrame) -> pl.DataFrame:
    """Highest risk first; ties broken by record_kind, then record_id (DATA_CONTRACT.md)."""
    return frame.sort(["risk_score", "record_kind", "record_id"],
                      descending=[True, False, False]).with_row_index("rank", offset=1) \
        .with_columns(pl.col("rank").cast(pl.Int64))


def _rank_in_place(frame: pl.DataFrame) -> pl.DataFrame:
    """`rank` of ``frame``, which it empties: the order is found on the keys alone and
    the columns are put in it one at a time, so the batch's rows are never held twice."""
    order = rank(frame.select("risk_score", *KEY).with_row_index("__i"))["__i"]
    columns = [frame.drop_in_place(name).gather(order) for name in list(frame.columns)]
    ranked = pl.DataFrame(columns)
    return ranked.with_columns(
        pl.int_range(1, ranked.height + 1, dtype=pl.Int64).alias("rank"))


def _owned(rows: pl.DataFrame) -> pl.DataFrame:
    """``rows`` (a few rows gathered or filtered from a part) in buffers of their own.

    Their text columns are views into the part's text buffers, which would otherwise
    stay alive with them (at 10M shipments, every part's texts until the ranking). A
    round trip through Arrow IPC in memory copies only these rows'
    values (exactly: same types, same bits)."""
    import io

    buffer = io.BytesIO()
    rows.write_ipc(buffer)
    buffer.seek(0)
    return pl.read_ipc(buffer)


def _top_rows(layered: pl.DataFrame, top: int) -> pl.DataFrame:
    """The ``top`` highest-ranked rows of a part, in buffers of their own (`_owned`)."""
    keys = layered.select("risk_score", *KEY).with_row_index("__i")
    order = rank(keys)["__i"].head(top)  # ranked on the keys alone, not the wide frame
    return _owned(layered[order])


def _rule_mask_labels(masks: pl.Series) -> pl.DataFrame:
    """rule_mask -> rule-label text (`detector.reasons.rule_labels`), once per mask."""
    from detector.reasons import rule_labels
    from features.rules import rule_hits_by_mask

    return rule_hits_by_mask(masks).select(
        "rule_mask", rule_labels(pl.col("rule_hits")).alias("reasons"))


# A mapper applies the per-part step to each part: mapper(layer, frames, scorer) yields
# layer(frame, scorer) for each frame, in order. Locally a lazy generator, so one part's
# features are in memory at a time; Dask submits them to a cluster.
Mapper = Callable[[Callable, Iterable[pl.DataFrame], object], Iterable[pl.DataFrame]]


def local_mapper(step: Callable, frames: Iterable[pl.DataFrame], scorer
                 ) -> Iterable[pl.DataFrame]:
    return (step(frame, scorer) for frame in frames)


# ----------------------------------------------------------------------------- result

@dataclass
class Scores:
    """What the engine computed.

    ``table``: every record's `TABLE_COLUMNS` (the scores table's own columns and the
    unsupervised score), by rank.
    ``kept``: the full rows (features, layer scores, risk, rank, reasons, model) of the
    records the caller's ``keep`` chose, by rank. ``scorer``: the fitted risk model,
    for reasons of kept rows beyond the top N (`reasons`).
    """

    table: pl.DataFrame
    kept: pl.DataFrame
    model: LoadedModel
    scorer: object

    def reasons(self, rows: pl.DataFrame) -> list[str]:
        """Full reasons (contributions, flags, rule hits) for rows of ``kept``."""
        from detector.reasons import full_reasons

        return full_reasons(rows, self.scorer, self.model.fallback,
                            scheme_model=self.model.scheme_model)


Part = Callable[[], pl.DataFrame]  # builds one part's feature frame when called


def _fallback_population(parts: Sequence[Part], cached: dict[int, pl.DataFrame]
                         ) -> pl.DataFrame:
    """The rows the fallback is fitted on: every record's features sorted by
    (record_kind, record_id), or the unsupervised layer's sample of them, gathered part
    by part (the same rows and order as one frame of every record would give). With at
    most two parts their frames are kept in ``cached`` for scoring."""
    from detector.models.unsupervised import UnsupervisedEnsemble
    from features.registry import model_feature_names

    keys = []
    for i, part in enumerate(parts):
        frame = part()
        if len(parts) <= 2:
            cached[i] = frame
        keys.append(frame.select(KEY))
    keys = pl.concat(keys).sort(KEY)
    rows = UnsupervisedEnsemble(model_feature_names()).fit_rows(keys.height)
    wanted = keys if rows is None else keys[rows]
    gathered = [(cached[i] if i in cached else part()).join(wanted, on=KEY, how="semi")
                for i, part in enumerate(parts)]
    return pl.concat(gathered, how="vertical_relaxed").sort(KEY)


def score_parts(parts: Sequence[Part | pl.DataFrame], model: LoadedModel, top: int = 1000, *,
                keep: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
                mapper: Mapper = local_mapper,
                progress: Callable[[int, int, int], None] | None = None,
                observe: Callable[[pl.DataFrame], None] | None = None,
                hold: Callable[[pl.DataFrame], Part] | None = None) -> Scores:
    """Score records given as parts of the feature frame (frames, or functions that
    build one); the parts together hold each record once.

    ``keep(layered_part)`` returns the rows of a part whose full frames the caller wants
    back (`Scores.kept`); by default none. ``progress(done, total, records)`` is called
    after each part; ``observe(layered_part)`` sees each part's features, layer scores
    and risk (drift counts: detector.drift.InputCounts.add). ``hold(rows)`` keeps each
    part's narrow rows for the ranking and returns a function that gives them back; by
    default they stay in memory (`detector score` puts a large batch's on disk).
    """
    from detector.reasons import full_reasons
    from features.rules import rule_mask

    if top < 0:
        raise ValueError(f"top {top}: expected a count of 0 or more")
    thunks: list[Part] = [p if callable(p) else (lambda p=p: p) for p in parts]
    cached: dict[int, pl.DataFrame] = {}
    scorer = model.scorer(lambda: _fallback_population(thunks, cached))

    def frames():
        for i, part in enumerate(thunks):
            frame = cached.pop(i, None)
            yield part() if frame is None else frame

    hold = hold or (lambda rows: (lambda: rows))
    slim, heads, kept = [], [], []
    for n, layered in enumerate(mapper(layer, frames(), scorer), 1):
        if observe is not None:
            observe(layered)
        layered = with_scheme_and_context(layered, model)
        rows = layered.select(
            "record_kind", "record_id", "risk_score", "unsupervised_score", rule_mask(),
            *(pl.col(c).cast(pl.Categorical) if c in REPEATED_TEXT else pl.col(c)
              for c in CONTEXT_COLUMNS))
        slim.append(hold(rows))
        heads.append(_top_rows(layered, top))
        if keep is not None:
            chosen = keep(layered)
            kept.append(chosen if chosen.height == layered.height else _owned(chosen))
        del layered
        if progress is not None:
            progress(n, len(thunks), rows.height)
        del rows
    ranked = _rank_in_place(pl.concat([held() for held in slim]))
    del slim
    head = ranked.head(top).select(*KEY, "rank").join(
        pl.concat(heads, how="vertical_relaxed"), on=KEY, how="left").sort("rank")
    del heads
    head_reasons = pl.Series(full_reasons(head, scorer, model.fallback,
                                          scheme_model=model.scheme_model), dtype=pl.String)
    labels = _rule_mask_labels(ranked["rule_mask"])
    # the rule labels by a look-up, not a join (the other columns are not copied), and the
    # top N's full reasons over them, in one column
    table = ranked.with_columns(
        *(pl.col(c).cast(pl.String) for c in REPEATED_TEXT),
        reasons=pl.when(pl.col("rank") <= top).then(
            pl.lit(head_reasons.extend_constant(None, ranked.height - head.height)))
        .otherwise(pl.col("rule_mask").replace_strict(
            labels["rule_mask"], labels["reasons"], default=None, return_dtype=pl.String)),
        model=pl.lit(model.label)).select(TABLE_COLUMNS)
    del ranked
    if kept:
        rows = pl.concat(kept, how="vertical_relaxed")
        kept_frame = table.select(*KEY, "rank", "reasons", "model").join(
            rows, on=KEY, how="inner").sort("rank")
        # the layered columns first, as a ranked feature frame reads
        kept_frame = kept_frame.select("rank", *rows.columns, "reasons", "model")
    else:
        kept_frame = pl.DataFrame()
    return Scores(table, kept_frame, model, scorer)


# ----------------------------------------------------------------------------- records

@dataclass
class Records:
    """Records to score and their context, already read (no I/O happens here).

    ``shipment_parts``: the shipments in parts (frames or lazy frames, any cut); the
    first ``scored_parts`` of them are scored, the rest are context only (history).
    ``leases``: every lease (scored and context); ``scored_lease_ids`` the ids of those
    scored (None: all). ``reference``: detector.reference.Reference.
    """

    shipment_parts: list
    leases: pl.DataFrame
    parties: pl.DataFrame
    screening_list: pl.DataFrame | None
    reference: object
    scored_parts: int | None = None
    scored_lease_ids: pl.Series | None = None
    # decisions the case memory may count besides the model's own (--history labels)
    labels: pl.DataFrame | None = None
    # where the cross-record frame waits while the parts are built (FeatureBuilder's
    # ``hold``); None: in memory
    hold_context: Callable[[pl.DataFrame], Callable[[], pl.LazyFrame]] | None = None


def feature_parts(records: Records, stats) -> list[Part]:
    """The scored records' feature frames, as parts built on demand: the leases first,
    then each scored shipment part. Cross-record features see every record."""
    from features.build import FeatureBuilder

    builder = FeatureBuilder(records.shipment_parts, records.leases, records.parties,
                             records.screening_list, records.reference, stats,
                             records.labels, hold=records.hold_context)
    scored = len(records.shipment_parts) if records.scored_parts is None \
        else records.scored_parts

    def leases() -> pl.DataFrame:
        frame = builder.lease_features()
        if records.scored_lease_ids is None:
            return frame
        return frame.join(records.scored_lease_ids.rename("record_id").to_frame(),
                          on="record_id", how="semi")

    return [leases, *[(lambda i=i: builder.shipment_features(i)) for i in range(scored)]]


def score_records(records: Records, model: LoadedModel, top: int = 1000, *,
                  keep: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
                  mapper: Mapper = local_mapper,
                  progress: Callable[[int, int, int], None] | None = None,
                  observe: Callable[[pl.DataFrame], None] | None = None) -> Scores:
    """Build features part by part (with the model's statistics) and score them."""
    return score_parts(feature_parts(records, model.feature_stats()), model, top,
                       keep=keep, mapper=mapper, progress=progress, observe=observe)


def keep_all(layered: pl.DataFrame) -> pl.DataFrame:
    return layered


def keep_record(kind: str, record_id: str) -> Callable[[pl.DataFrame], pl.DataFrame]:
    """``keep`` for one record (`detector explain`)."""
    return lambda layered: layered.filter((pl.col("record_kind") == kind)
                                          & (pl.col("record_id") == record_id))


def score_record(records: Records, model: LoadedModel, kind: str, record_id: str
                 ) -> pl.DataFrame:
    """One record's full row (features, layer scores, risk, likely scheme, context),
    built from ``records``, which need hold only the records its features read
    (features.neighbourhood); only that record is layered. Its rank among those
    records means nothing, so the row has none. Needs a bundle: the fallback's
    detectors are fitted on every record of a batch."""
    from features.build import FeatureBuilder

    if model.fallback:
        raise ValueError("score_record: expected a trained model; the fallback is fitted "
                         "on the whole batch (score it with score_records)")
    # only the first shipment part (or the leases) is built: the rest is context
    builder = FeatureBuilder(records.shipment_parts, records.leases, records.parties,
                             records.screening_list, records.reference, model.feature_stats(),
                             records.labels, built_parts=1)
    only = keep_record(kind, record_id)

    def part() -> pl.DataFrame:
        frame = builder.lease_features() if kind == "lease" else builder.shipment_features(0)
        return only(frame)

    kept = score_parts([part], model, top=0, keep=keep_all).kept
    return kept.drop("rank", "reasons", "model")


def shipments_records(shipments: pl.DataFrame, screening_list: pl.DataFrame | None,
                      reference) -> Records:
    """A frame of contract shipment columns as one in-memory part (the pyfunc): no
    leases, no party registry (parties resolved by name only). The frame may be raw (as
    ``pd.read_csv`` of a shipments file gives it) or typed; it is parsed and checked like
    a shipments file (`contract.read_frame`)."""
    from detector.contract import LEASES, PARTIES, SHIPMENTS
    from detector.tables import read_frame

    shipments = read_frame(shipments, SHIPMENTS, "shipments frame")
    return Records([shipments], pl.DataFrame(schema=LEASES.schema),
                   pl.DataFrame(schema=PARTIES.schema), screening_list, reference)


def score_shipments(shipments: pl.DataFrame, model: LoadedModel,
                    screening_list: pl.DataFrame | None, reference,
                    top: int = 1000) -> pl.DataFrame:
    """The scores table of a bare shipments frame (the MLflow pyfunc's predict)."""
    records = shipments_records(shipments, screening_list, reference)
    return scores_columns(
        score_records(records, model, min(top, records.shipment_parts[0].height)).table)

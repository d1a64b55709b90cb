"""Behaviour over time and re-export linkage.

Time windows are computed from per-key cumulative sums looked up with `join_asof`:
the total over dates in [a, b] is cum(b) - cum(a - 1 day), where cum(t) is the running
total of the key's events dated on or before t. This is exact, vectorised, and never
sees a row dated after the right edge of the window.

Same-date rule (documented choice): backward windows cover the dates up to and
*including* the record's own date, minus the record itself, so shipments filed the same
day see each other symmetrically (and the result does not depend on row order); "prior
history" (first shipment, history mean) uses strictly earlier dates only, so two
same-day first shipments are both first. No backward feature ever reads a later date.

Re-export linkage is retrospective and looks forward on purpose (DATA_CONTRACT.md
"Time"): a consignee that later exports controlled goods to D:5/HK/MO under its own
name is evidence about the shipment it received.
"""

from __future__ import annotations

import polars as pl

SPLITTING_WINDOW_DAYS = 14
REEXPORT_WINDOW_DAYS = 90


def _daily_cumulative(events: pl.LazyFrame, key: str, sums: list[str]) -> pl.LazyFrame:
    """key, __event_date, __cum_n and __cum_<col>: running totals per key through each
    date, in date order."""
    # sorted by date alone: each key's days are then in date order, which is all its
    # running sum needs (the same additions in the same order as a sort by key and date)
    return (
        events.group_by(key, "__event_date")
        .agg(pl.len().cast(pl.Float64).alias("__n"), *[pl.col(c).fill_null(0).sum() for c in sums])
        .sort("__event_date")
        .select(key, "__event_date",
                *[pl.col(c).cum_sum().over(key).alias(f"__cum_{c}") for c in ["__n", *sums]])
    )


def cumulative_at(records: pl.LazyFrame, events: pl.LazyFrame, key: str, sums: list[str],
                  offsets: dict[str, int], *, sorted_by_date: bool = False) -> pl.LazyFrame:
    """For each record and each named offset (days from record_date), the key's running
    totals through record_date + offset: columns `<name>_n` and `<name>_<col>` (0 if none).

    ``records`` must have `record_id`, `record_date` and ``key``; ``events`` must have
    ``key``, `__event_date` and the ``sums`` columns. The result has ``records``' columns
    then the totals. With ``sorted_by_date`` (``records`` already in record_date order),
    its rows are ``records``' rows in their order, so a caller puts the totals beside its
    own columns without a join back; otherwise they are sorted by record_date.
    """
    cum = _daily_cumulative(events, key, sums)
    # every offset shifts all dates by the same days, so one sort by date serves them all,
    # and the look-ups (join_asof keeps the left order) line up row for row
    if not sorted_by_date:
        records = records.select("record_id", key, "record_date").sort("record_date")
    cols = ["__n", *sums]
    looked = [
        records.select(key, (pl.col("record_date") + pl.duration(days=days)).alias("__at"))
        .join_asof(cum, left_on="__at", right_on="__event_date", by=key,
                   strategy="backward", check_sortedness=False)
        .select(*[pl.col(f"__cum_{c}").fill_null(0.0).alias(f"{name}_{c.strip('_')}")
                  for c in cols])
        for name, days in offsets.items()
    ]
    return pl.concat([records, *looked], how="horizontal")


def consignee_history(base: pl.LazyFrame) -> pl.LazyFrame:
    """Backward-looking counts and values per consignee (key `consignee_key`).

    ``base``: record_id, record_date, consignee_key, value_usd, in record_date order (the
    result's rows are ``base``'s, in its order).
    """
    base = base.select("record_id", "record_date", "consignee_key", "value_usd")
    events = base.select("consignee_key", pl.col("record_date").alias("__event_date"),
                         "value_usd")
    cum = cumulative_at(base, events, "consignee_key", ["value_usd"],
                        {"through_d": 0, "before_d": -1, "before_30": -30, "before_90": -90},
                        sorted_by_date=True)
    # the key's first date (a null key never has an earlier shipment: prior_n is 0)
    first_date = pl.col("record_date").min().over("consignee_key")
    own_value = pl.col("value_usd").fill_null(0.0)
    prior_n = pl.col("before_d_n")
    return cum.select(
        "record_id",
        prior_n.cast(pl.Int64).alias("consignee_prior_shipments"),
        (prior_n == 0).alias("first_shipment_to_consignee"),
        pl.when(prior_n > 0).then((pl.col("record_date") - first_date)
                                  .dt.total_days()).alias("days_since_first_shipment"),
        (pl.col("through_d_n") - pl.col("before_30_n") - 1).cast(pl.Int64)
        .alias("consignee_shipments_30d"),
        (pl.col("through_d_value_usd") - pl.col("before_30_value_usd") - own_value)
        .alias("consignee_value_30d_usd"),
        (pl.col("through_d_n") - pl.col("before_90_n") - 1).cast(pl.Int64)
        .alias("consignee_shipments_90d"),
        (pl.col("through_d_value_usd") - pl.col("before_90_value_usd") - own_value)
        .alias("consignee_value_90d_usd"),
        # real filers declare 0: a history worth nothing (or less) has no usual value
        pl.when((prior_n > 0) & (pl.col("before_d_value_usd") > 0)).then(
            pl.col("value_usd") / (pl.col("before_d_value_usd") / prior_n))
        .alias("value_to_consignee_history_mean"),
    )


def splitting(base: pl.LazyFrame) -> pl.LazyFrame:
    """Sub-threshold GPU shipments to the same or linked consignees in a short window.

    ``base``: record_id, record_date, group_key (ultimate parent, else the consignee),
    address_key (normalised consignee address + country, may be null), value_usd,
    is_small (bool), in record_date order (the result's rows are ``base``'s, in its
    order). Counts dates in [d - 13, d] and include the record itself when it is small;
    the larger of the two linkages (owner group, shared address) is kept.
    """
    offsets = {"through_d": 0, "before_window": -SPLITTING_WINDOW_DAYS}
    columns = []
    for key in ("group_key", "address_key"):
        events = (base.filter(pl.col("is_small").fill_null(False) & pl.col(key).is_not_null())
                  .select(key, pl.col("record_date").alias("__event_date"), "value_usd"))
        # a record without the key links to nothing (null, not 0: a negative value sum of
        # the other linkage must stay the larger)
        known = pl.col(key).is_not_null()
        cum = cumulative_at(base.select("record_id", "record_date", key), events, key,
                            ["value_usd"], offsets, sorted_by_date=True)
        columns.append(cum.select(
            pl.when(known).then(pl.col("through_d_n") - pl.col("before_window_n"))
            .alias(f"__n_{key}"),
            pl.when(known).then(pl.col("through_d_value_usd")
                                - pl.col("before_window_value_usd")).alias(f"__v_{key}")))
    return pl.concat([base.select("record_id"), *columns], how="horizontal").select(
        "record_id",
        pl.max_horizontal("__n_group_key", "__n_address_key").fill_null(0).cast(pl.Int64)
        .alias("linked_small_shipments_14d"),
        pl.max_horizontal("__v_group_key", "__v_address_key").fill_null(0.0)
        .alias("linked_small_value_14d_usd"),
    )


def name_key(norm: pl.Expr, country: pl.Expr) -> pl.Expr:
    """The key re-export linkage matches on, for a consignee and an exporter alike: a
    normalised name and its country ('lion gate compute|SG')."""
    return pl.concat_str(norm, country, separator="|")


def reexport_event(d5_hk_mo) -> pl.Expr:
    """Whether a shipment counts as a re-export event for the linkage: controlled chips,
    goods that need a licence, or vaguely described GPU goods, to D:5, Hong Kong or
    Macau (over a frame with the product features)."""
    return (pl.col("destination_country").is_in(d5_hk_mo)
            & (pl.col("chip_controlled").fill_null(False)
               | pl.col("licence_required_for_item").fill_null(False)
               | pl.col("vague_description").fill_null(False)))


def reexport(base: pl.LazyFrame, reexports: pl.LazyFrame) -> pl.LazyFrame:
    """Later exports by the consignee (same normalised name and country) to D:5/HK/MO.

    ``base``: record_id, record_date, consignee_key, chip_units, in record_date order (the
    result's rows are ``base``'s, in its order).
    ``reexports``: exporter_key, __event_date, destination_country, chip_units (already
    restricted to controlled goods going to D:5, HK or MO).
    """
    base = base.select("record_id", "record_date", "consignee_key", "chip_units")
    events = reexports.rename({"exporter_key": "consignee_key"})
    first = (
        base.select("consignee_key", "record_date")
        .join_asof(events.select("consignee_key", "__event_date",
                                 pl.col("destination_country").alias("reexport_destination"))
                   .sort("__event_date"),
                   left_on="record_date", right_on="__event_date", by="consignee_key",
                   strategy="forward", check_sortedness=False)
        .select((pl.col("__event_date") - pl.col("record_date")).dt.total_days()
                .alias("days_until_reexport"),
                "reexport_destination")
    )
    cum = cumulative_at(base, events.select("consignee_key", "__event_date", "chip_units"),
                        "consignee_key", ["chip_units"],
                        {"window_end": REEXPORT_WINDOW_DAYS, "window_start": -1},
                        sorted_by_date=True)
    units = pl.col("window_end_chip_units") - pl.col("window_start_chip_units")
    share = cum.select(
        "record_id",
        (units / pl.when(pl.col("chip_units") > 0).then(pl.col("chip_units")))
        .alias("reexported_unit_share_90d"),
        units.alias("reexported_units_90d"))
    return pl.concat([share, first], how="horizontal").select(
        "record_id", "days_until_reexport", "reexport_destination",
        "reexported_unit_share_90d", "reexported_units_90d",
        pl.col("days_until_reexport").is_not_null().alias("later_reexported_to_d5_hk_mo"))

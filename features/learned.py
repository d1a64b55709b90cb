"""Inputs learned from the data itself, for any export (not only chips).

- Unit value against peers: the declared value per kg and per unit, against the median
  and spread (interquartile range) of the log unit value of the same HS-6 heading in the
  training data, falling back to HS-4 and HS-2 where a heading had fewer than
  `MIN_PEERS` priced lines. Fitted by `fit_unit_value_peers`, stored in the bundle's
  feature statistics and applied as literals.
- Unit value against the party's own history: log value per kg minus the mean of the
  exporter's (consignee's) earlier lines, dated strictly before this one.
- Novelty, backward in time: the first exporter→consignee pair, the first HS-4 for the
  consignee, the first origin (exporter country) for the HS-6, the first forwarder for
  the consignee: no line with the same pair dated strictly before this one.
- Configured inputs: columns of the record table (extra columns of a real export, or
  contract columns) named by the training config's `[inputs]`; categorical ones are
  coded by the values seen in training (an unseen value is missing), numeric ones cast
  to float (text that is not a number, or ±inf, is missing).

Every value, weight and quantity may be zero, negative or missing: a unit value exists
only where both sides are positive, so no input is ever ±inf.
"""

from __future__ import annotations

import polars as pl

from features.behaviour import cumulative_at

MIN_PEERS = 5
PEER_LEVELS = (("hs6", 6), ("hs4", 4), ("hs2", 2))
# A spread below this (log units: about ±5%) is treated as this: identical declared
# prices would otherwise make any difference an extreme z.
MIN_LOG_SPREAD = 0.05
INPUT_PREFIX = "input_"


def hs_digits(expr: pl.Expr, n: int) -> pl.Expr:
    return expr.str.replace_all(r"\D", "").str.slice(0, n)


def log_unit_value_per_kg() -> pl.Expr:
    """log(value / kg) where both are positive and the ratio finite, else null."""
    ok = (pl.col("value_usd") > 0) & (pl.col("gross_weight_kg") > 0)
    ratio = pl.when(ok).then(pl.col("value_usd") / pl.col("gross_weight_kg"))
    return pl.when(ratio.is_finite() & (ratio > 0)).then(ratio.log())


def log_unit_value_per_unit() -> pl.Expr:
    ok = (pl.col("value_usd") > 0) & (pl.col("quantity") > 0)
    ratio = pl.when(ok).then(pl.col("value_usd") / pl.col("quantity").cast(pl.Float64))
    return pl.when(ratio.is_finite() & (ratio > 0)).then(ratio.log())


BASES = {"per_kg": log_unit_value_per_kg, "per_unit": log_unit_value_per_unit}


def fit_unit_value_peers(shipments: pl.LazyFrame) -> dict:
    """{basis: {level: {code: [median, spread, lines]}}} of the log unit value, for the
    HS codes with at least `MIN_PEERS` priced lines (JSON-able)."""
    out: dict = {}
    for basis, log_value in BASES.items():
        priced = shipments.select(pl.col("hs_code"), log_value().alias("__luv")) \
            .filter(pl.col("__luv").is_not_null())
        levels = {}
        for level, digits in PEER_LEVELS:
            stats = (
                priced.group_by(hs_digits(pl.col("hs_code"), digits).alias("code"))
                .agg(pl.col("__luv").median().alias("median"),
                     (pl.col("__luv").quantile(0.75) - pl.col("__luv").quantile(0.25))
                     .alias("spread"), pl.len().alias("lines"))
                .filter((pl.col("lines") >= MIN_PEERS) & (pl.col("code").str.len_chars()
                                                          == digits))
                .sort("code").collect()
            )
            levels[level] = {c: [float(m), float(s), int(n)] for c, m, s, n in stats.iter_rows()}
        out[basis] = levels
    return out


def _lookup(code: pl.Expr, table: dict, position: int) -> pl.Expr:
    if not table:
        return pl.lit(None, pl.Float64)
    return code.replace_strict({k: v[position] for k, v in table.items()}, default=None,
                               return_dtype=pl.Float64)


def peer_lookups(peers: dict) -> list[pl.Expr]:
    """The learned peers of a line's HS code: per basis the median and spread of the most
    specific level (HS-6, else HS-4, HS-2) that knows the code (``__peer_<basis>_median``,
    ``__peer_<basis>_spread``), and that level's digits for the first basis
    (``__peer_hs_digits``). Functions of ``hs_code`` alone, so they can be evaluated once
    per distinct code; `peer_columns` reads them."""
    exprs = []
    level_used = None
    for basis in BASES:
        tables = peers.get(basis, {})
        # most specific first: coalesce keeps the first level that knows the code
        medians, spreads, levels = [], [], []
        for name, digits in PEER_LEVELS:
            code = hs_digits(pl.col("hs_code"), digits)
            m = _lookup(code, tables.get(name, {}), 0)
            medians.append(m)
            spreads.append(_lookup(code, tables.get(name, {}), 1))
            levels.append(pl.when(m.is_not_null()).then(pl.lit(digits, pl.Int64)))
        if level_used is None:
            level_used = pl.coalesce(levels)
        exprs += [pl.coalesce(medians).alias(f"__peer_{basis}_median"),
                  pl.coalesce(spreads).alias(f"__peer_{basis}_spread")]
    exprs.append(level_used.alias("__peer_hs_digits"))
    return exprs


def peer_columns() -> list[pl.Expr]:
    """Unit value against the learned HS-6 (else HS-4, HS-2) peers, per kg and per unit,
    over a frame with the `peer_lookups` columns."""
    exprs = []
    for basis, log_value in BASES.items():
        median, spread = pl.col(f"__peer_{basis}_median"), pl.col(f"__peer_{basis}_spread")
        luv = log_value()
        diff = luv - median
        exprs += [
            luv.exp().alias(f"unit_value_{basis}_usd"),
            diff.exp().alias(f"unit_value_{basis}_to_peer_median"),
            (diff / pl.max_horizontal(spread, pl.lit(MIN_LOG_SPREAD))).alias(
                f"unit_value_{basis}_peer_z"),
        ]
    exprs.append(pl.col("__peer_hs_digits").alias("unit_value_peer_hs_digits"))
    return exprs


def own_history(base: pl.LazyFrame) -> pl.LazyFrame:
    """Log value per kg against the exporter's and the consignee's earlier lines.

    ``base``: record_id, record_date, exporter_key, consignee_key, __luv_kg (log value per
    kg or null), in record_date order (the result's rows are ``base``'s, in its order).
    Earlier = dated strictly before the record.
    """
    columns = []
    for party in ("exporter", "consignee"):
        key = f"{party}_key"
        events = base.filter(pl.col("__luv_kg").is_not_null()).select(
            key, pl.col("record_date").alias("__event_date"), "__luv_kg")
        cum = cumulative_at(base.select("record_id", "record_date", key, "__luv_kg"), events,
                            key, ["__luv_kg"], {"before": -1}, sorted_by_date=True)
        columns.append(cum.select(
            pl.when(pl.col("before_n") > 0).then(
                pl.col("__luv_kg") - pl.col("before_luv_kg") / pl.col("before_n"))
            .alias(f"unit_value_per_kg_to_{party}_history")))
    return pl.concat([base.select("record_id"), *columns], how="horizontal")


NOVELTY_PAIRS = {
    "first_exporter_consignee_pair": ("exporter_key", "consignee_key"),
    "first_hs4_for_consignee": ("consignee_key", "__hs4"),
    "first_origin_for_hs6": ("__hs6", "__origin"),
    "first_forwarder_for_consignee": ("consignee_key", "__forwarder_key"),
}


def novelty(base: pl.LazyFrame) -> pl.LazyFrame:
    """Backward novelty flags (see the module docstring); null where a part of the pair is
    missing (no forwarder declared, no HS code).

    A record's own line is one of its pair's lines, so "no line of the pair dated
    strictly before" is "dated on the pair's first date": one group minimum per pair.
    """
    date = pl.col("record_date")
    return base.select("record_id", *[
        pl.when(pl.col(a).is_not_null() & pl.col(b).is_not_null())
        .then(date == date.min().over(a, b)).alias(name)
        for name, (a, b) in NOVELTY_PAIRS.items()])


def fit_inputs(records: pl.DataFrame, categorical: list[str], numeric: list[str]) -> dict:
    """The configured inputs' learned codes: {"categorical": {column: {value: code}},
    "numeric": [column, ...]} (values seen in training, sorted; JSON-able)."""
    check_inputs(records.columns, categorical, numeric, "the training data")
    maps = {}
    for column in categorical:
        values = records[column].cast(pl.String).str.strip_chars().drop_nulls().unique().sort()
        maps[column] = {v: i for i, v in enumerate(values.to_list()) if v != ""}
    return {"categorical": maps, "numeric": list(numeric)}


def check_inputs(columns, categorical, numeric, where: str) -> None:
    from detector.errors import InputError

    missing = [c for c in [*categorical, *numeric] if c not in columns]
    if missing:
        raise InputError(f"{where} lacks the column(s) {missing} that the model takes as inputs "
                         "(training config [inputs]); map them on import or retrain without "
                         "them")


def input_names(inputs: dict | None) -> list[str]:
    """The model-input names of the configured inputs, in a fixed order."""
    if not inputs:
        return []
    return [f"{INPUT_PREFIX}{c}" for c in [*inputs.get("categorical", {}),
                                           *inputs.get("numeric", [])]]


def input_columns(inputs: dict) -> list[pl.Expr]:
    exprs = []
    for column, codes in inputs.get("categorical", {}).items():
        text = pl.col(column).cast(pl.String).str.strip_chars()
        exprs.append(text.replace_strict(codes, default=None, return_dtype=pl.Float64)
                     .alias(f"{INPUT_PREFIX}{column}"))
    for column in inputs.get("numeric", []):
        number = pl.col(column).cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
        exprs.append(pl.when(number.is_finite()).then(number).alias(f"{INPUT_PREFIX}{column}"))
    return exprs

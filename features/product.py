"""Product and control: which chip a line carries, how many GPUs, whether it is
controlled, and whether the declaration (HS code, ECCN, licence, value, weight) fits it.

Red flags: misdeclaration (FACTS.md "Classification codes and how misdeclaration
shows"): a 3A090/4A090 item declared EAR99 / 5A992 or "no licence required" to a
licence-requiring place, a GPU-priced line under 8473.30 "parts", a unit value far
below the market, a vague description ("adapters", "computer parts", "video cards").
"""

from __future__ import annotations

import polars as pl

from detector.reference import chip_model_expr
from features.refview import RefView

# Words that say "this is a GPU / accelerator" without naming a model.
GPU_WORDS = (r"(?i)\b(gpus?|graphics|video\s*cards?|accelerat\w*|computing\s*cards?|"
             r"compute\s*(cards?|modules?)|ai\s*(cards?|chips?|modules?)|tensor|cuda|"
             r"computer\s*parts|adapters?|pcie?\s*cards?|sxm\d?|hbm|data\s*cent(er|re)\s*cards?)\b")
SERVER_WORDS = r"(?i)\b(server|system|hgx|dgx|chassis|node|rack)\b"
# "8x", "8 x", "8-GPU", "8 GPUs", "8-way": the GPU count of a server not in the catalogue.
GPU_COUNT_IN_TEXT = r"(?i)\b(\d{1,2})\s*(?:[x×]|-?\s*gpus?\b|-way\b)"
# Declared classifications that claim the item is *not* 3A090/4A090.
UNCONTROLLED_ECCN = r"^(EAR99|5A992|4A994|3A991|5A002)"
PARTS_HS6 = "847330"
# A parts line is "GPU-priced" from this per-unit value (real computer parts cost far less).
GPU_PRICED_PARTS_UNIT_VALUE_USD = 5_000.0


def model_expression(text: pl.Expr, chips: pl.DataFrame) -> pl.Expr:
    """One vectorised expression: the first catalogue row whose pattern matches ``text``."""
    return chip_model_expr(text, chips.filter(pl.col("patterns").is_not_null()).sort("ref_order"))


def recognise_chips(lf: pl.LazyFrame, text_column: str, ref: RefView) -> pl.LazyFrame:
    """Add `chip_model` and the catalogue's `ref_*` columns, matching each distinct text once."""
    distinct = (
        lf.select(pl.col(text_column)).unique()
        .with_columns(model_expression(pl.col(text_column), ref.chips).alias("chip_model"),
                      pl.col(text_column).str.extract(GPU_COUNT_IN_TEXT, 1)
                      .cast(pl.Int64, strict=False).alias("__gpus_in_text"),
                      pl.col(text_column).str.contains(SERVER_WORDS).alias("__server_words"),
                      pl.col(text_column).str.contains(GPU_WORDS).alias("__gpu_words"))
        .join(ref.chips.lazy().drop("patterns").rename({"model": "chip_model"}),
              on="chip_model", how="left")
        .with_columns(
            # GPUs per declared unit: the catalogue's count for a catalogue server; for a
            # chip named inside a server description ("server with 8x H100"), the count
            # stated in the text; otherwise one.
            pl.when(pl.col("item_kind") == "server").then(pl.col("ref_gpus_per_unit"))
            .when(pl.col("chip_model").is_not_null() & pl.col("__server_words")
                  & pl.col("__gpus_in_text").is_between(2, 16))
            .then(pl.col("__gpus_in_text").cast(pl.Float64))
            .when(pl.col("chip_model").is_not_null()).then(1.0)
            .alias("gpus_per_declared_unit"))
        .drop("__gpus_in_text", "__server_words")
    )
    return lf.join(distinct, on=text_column, how="left", nulls_equal=True)


def hs6(expr: pl.Expr) -> pl.Expr:
    return expr.str.replace_all(r"\D", "").str.slice(0, 6)


def product_columns(ref: RefView, stats, hs: pl.Expr | None = None) -> list[pl.Expr]:
    """Shipment product features over a frame that went through `recognise_chips`.
    ``hs``: the line's HS-6 digits (`hs6` of ``hs_code`` when not given)."""
    quantity = pl.when(pl.col("quantity") > 0).then(pl.col("quantity").cast(pl.Float64))
    per_unit = pl.col("gpus_per_declared_unit")
    unit_value = pl.col("value_usd") / quantity
    chip_units = quantity * per_unit
    eccn = pl.col("eccn").str.to_uppercase().str.replace_all(r"\s", "")
    hs = hs6(pl.col("hs_code")) if hs is None else hs
    dest = pl.col("destination_country")
    controlled = pl.col("ref_controlled")
    # The H20 / MI308 rule: a licence to China, Hong Kong, Macau and D:5 from a date.
    extra_licence = (pl.col("ref_extra_licence_from").is_not_null()
                     & (pl.col("record_date") >= pl.col("ref_extra_licence_from"))
                     & dest.is_in(ref.d5_hk_mo))
    needs_licence = (controlled & dest.is_in(ref.licence_required)) | extra_licence
    declared_uncontrolled = eccn.str.contains(UNCONTROLLED_ECCN).fill_null(False)
    price_low = pl.col("ref_price_low_per_gpu") * per_unit
    price_high = pl.col("ref_price_high_per_gpu") * per_unit
    learned = pl.col("chip_model").replace_strict(
        stats.median_value_per_gpu_by_model, default=None, return_dtype=pl.Float64)
    weight_unit = pl.when(pl.col("gross_weight_kg") >= 0).then(pl.col("gross_weight_kg")) / quantity
    vague = (pl.col("chip_model").is_null()
             & (pl.col("__gpu_words").fill_null(False) | hs.is_in(["847330", "847180", "854231"])))
    return [
        chip_units.alias("chip_units"),
        pl.col("ref_tpp_per_gpu").alias("chip_tpp"),
        (pl.col("ref_tpp_per_gpu") * chip_units).alias("total_tpp"),
        controlled.alias("chip_controlled"),
        pl.col("ref_eccn").alias("chip_eccn"),
        needs_licence.alias("licence_required_for_item"),
        (controlled & declared_uncontrolled).alias("controlled_declared_low_eccn"),
        (needs_licence & (declared_uncontrolled | (pl.col("license_type") == "nlr")))
        .alias("misdeclared_to_licence_destination"),
        (needs_licence & (pl.col("license_type").fill_null("unknown") != "license"))
        .alias("no_licence_for_licence_destination"),
        ((hs == PARTS_HS6) & (controlled.fill_null(False)
                               | (unit_value >= GPU_PRICED_PARTS_UNIT_VALUE_USD).fill_null(False)))
        .alias("parts_hs_for_gpu_priced_item"),
        hs.is_in(ref.gpu_hs6).alias("hs_code_typical_for_gpus"),
        unit_value.alias("unit_value_usd"),
        price_low.alias("chip_price_low_usd"),
        price_high.alias("chip_price_high_usd"),
        (unit_value / price_low).alias("unit_value_to_market_low"),
        (unit_value / (learned * per_unit)).alias("unit_value_to_learned_median"),
        weight_unit.alias("weight_per_unit_kg"),
        (weight_unit / (pl.col("ref_weight_per_gpu") * per_unit)).alias("weight_to_catalogue"),
        vague.alias("vague_description"),
        (pl.col("declared_end_use").is_null()
         | pl.col("declared_end_use").str.contains(
             r"(?i)^\s*(n/?a|none|unknown|general|general use|resale|for resale|other|tbd|-)\s*$"))
        .alias("end_use_vague_or_missing"),
    ]

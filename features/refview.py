"""What the feature builders need from a `detector.reference.Reference`, in one place.

Only the documented attributes are used (`.chips`, `.hs_codes`, `.countries(group,
confirmed_only=)`, `.licence_required_countries()`), so a small Reference-like object
works as well (tests use one).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

# China itself; the places the chip rules treat as China or name with it come from the
# reference (`china_sphere`)
CHINA = "CN"
GPU_HS6_DEFAULT = ("847150", "847141", "847149", "847180", "847330", "854231")


@dataclass(frozen=True)
class RefView:
    d5: tuple[str, ...]
    d5_or_macau: tuple[str, ...]
    d5_hk_mo: tuple[str, ...]
    china_sphere: tuple[str, ...]  # China, Hong Kong, Macau (`china_sphere`)
    hk_mo: tuple[str, ...]  # the same less China itself: Hong Kong, Macau
    licence_required: tuple[str, ...]
    hubs_confirmed: tuple[str, ...]
    hubs_unconfirmed: tuple[str, ...]
    gpu_hs6: tuple[str, ...]
    chips: pl.DataFrame  # one row per catalogue model, normalised columns (see below)


def _sorted(values) -> tuple[str, ...]:
    return tuple(sorted({str(v).upper() for v in values if v is not None}))


def _column(df: pl.DataFrame, name: str, dtype: pl.DataType, default=None) -> pl.Expr:
    if name in df.columns:
        return pl.col(name).cast(dtype, strict=False)
    return pl.lit(default, dtype)


def _group(reference, group: str, confirmed_only: bool = False) -> tuple[str, ...]:
    """A group's countries; a group the reference does not define is empty."""
    try:
        return _sorted(reference.countries(group, confirmed_only=confirmed_only))
    except (ValueError, KeyError):
        return ()


def china_sphere(reference) -> tuple[str, ...]:
    """China and the places the chip rules treat as China (``TREATED_AS_CN``: Hong Kong)
    or name with it (``MACAU``), from the reference's groups (data/country_groups.csv):
    the payer and re-export destinations named in the cases."""
    return _sorted({CHINA, *_group(reference, "TREATED_AS_CN"), *_macau(reference)})


def _macau(reference) -> tuple[str, ...]:
    return _group(reference, "MACAU") or ("MO",)


def view(reference) -> RefView:
    d5 = _group(reference, "D:5")
    macau = _macau(reference)
    sphere = china_sphere(reference)
    hubs_all = set(_group(reference, "HUB"))
    hubs_confirmed = _group(reference, "HUB", confirmed_only=True)
    hs = reference.hs_codes
    gpu_hs6: tuple[str, ...] = GPU_HS6_DEFAULT
    if hs is not None and "typical_for_gpus" in hs.columns and hs.height:
        typical = hs.filter(pl.col("typical_for_gpus").cast(pl.Boolean, strict=False).fill_null(False))
        gpu_hs6 = _sorted(typical["hs6"].cast(pl.String).str.replace_all(r"\D", "").str.slice(0, 6))
    chips = reference.chips
    gpus = _column(chips, "gpus_per_unit", pl.Float64, 1.0).fill_null(1.0)
    chips = chips.select(
        pl.col("model").cast(pl.String),
        _column(chips, "patterns", pl.String),
        _column(chips, "item_kind", pl.String, "chip").fill_null("chip").alias("item_kind"),
        gpus.alias("ref_gpus_per_unit"),
        # the catalogue gives TPP per GPU, price and weight per catalogue item
        _column(chips, "tpp", pl.Float64).alias("ref_tpp_per_gpu"),
        (_column(chips, "price_low_usd", pl.Float64) / gpus).alias("ref_price_low_per_gpu"),
        (_column(chips, "price_high_usd", pl.Float64) / gpus).alias("ref_price_high_per_gpu"),
        (_column(chips, "unit_weight_kg", pl.Float64) / gpus).alias("ref_weight_per_gpu"),
        _column(chips, "controlled", pl.Boolean, False).fill_null(False).alias("ref_controlled"),
        _column(chips, "eccn", pl.String).alias("ref_eccn"),
        _column(chips, "datacenter", pl.Boolean).alias("ref_datacenter"),
        _column(chips, "extra_licence_from", pl.Date).alias("ref_extra_licence_from"),
    ).with_row_index("ref_order")
    return RefView(
        d5=d5,
        d5_or_macau=_sorted(set(d5) | set(macau)),
        d5_hk_mo=_sorted(set(d5) | set(macau) | set(sphere)),
        china_sphere=sphere,
        hk_mo=tuple(c for c in sphere if c != CHINA),
        licence_required=_sorted(reference.licence_required_countries()),
        hubs_confirmed=hubs_confirmed,
        hubs_unconfirmed=tuple(sorted(hubs_all - set(hubs_confirmed))),
        gpu_hs6=gpu_hs6,
        chips=chips,
    )

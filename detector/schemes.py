"""The likely scheme of a record: which diversion typology its signals point to.

Canonical schemes are the contract's `likely_scheme` values. Labelled typologies are free
text ("front company, re-exported via HK"); `data/typologies.csv` maps them to schemes
by case-insensitive patterns, and a typology naming several schemes counts for each.

With a trained scheme model (detector.models.scheme, fitted on the labelled typologies)
the scheme is its most probable class; without one — no model, or no labelled
typology to learn from — the rule families below decide: the scheme whose red-flag
rules weigh the most. `scheme_confidence` is the model's class probability, or
the family's share of the weights; it says how sure the *scheme* is, given a diversion,
not how likely the diversion is (that is `risk_score`).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import polars as pl

from detector.errors import InputError

SCHEMES = ("transshipment", "shell_company", "restricted_parent", "cloud_lease",
           "misdeclaration", "splitting", "screening_evasion")
UNCLEAR = "unclear"
# Below this class probability the scheme model's answer is reported as `unclear`.
MIN_CONFIDENCE = 0.4

# Rule families: the red-flag rules (features/rules.py) that are the mechanism of each
# scheme, with how specific each is to it (a listed-name match or a burst of small lines
# says which scheme far more than a hub destination does). Supporting flags that fit
# many schemes (payer, payment method, first order, licence not stated) belong to none.
RULE_FAMILIES: dict[str, dict[str, float]] = {
    "transshipment": {"later_reexport": 7.0, "transit_hk_mo": 3.0, "logistics_consignee": 3.0,
                      "hub_destination_controlled": 1.0},
    "shell_company": {"new_company_controlled": 5.0, "shared_address": 5.0,
                      "industry_misfit": 3.0},
    "restricted_parent": {"d5_ultimate_parent": 8.0},
    "cloud_lease": {"bare_metal_d5_lessee": 5.0, "capacity_beyond_size": 3.0,
                    "new_lessee": 2.0},
    "misdeclaration": {"gpu_as_parts": 5.0, "undervalued": 5.0, "misdeclared_classification": 4.0,
                       "controlled_under_low_eccn": 4.0, "vague_description": 4.0},
    "splitting": {"splitting": 9.0},
    "screening_evasion": {"screening_match": 10.0},
}
# Not a rule but the mechanism itself: the record is the onward leg, a hub exporting
# controlled goods to China, Hong Kong or Macau.
REEXPORT_LEG_WEIGHT = 7.0


def reexport_leg() -> pl.Expr:
    return ((pl.col("exporter_country").fill_null("US") != "US")
            & pl.col("destination_country").is_in(["CN", "HK", "MO"])
            & (pl.col("chip_controlled") | pl.col("vague_description")).fill_null(False))


@dataclass(frozen=True)
class TypologyPattern:
    pattern: re.Pattern
    scheme: str
    line: int


def typology_map_path() -> Path:
    from detector.reference import reference_directory

    return reference_directory() / "typologies.csv"


@cache
def typology_patterns(path: str | None = None) -> tuple[TypologyPattern, ...]:
    """The patterns of ``path`` (default: the packaged data/typologies.csv), checked."""
    path = Path(path) if path else typology_map_path()
    out = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"pattern", "scheme"} <= set(reader.fieldnames):
            raise InputError(f"{path}: expected columns pattern,scheme; got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            scheme = (row["scheme"] or "").strip()
            if scheme not in SCHEMES:
                raise InputError(f"{path}, line {line}, column 'scheme': {scheme!r} is not one "
                                 f"of {', '.join(SCHEMES)}")
            try:
                pattern = re.compile(row["pattern"], re.IGNORECASE)
            except re.error as exc:
                raise InputError(f"{path}, line {line}, column 'pattern': {row['pattern']!r} "
                                 f"is not a regular expression ({exc})") from None
            out.append(TypologyPattern(pattern, scheme, line))
    return tuple(out)


def schemes_of(typology: str | None, path: str | None = None) -> list[str]:
    """The canonical schemes a free-text typology names, in SCHEMES order (may be several;
    none for null or unrecognised text)."""
    if not typology:
        return []
    found = {p.scheme for p in typology_patterns(path) if p.pattern.search(typology)}
    return [s for s in SCHEMES if s in found]


def family_points(frame: pl.DataFrame) -> np.ndarray:
    """Weight of each scheme's rule family hit by each row: (rows, len(SCHEMES))."""
    from features.rules import RULES

    rules = {r.name: r for r in RULES}
    exprs = []
    for scheme in SCHEMES:
        parts = [rules[n].condition.fill_null(False).cast(pl.Float64) * weight
                 for n, weight in RULE_FAMILIES[scheme].items() if n in rules]
        if scheme == "transshipment" and {"exporter_country", "destination_country"} <= set(
                frame.columns):
            parts.append(reexport_leg().cast(pl.Float64) * REEXPORT_LEG_WEIGHT)
        exprs.append(pl.sum_horizontal(parts).alias(scheme))
    return frame.select(exprs).to_numpy().astype(np.float64)


def rule_family_schemes(frame: pl.DataFrame) -> tuple[list[str], np.ndarray]:
    """(likely_scheme, scheme_confidence) from the rule families: the family with the most
    weight, its share of the family weights as confidence; `unclear` (confidence null)
    when no family rule is hit. A lease with any family hit is a cloud lease (the only
    scheme leases carry)."""
    if frame.height == 0:
        return [], np.zeros(0)
    points = family_points(frame)
    lease = (frame["record_kind"] == "lease").to_numpy()
    lease_col = SCHEMES.index("cloud_lease")
    total = points.sum(axis=1)
    best = np.argmax(points, axis=1)
    best = np.where(lease & (total > 0), lease_col, best)
    confidence = np.where(total > 0, points[np.arange(len(best)), best] / np.where(
        total > 0, total, 1.0), np.nan)
    confidence = np.where(lease & (total > 0), 1.0, confidence)
    names = [SCHEMES[b] if t > 0 else UNCLEAR for b, t in zip(best, total)]
    return names, confidence


def scheme_columns(frame: pl.DataFrame, scheme_model=None) -> pl.DataFrame:
    """`likely_scheme` and `scheme_confidence` for every row of a feature frame (same
    order): the scheme model's answer when there is one, else the rule families."""
    if scheme_model is None:
        names, confidence = rule_family_schemes(frame)
    else:
        proba = scheme_model.predict_proba(frame)
        classes = list(scheme_model.classes_)
        if len(proba):
            best = np.argmax(proba, axis=1)
            confidence = proba[np.arange(len(best)), best]
            names = [classes[b] if c >= MIN_CONFIDENCE else UNCLEAR
                     for b, c in zip(best, confidence)]
        else:
            names, confidence = [], np.zeros(0)
    return pl.DataFrame({
        "likely_scheme": pl.Series(names, dtype=pl.String),
        "scheme_confidence": pl.Series(confidence, dtype=pl.Float64, nan_to_null=True),
    })

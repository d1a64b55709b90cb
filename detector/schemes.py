"""The likely scheme of a record: which diversion typology its signals point to.

Canonical schemes are the contract's `likely_scheme` values. Labelled typologies are free
text ("front company, re-exported via HK"); `data/typologies.csv` maps them to schemes
by case-insensitive patterns, and a typology naming several schemes counts for each.

With a trained scheme model (detector.models.scheme, fitted on the labelled typologies)
the scheme is the most probable after blending its classes with the rule families
below (`scheme_probabilities`); without one — no model, or no labelled
typology to learn from — the rule families below decide: the scheme whose strongest red flag
weighs the most. `scheme_confidence` is that blended probability, or
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
MIN_CONFIDENCE = 0.3
# The scheme model's part in the blend with the rule families: it learns from the few
# dozen labelled diversions of a training run, so the families lead. Tuned on simulated
# worlds of seeds 4-6 (0.3 better than 0.2, 0.4, 0.5 or the model alone), reported on
# seeds 1-3 (benchmarks/bench_trust.py, README "Analyst trust").
MODEL_WEIGHT = 0.3

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


# The line's own goods sent on: at least half of its units re-exported to China, Hong
# Kong or Macau within 90 days. A shell that resells what it bought is a transshipment
# through a shell; one that keeps most of it is the buyer. So this outweighs a shell
# profile of up to three flags (later_reexport alone, a re-export of anything later,
# does not). Measured on seeds 4-6: +1.3 points of likely_scheme accuracy.
REEXPORTED_LINE_WEIGHT = 10.0


def reexported_line() -> pl.Expr:
    return ((pl.col("reexported_unit_share_90d") >= 0.5)
            & pl.col("later_reexported_to_d5_hk_mo")).fill_null(False)


# Not a rule either: a parent up the chain in Hong Kong (treated as China by the EAR,
# though not in D:5 by name) points to a restricted parent as a D:5 parent does.
HK_PARENT_WEIGHT = 8.0


def hk_parent() -> pl.Expr:
    return ((pl.col("ultimate_parent_country") == "HK") & (pl.col("ownership_depth") >= 1)
            ).fill_null(False)


# The shell profile (detector.mechanisms.shell_company): each of newly formed, a handful
# of employees, an address shared with other companies and a line of business that does
# not buy such chips adds this much to the shell family, whether or not the goods were
# recognised as controlled (the family's rules need that).
SHELL_FLAG_WEIGHT = 3.0


def shell_profile_flags() -> pl.Expr:
    from detector.mechanisms import NEWLY_FORMED_DAYS

    return pl.sum_horizontal(
        flag.fill_null(False).cast(pl.Float64) for flag in (
            pl.col("consignee_age_days").is_between(0, NEWLY_FORMED_DAYS - 1),
            pl.col("consignee_employees") < 10,
            pl.col("consignee_address_shared_by") >= 2,
            pl.col("consignee_industry_misfit")))


def exporter_signals() -> dict[str, pl.Expr]:
    """On an onward leg (`reexport_leg`) the exporter is the hub company that received
    the goods, and its profile says whose scheme the leg is: a shell's, a listed look-alike's
    or a restricted group's. Each scheme's points, weighted as the consignee's flags of the
    same kind (the shell profile per flag, a screening match >= 90 as the screening rule,
    a parent in D:5, Macau or Hong Kong as a D:5 parent)."""
    from detector.mechanisms import NEWLY_FORMED_DAYS, restricted
    from features.parties import INDUSTRIES_THAT_DO_NOT_FIT

    onward = reexport_leg()
    shell = pl.sum_horizontal(
        flag.fill_null(False).cast(pl.Float64) for flag in (
            pl.col("exporter_age_days").is_between(0, NEWLY_FORMED_DAYS - 1),
            pl.col("exporter_employees") < 10,
            pl.col("exporter_address_shared_by") >= 2,
            pl.col("exporter_industry").is_in(INDUSTRIES_THAT_DO_NOT_FIT)))
    listed = (pl.col("exporter_screening_score") >= 90).fill_null(False)
    parent = ((pl.col("exporter_ownership_depth") >= 1)
              & (pl.col("exporter_parent_in_d5_or_macau")
                 | pl.col("exporter_parent_country").is_in(restricted()))).fill_null(False)
    return {
        "shell_company": onward.cast(pl.Float64) * shell * SHELL_FLAG_WEIGHT,
        "screening_evasion": (onward & listed).cast(pl.Float64)
        * RULE_FAMILIES["screening_evasion"]["screening_match"],
        "restricted_parent": (onward & parent).cast(pl.Float64)
        * RULE_FAMILIES["restricted_parent"]["d5_ultimate_parent"],
    }


def declared_to_restricted() -> pl.Expr:
    """A US export (the first leg) declared straight to China, Hong Kong or Macau."""
    from detector.mechanisms import restricted

    return ((pl.col("exporter_country").fill_null("US") == "US")
            & pl.col("destination_country").is_in(restricted())).fill_null(False)


def reexport_leg() -> pl.Expr:
    from detector.mechanisms import restricted

    return ((pl.col("exporter_country").fill_null("US") != "US")
            & pl.col("destination_country").is_in(restricted())
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
    """Per row, the weight of each scheme's strongest red flag that holds (rows,
    len(SCHEMES)). The strongest, not the sum: a family's flags describe one act (a
    line declared as parts is also undervalued and vaguely described), and summing them
    let a scheme with many overlapping flags outweigh one decisive flag of another."""
    from features.rules import RULES

    rules = {r.name: r for r in RULES}
    exprs = []
    for scheme in SCHEMES:
        parts = [rules[n].condition.fill_null(False).cast(pl.Float64) * weight
                 for n, weight in RULE_FAMILIES[scheme].items() if n in rules]
        if scheme == "transshipment" and {"exporter_country", "destination_country"} <= set(
                frame.columns):
            if {"reexported_unit_share_90d", "later_reexported_to_d5_hk_mo"} <= set(frame.columns):
                parts.append(reexported_line().cast(pl.Float64) * REEXPORTED_LINE_WEIGHT)
            # a US export declared to China, Hong Kong or Macau itself passes through no
            # third country: whatever it shows (a later re-export from HK, a transit), the
            # scheme is how it got there (papers, licence), not a transshipment
            parts = [p * (~declared_to_restricted()).cast(pl.Float64) for p in parts]
            parts.append(reexport_leg().cast(pl.Float64) * REEXPORT_LEG_WEIGHT)
        if scheme == "shell_company" and "consignee_age_days" in frame.columns:
            parts.append(shell_profile_flags() * SHELL_FLAG_WEIGHT)
        if "exporter_age_days" in frame.columns and scheme in (exporter := exporter_signals()):
            parts.append(exporter[scheme])
        if scheme == "restricted_parent" and {"ultimate_parent_country", "ownership_depth"} <= set(
                frame.columns):
            parts.append(hk_parent().cast(pl.Float64) * HK_PARENT_WEIGHT)
        exprs.append(pl.max_horizontal(parts).alias(scheme))
    return frame.select(exprs).to_numpy().astype(np.float64)


def family_shares(frame: pl.DataFrame) -> np.ndarray:
    """Each scheme's share of the rule-family weight a row carries (rows, len(SCHEMES));
    a lease with any family hit is all cloud lease (the only scheme leases carry); a row
    with no family hit is all zeros."""
    points = family_points(frame)
    lease = (frame["record_kind"] == "lease").to_numpy()
    points[lease] = np.where(points[lease].sum(axis=1, keepdims=True) > 0,
                             np.eye(len(SCHEMES))[SCHEMES.index("cloud_lease")], 0.0)
    total = points.sum(axis=1, keepdims=True)
    return np.where(total > 0, points / np.where(total > 0, total, 1.0), 0.0)


def _names(best: np.ndarray, shown: np.ndarray) -> pl.Series:
    """SCHEMES[best] where ``shown``, else UNCLEAR (a gather, not a loop over rows)."""
    if not len(best):
        return pl.Series([], dtype=pl.String)
    index = np.where(shown, best, len(SCHEMES))
    return pl.Series([*SCHEMES, UNCLEAR], dtype=pl.String).gather(index)


def rule_family_schemes(frame: pl.DataFrame) -> tuple[list[str], np.ndarray]:
    """(likely_scheme, scheme_confidence) from the rule families: the family with the most
    weight, its share of the family weights as confidence; `unclear` (confidence null)
    when no family rule is hit."""
    names, confidence = _rule_family_columns(frame)
    return names.to_list(), confidence


def _rule_family_columns(frame: pl.DataFrame) -> tuple[pl.Series, np.ndarray]:
    if frame.height == 0:
        return pl.Series([], dtype=pl.String), np.zeros(0)
    share = family_shares(frame)
    best = np.argmax(share, axis=1)
    confidence = share[np.arange(len(best)), best]
    hit = share.sum(axis=1) > 0
    return _names(best, hit), np.where(hit, confidence, np.nan)


def scheme_probabilities(frame: pl.DataFrame, scheme_model) -> np.ndarray:
    """Per row, a probability for each of SCHEMES: MODEL_WEIGHT of the scheme model's class
    probabilities plus the rest of the rule families' shares (the model alone where no
    family flag holds). The labelled typologies are few — a few dozen schemes — and a model learned
    from them alone generalises poorly to new schemes; the families carry what every
    scheme of a kind shows, and find schemes no label has named yet (measured:
    benchmarks/bench_trust.py)."""
    model = np.zeros((frame.height, len(SCHEMES)))
    proba = scheme_model.predict_proba(frame)
    for i, scheme in enumerate(scheme_model.classes_):
        model[:, SCHEMES.index(scheme)] = proba[:, i]
    share = family_shares(frame)
    hit = share.sum(axis=1, keepdims=True) > 0
    return np.where(hit, MODEL_WEIGHT * model + (1 - MODEL_WEIGHT) * share, model)


def scheme_columns(frame: pl.DataFrame, scheme_model=None) -> pl.DataFrame:
    """`likely_scheme` and `scheme_confidence` for every row of a feature frame (same
    order): the scheme model blended with the rule families when there is a model
    (`scheme_probabilities`), else the rule families alone; `unclear` below
    MIN_CONFIDENCE."""
    if scheme_model is None:
        names, confidence = _rule_family_columns(frame)
    elif frame.height == 0:
        names, confidence = [], np.zeros(0)
    else:
        proba = scheme_probabilities(frame, scheme_model)
        best = np.argmax(proba, axis=1)
        confidence = proba[np.arange(len(best)), best]
        names = _names(best, confidence >= MIN_CONFIDENCE)
    return pl.DataFrame({
        "likely_scheme": pl.Series(names, dtype=pl.String),
        "scheme_confidence": pl.Series(confidence, dtype=pl.Float64, nan_to_null=True),
    })

"""Plain-language reasons: LightGBM contributions and rule hits, with the values that matter."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from features.registry import FEATURES, flag_expression, render_reason
from features.rules import RULES, render_rule_reason

_RULES = {r.name: r for r in RULES}


# The fact each feature and rule states. A reason list states a fact once: "paid from
# HK" (a feature) and "paid from HK for a party in another country" (a rule) are one
# fact, and the fuller text — the mechanism's, else the rule's — is kept.
FACT_OF: dict[str, str] = {
    # who paid, from where and how is one fact: "paid from HK" and "paid by third_party"
    # are stated together (`payment_text`), not as two reasons
    **dict.fromkeys(("payer_country_mismatch", "payer_in_d5_hk_or_mo", "china_payer",
                     "payer_is_other_party", "unusual_payment_method", "unusual_payment"),
                    "payer"),
    **dict.fromkeys(("later_reexported_to_d5_hk_mo", "reexported_unit_share_90d",
                     "later_reexport", "days_until_reexport"), "reexport"),
    **dict.fromkeys(("transit_via_hk_or_mo", "transit_hk_mo"), "route"),
    **dict.fromkeys(("destination_is_hub", "hub_destination_controlled"), "hub"),
    **dict.fromkeys(("ultimate_parent_in_d5_or_macau", "d5_ultimate_parent"), "ownership"),
    # the name and the address score are the match score's parts: one screening fact
    **dict.fromkeys(("screening_match_score", "screening_name_score", "screening_address_score",
                     "screening_match"), "screening"),
    **dict.fromkeys(("consignee_age_days", "new_company_controlled"), "age"),
    **dict.fromkeys(("lessee_age_days", "new_lessee"), "lessee_age"),
    "consignee_employees": "employees",
    **dict.fromkeys(("consignee_address_shared_by", "shared_address"), "address"),
    **dict.fromkeys(("consignee_industry_misfit", "industry_misfit"), "industry"),
    # declared uncontrolled, no licence stated, needs a licence: one fact about the licence
    **dict.fromkeys(("misdeclared_to_licence_destination", "misdeclared_classification",
                     "no_licence_for_licence_destination", "no_licence_stated",
                     "licence_required_for_item"), "licence"),
    **dict.fromkeys(("controlled_declared_low_eccn", "controlled_under_low_eccn"), "low_eccn"),
    **dict.fromkeys(("parts_hs_for_gpu_priced_item", "gpu_as_parts"), "parts"),
    **dict.fromkeys(("unit_value_to_market_low", "undervalued"), "value"),
    "unit_value_to_learned_median": "value_median",
    "weight_to_catalogue": "weight",
    **dict.fromkeys(("vague_description",), "vague"),
    **dict.fromkeys(("linked_small_shipments_14d", "splitting"), "splitting"),
    **dict.fromkeys(("first_shipment_to_consignee", "first_large_order"), "first"),
    **dict.fromkeys(("bare_metal_access", "bare_metal_d5_lessee"), "bare_metal"),
    **dict.fromkeys(("gpus_per_lessee_employee", "capacity_beyond_size"), "capacity"),
    "lessee_in_d5_or_macau": "lessee_country",
    "datacenter_in_hub": "datacenter",
    **dict.fromkeys(("consignee_is_logistics", "logistics_consignee"), "logistics"),
}


def fact_of(name: str) -> str:
    return FACT_OF.get(name, name)


_PAID = {"third_party": "paid by a third party", "cash": "paid in cash",
         "crypto": "paid in crypto"}


def payment_text(row: dict) -> str | None:
    """The payer fact in one statement when the record shows both an unusual payment
    method and a payer country that is a red flag ("paid by a third party from HK for a
    party in another country"); None when it shows one of them (its own text says it)."""
    method = row.get("payment_method") if row.get("unusual_payment_method") is True else None
    mismatch = row.get("payer_country_mismatch") is True
    country = row.get("payer_country")
    if method is None or not country or not (mismatch or row.get("payer_in_d5_hk_or_mo") is True):
        return None
    text = f"{_PAID.get(method, f'paid by {method}')} from {country}"
    return text + " for a party in another country" if mismatch else text


def rule_reasons(row: dict) -> list[str]:
    return [text for name in row.get("rule_hits") or []
            if (text := render_rule_reason(name, row)) is not None]


def rule_labels(hits: pl.Expr) -> pl.Expr:
    """Rule hits as short text for rows below the top N (no per-row Python)."""
    mapping = {r.name: r.description for r in RULES}
    return hits.list.eval(pl.element().replace_strict(mapping, default=pl.element())) \
        .list.join("; ").fill_null("")


def _unusual(row: dict, unsupervised=None, stated: set[str] = frozenset()) -> str | None:
    """What makes a record unusual to the anomaly detectors: its most extreme values
    against the fitted population (median and 5-95% spread), or the percentile alone
    when the detectors' statistics are not at hand."""
    value = row.get("unsupervised_score")
    if value is None or value < 0.9:
        return None
    extremes = unusual_values(row, unsupervised, stated=stated) \
        if unsupervised is not None else []
    if extremes:
        return "unusual values: " + ", ".join(extremes)
    return (f"unusual combination of values: more unusual than {value:.0%} of the records "
            "the anomaly detectors were fitted on")


def _plain(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:,.3g}" if value != int(value) else f"{int(value):,}"


def unusual_values(row: dict, unsupervised, limit: int = 3, min_spread: float = 1.0,
                   stated: set[str] = frozenset()) -> list[str]:
    """The record's values furthest from the detectors' population, as "name value
    (typical median)": only features with a value (never a null) and not category
    codes, at least ``min_spread`` 5-95% spreads from the median, and none whose fact
    (`fact_of`) is in ``stated`` (already said by an earlier reason)."""
    center = getattr(unsupervised, "center_", None)
    scale = getattr(unsupervised, "scale_", None)
    if center is None or scale is None:
        return []
    found = []
    for i, name in enumerate(unsupervised.features):
        value = row.get(name)
        if value is None or isinstance(value, bool) or name.endswith("_code") \
                or fact_of(name) in stated:
            continue
        if isinstance(value, float) and math.isnan(value):
            continue
        z = (float(value) - center[i]) / scale[i]
        if abs(z) >= min_spread:
            found.append((-abs(z), name, float(value), float(center[i])))
    found.sort()
    listed, shown = [], set()
    for _, name, v, c in found:
        # two inputs holding one fact (unit_value_usd and the learned
        # unit_value_per_unit_usd) would state it twice: the first stands for both
        if (_plain(v), _plain(c)) in shown:
            continue
        shown.add((_plain(v), _plain(c)))
        listed.append(f"{name.replace('_', ' ')} {_plain(v)} (typical {_plain(c)})")
    return listed[:limit]


def _flags(head: pl.DataFrame) -> list[dict[str, bool]]:
    """Per row: which features hold a value that is a red flag in itself."""
    exprs = [e.alias(name) for name, f in FEATURES.items()
             if f.model_input and f.reason and name in head.columns
             and (e := flag_expression(name, head.schema[name])) is not None]
    return list(head.select(exprs).iter_rows(named=True)) if exprs else [{}] * head.height


def feature_reason(name: str, row: dict, unsupervised=None,
                   stated: set[str] = frozenset()) -> str | None:
    if name.startswith("unsupervised_"):
        return _unusual(row, unsupervised, stated)
    if name in FEATURES:
        return render_reason(name, row)
    return None


class _ReasonList:
    """Reasons in order, one statement per fact; a later fuller text for a fact already
    listed (``preferred``) replaces the earlier one in place."""

    def __init__(self, preferred: dict[str, str]):
        self.preferred = preferred
        self.facts: list[str] = []
        self.texts: dict[str, str] = {}

    def add(self, fact: str, text: str | None) -> None:
        if text is None or fact in self.texts or text in self.texts.values():
            return
        self.facts.append(fact)
        self.texts[fact] = self.preferred.get(fact, text)

    def out(self) -> list[str]:
        return [self.texts[f] for f in self.facts]


def reasons_for_row(row: dict, contributions: np.ndarray | None, names: list[str],
                    flags: dict[str, bool], unsupervised=None,
                    max_feature_reasons: int = 4, other_schemes: list[str] = (),
                    max_mechanisms: int = 3) -> list[str]:
    """One record's reasons: the mechanism of its likely scheme with its values first,
    then (up to ``max_mechanisms`` in all) the mechanisms of ``other_schemes`` (most
    probable first) that the record's values show, then the red-flag
    features by contribution, then the rule hits; each fact once, and never a feature
    without a value. A record whose largest contribution is the anomaly layer (or,
    without a model, with neither a mechanism nor a rule hit) says which values are
    unusual."""
    from detector.mechanisms import mechanism

    rule_texts = {}
    for hit in row.get("rule_hits") or []:
        text = render_rule_reason(hit, row)
        if text is not None:
            rule_texts.setdefault(fact_of(hit), text)
    if (paid := payment_text(row)) is not None:
        rule_texts["payer"] = paid
    reasons = _ReasonList(dict(rule_texts))
    stated = 0
    for scheme in [row.get("likely_scheme"), *other_schemes]:
        found = mechanism(scheme, row) if stated < max_mechanisms else None
        if found is None or found[0] in reasons.texts.values():
            continue
        text, facts = found
        if all(f in reasons.texts for f in facts):
            continue  # every fact of it already stated
        reasons.add(f"mechanism:{scheme}", text)
        for fact in facts:  # stated by the mechanism: not again
            reasons.texts.setdefault(fact, text)
        stated += 1
    if contributions is not None:
        order = np.argsort(-contributions[:-1], kind="stable")
        top = names[order[0]] if len(order) and contributions[order[0]] > 0 else None
        # the rule hits are stated at the end: their facts are not unusual values either
        if top is not None and top.startswith("unsupervised_"):
            reasons.add("unusual", _unusual(row, unsupervised,
                                            set(reasons.texts) | set(rule_texts)))
        added = 0
        for j in order:
            if contributions[j] <= 0 or added >= max_feature_reasons:
                break
            name = names[j]
            if not flags.get(name, name.startswith("unsupervised_")):
                continue
            fact = "unusual" if name.startswith("unsupervised_") else fact_of(name)
            before = len(reasons.facts)
            reasons.add(fact, feature_reason(name, row, unsupervised,
                                             set(reasons.texts) | set(rule_texts)))
            added += len(reasons.facts) > before
    elif not row.get("rule_hits") and not stated:
        reasons.add("unusual", _unusual(row, unsupervised))
    for hit in row.get("rule_hits") or []:
        reasons.add(fact_of(hit), render_rule_reason(hit, row))
    return reasons.out()


def full_reasons(head: pl.DataFrame, scorer, fallback: bool,
                 max_feature_reasons: int = 4, scheme_model=None) -> list[str]:
    """Reasons for the rows shown to a person (see `reasons_for_row`), `; `-joined;
    ``scheme_model``: the bundle's (detector.models.scheme), which with the rule
    families orders the schemes whose mechanisms a record's reasons state."""
    if head.height == 0:
        return []
    rows = list(head.iter_rows(named=True))
    flags = _flags(head)
    if fallback:
        contributions, names = None, []
    else:
        contributions = scorer.contributions(head)
        names = scorer.supervised_.features
    unsupervised = getattr(scorer, "unsupervised_", None)
    others = _other_schemes(head, scheme_model)
    return ["; ".join(reasons_for_row(
        row, None if contributions is None else contributions[i], names, flags[i],
        unsupervised, max_feature_reasons, others[i])) for i, row in enumerate(rows)]


def _other_schemes(head: pl.DataFrame, scheme_model=None) -> list[list[str]]:
    """Per row, the schemes it may follow, most probable first (detector.schemes: the
    scheme model blended with the rule families, or the families alone); a scheme with
    no probability is left out."""
    from detector.schemes import SCHEMES, family_shares, scheme_probabilities

    proba = family_shares(head) if scheme_model is None else \
        scheme_probabilities(head, scheme_model)
    return [[SCHEMES[j] for j in np.argsort(-r, kind="stable")] for r in proba]


DRIVERS_SHOWN = 8
LAYER_COLUMNS = ("rule_points", "unsupervised_score")


def _applies(name: str, record: dict) -> bool:
    """Whether a feature has a value for this record: not null, and of its kind."""
    value = record.get(name)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    feature = FEATURES.get(name)
    return feature is None or record.get("record_kind") in feature.kinds


def explain_record(row: pl.DataFrame, of_records: int | None, model, *,
                   rank: int | None = None, drivers: int = DRIVERS_SHOWN) -> dict:
    """Everything `detector explain` shows for one record.

    ``row``: the record's layered, risk-scored frame (one row). Its rank is the row's
    `rank` column, else ``rank``; ``of_records``: how many records were ranked (None:
    not known). `features` lists every model input with its value and contribution;
    `drivers` the few that matter: the largest contributions of features that have a
    value for this record (a null or another kind's feature never drives it).
    """
    from features.registry import model_feature_names

    record = row.row(0, named=True)
    features = []
    contributions = {}
    if not model.fallback:
        scorer = model.bundle.model
        contrib = scorer.contributions(row)[0]
        contributions = dict(zip(scorer.supervised_.features, contrib[:-1].tolist()))
    from features.learned import INPUT_PREFIX

    unsupervised = getattr(model.bundle.model, "unsupervised_", None) if not model.fallback \
        else None
    inputs = [] if model.fallback else [n for n in model.bundle.model.supervised_.features
                                        if n.startswith(INPUT_PREFIX)]
    for name in [*model_feature_names(), *inputs]:
        features.append({
            "feature": name,
            "value": record.get(name),
            "contribution": contributions.get(name),
            "applies": _applies(name, record),
            "description": (FEATURES[name].description if name in FEATURES else
                            f"column {name[len(INPUT_PREFIX):]!r} as a model input "
                            "(training config [inputs])"),
            "reason": render_reason(name, record),
        })
    for name in (*LAYER_COLUMNS,
                 *[c for c in record if c.startswith("unsupervised_") and c not in LAYER_COLUMNS]):
        if name in record:
            features.append({"feature": name, "value": record[name],
                             "contribution": contributions.get(name),
                             "applies": record[name] is not None,
                             "description": "layer score",
                             "reason": feature_reason(name, record, unsupervised)})
    features.sort(key=lambda f: -(f["contribution"] or 0.0))
    ranked = sorted((f for f in features if f["applies"]),
                    key=lambda f: -abs(f["contribution"] or 0.0))
    if model.fallback:  # no contributions: the red flags that hold, then the layer scores
        ranked = [f for f in ranked if f["reason"]] + [f for f in ranked
                                                       if f["feature"] in LAYER_COLUMNS]
    context = {n: record[n] for n, f in FEATURES.items() if not f.model_input and n in record}
    return {
        "record_kind": record["record_kind"],
        "record_id": record["record_id"],
        "record_date": str(record.get("record_date")),
        "risk_score": record["risk_score"],
        "rank": record.get("rank", rank),
        "of_records": of_records,
        "model": model.label,
        "fallback": model.fallback,
        "likely_scheme": record.get("likely_scheme"),
        "scheme_confidence": record.get("scheme_confidence"),
        "rule_hits": [{"rule": h, "points": _RULES[h].points,
                       "reason": render_rule_reason(h, record)}
                      for h in (record.get("rule_hits") or []) if h in _RULES],
        "reasons": full_reasons(row, None if model.fallback else model.bundle.model,
                                model.fallback, scheme_model=model.scheme_model)[0],
        "drivers": [f for f in ranked if f["contribution"] or model.fallback][:drivers],
        "features": features,
        "context": {k: (str(v) if v is not None else None) for k, v in context.items()},
    }


def _shown(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.4g}"
    return str(value)


def explain_text(explanation: dict, show_all: bool = False) -> str:
    """`detector explain` as a reader sees it: the likely scheme, the reasons, the rule
    hits and the few features that drive the score (``show_all``: every feature)."""
    e = explanation
    rank = (f"rank {e['rank']} of {e['of_records']}" if e.get("rank") is not None
            else "rank in the batch: pass --scores (the batch's scores table) to show it")
    scheme = e.get("likely_scheme") or "unclear"
    if e.get("scheme_confidence") is not None:
        scheme += f" (confidence {e['scheme_confidence']:.2f})"
    lines = [
        f"{e['record_kind']} {e['record_id']} ({e['record_date']}): risk {e['risk_score']:.3f}, "
        f"{rank} (model {e['model']})",
        f"Likely scheme: {scheme}",
        "",
        "Why: " + (e["reasons"] or "no red flags and no notable contributions"),
        "",
        "Rule hits:" if e["rule_hits"] else "Rule hits: none",
    ]
    for h in e["rule_hits"]:
        lines.append(f"  +{h['points']:g}  {h['rule']}: {h['reason']}")
    shown = e["features"] if show_all else e.get("drivers", [])
    title = ("All features (n/a: no value for this record)" if show_all else
             "What drives the score (features with a value, by contribution; --all for "
             "every feature)")
    lines += ["", title, f"  {'feature':<36} {'value':>16} {'contribution':>13}"]
    for f in shown:
        contrib = "" if f["contribution"] is None else f"{f['contribution']:+.3f}"
        value = _shown(f["value"] if f.get("applies", True) else None)
        lines.append(f"  {f['feature']:<36} {value:>16} {contrib:>13}")
    if e["context"]:
        lines += ["", "Context:"]
        lines += [f"  {k}: {v}" for k, v in e["context"].items() if v is not None]
    return "\n".join(lines)

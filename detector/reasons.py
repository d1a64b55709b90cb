"""Plain-language reasons: LightGBM contributions and rule hits, with the values that matter."""

from __future__ import annotations

import numpy as np
import polars as pl

from features.registry import FEATURES, flag_expression, render_reason
from features.rules import RULES, render_rule_reason

_RULES = {r.name: r for r in RULES}
# The feature columns each rule tests: a feature a hit rule already states is not restated.
_RULE_FEATURES = {r.name: set(r.condition.meta.root_names()) for r in RULES}


def rule_reasons(row: dict) -> list[str]:
    return [text for name in row.get("rule_hits") or []
            if (text := render_rule_reason(name, row)) is not None]


def rule_labels(hits: pl.Expr) -> pl.Expr:
    """Rule hits as short text for rows below the top N (no per-row Python)."""
    mapping = {r.name: r.description for r in RULES}
    return hits.list.eval(pl.element().replace_strict(mapping, default=pl.element())) \
        .list.join("; ").fill_null("")


def _unusual(row: dict) -> str | None:
    value = row.get("unsupervised_score")
    if value is None or value < 0.9:
        return None
    return (f"unusual combination of values: more unusual than {value:.0%} of the records "
            "the anomaly detectors were fitted on")


def _flags(head: pl.DataFrame) -> list[dict[str, bool]]:
    """Per row: which features hold a value that is a red flag in itself."""
    exprs = [e.alias(name) for name, f in FEATURES.items()
             if f.model_input and f.reason and name in head.columns
             and (e := flag_expression(name, head.schema[name])) is not None]
    return list(head.select(exprs).iter_rows(named=True)) if exprs else [{}] * head.height


def feature_reason(name: str, row: dict) -> str | None:
    if name.startswith("unsupervised_"):
        return _unusual(row)
    if name in FEATURES:
        return render_reason(name, row)
    return None


def full_reasons(head: pl.DataFrame, scorer, fallback: bool,
                 max_feature_reasons: int = 4) -> list[str]:
    """Reasons for the rows shown to a person: top contributions, then rule hits."""
    if head.height == 0:
        return []
    rows = list(head.iter_rows(named=True))
    flags = _flags(head)
    if fallback:
        contributions, names = None, []
    else:
        contributions = scorer.contributions(head)
        names = scorer.supervised_.features
    out = []
    for i, row in enumerate(rows):
        reasons: list[str] = []
        stated = set().union(*(_RULE_FEATURES.get(h, set()) for h in row.get("rule_hits") or []))
        if contributions is not None:
            order = np.argsort(-contributions[i, :-1], kind="stable")
            for j in order:
                if contributions[i, j] <= 0 or len(reasons) >= max_feature_reasons:
                    break
                if names[j] in stated or not flags[i].get(names[j],
                                                          names[j].startswith("unsupervised_")):
                    continue
                text = feature_reason(names[j], row)
                if text and text not in reasons:
                    reasons.append(text)
        elif (text := _unusual(row)) is not None:
            reasons.append(text)
        for text in rule_reasons(row):
            if text not in reasons:
                reasons.append(text)
        out.append("; ".join(reasons))
    return out


def explain_record(row: pl.DataFrame, scored, model) -> dict:
    """Everything `detector explain` shows for one record."""
    from features.registry import model_feature_names

    record = row.row(0, named=True)
    features = []
    contributions = {}
    if not model.fallback:
        scorer = model.bundle.model
        contrib = scorer.contributions(row)[0]
        contributions = dict(zip(scorer.supervised_.features, contrib[:-1].tolist()))
        contributions["(baseline)"] = float(contrib[-1])
    from features.learned import INPUT_PREFIX

    inputs = [] if model.fallback else [n for n in model.bundle.model.supervised_.features
                                        if n.startswith(INPUT_PREFIX)]
    for name in [*model_feature_names(), *inputs]:
        value = record.get(name)
        features.append({
            "feature": name,
            "value": value,
            "contribution": contributions.get(name),
            "description": (FEATURES[name].description if name in FEATURES else
                            f"column {name[len(INPUT_PREFIX):]!r} as a model input "
                            "(training config [inputs])"),
            "reason": render_reason(name, record),
        })
    for name in ("rule_points", "unsupervised_score",
                 *[c for c in record if c.startswith("unsupervised_") and c != "unsupervised_score"]):
        if name in record:
            features.append({"feature": name, "value": record[name],
                             "contribution": contributions.get(name),
                             "description": "layer score", "reason": feature_reason(name, record)})
    features.sort(key=lambda f: -(f["contribution"] or 0.0))
    context = {n: record[n] for n, f in FEATURES.items() if not f.model_input and n in record}
    return {
        "record_kind": record["record_kind"],
        "record_id": record["record_id"],
        "record_date": str(record.get("record_date")),
        "risk_score": record["risk_score"],
        "rank": record["rank"],
        "of_records": scored.frame.height,
        "model": model.label,
        "fallback": model.fallback,
        "rule_hits": [{"rule": h, "points": _RULES[h].points,
                       "reason": render_rule_reason(h, record)}
                      for h in (record.get("rule_hits") or []) if h in _RULES],
        "reasons": full_reasons(row, None if model.fallback else model.bundle.model,
                                model.fallback)[0],
        "features": features,
        "context": {k: (str(v) if v is not None else None) for k, v in context.items()},
    }


def explain_text(explanation: dict) -> str:
    """`detector explain` as a reader sees it."""
    e = explanation
    lines = [
        f"{e['record_kind']} {e['record_id']} ({e['record_date']}): risk {e['risk_score']:.3f}, "
        f"rank {e['rank']} of {e['of_records']} (model {e['model']})",
        "",
        "Why: " + (e["reasons"] or "no red flags and no notable contributions"),
        "",
        "Rule hits:" if e["rule_hits"] else "Rule hits: none",
    ]
    for h in e["rule_hits"]:
        lines.append(f"  +{h['points']:g}  {h['rule']}: {h['reason']}")
    lines += ["", f"{'feature':<36} {'value':>16} {'contribution':>13}"]
    for f in e["features"]:
        value = f["value"]
        shown = "null" if value is None else (f"{value:,.4g}" if isinstance(value, float)
                                              else str(value))
        contrib = "" if f["contribution"] is None else f"{f['contribution']:+.3f}"
        lines.append(f"{f['feature']:<36} {shown:>16} {contrib:>13}")
    if e["context"]:
        lines += ["", "Context:"]
        lines += [f"  {k}: {v}" for k, v in e["context"].items() if v is not None]
    return "\n".join(lines)

"""The report page: the figures of data.py, the charts of charts.py and the case cards
of cards.py rendered through the Jinja2 template (templates/report.html.j2), and written
as HTML or PDF."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from detector.contract import BIDI_CONTROLS
from detector.errors import EnvironmentFailure, UsageError
from detector.queue import parse_capacity
from detector.report.cards import (
    anchor,
    build_registry,
    card_rows,
    consignee_key,
    lease_card,
    shipment_card,
)
from detector.report.charts import (
    money,
    ranked_bars,
    risk_over_time,
    score_distribution,
    typology_mix,
)
from detector.report.data import (
    COUNT_METRICS,
    FALLBACK_MODEL,
    checked_scores,
    figures,
    headline,
    hub_countries,
    metric_label,
    metric_order,
    month_range,
    over_time,
    previous_month,
    ranked_parties,
    report_period,
    report_records,
    review_csv,
    scored_overview,
    scored_records,
    typology_counts,
    what_changed,
)

if TYPE_CHECKING:
    from detector.tables import Dataset

# Bidirectional controls reorder how text is shown (a name can display as another): every
# value a page shows has them as visible escapes, as the CSV writer does.
_BIDI_TABLE = {ord(c): f"\\u{ord(c):04x}" for c in BIDI_CONTROLS}


def _visible_bidi(value: Any) -> Any:
    return value.translate(_BIDI_TABLE) if isinstance(value, str) else value


def environment():
    import jinja2

    env = jinja2.Environment(
        # the page's own template, then the parts it shares with the review page
        loader=jinja2.ChoiceLoader([jinja2.PackageLoader("detector.report", "templates"),
                                    jinja2.PackageLoader("detector", "templates")]),
        autoescape=True,  # every value from the data is text, never markup
        finalize=_visible_bidi,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
    )
    env.filters["money"] = money
    env.filters["score"] = lambda v: f"{v:.3f}"
    env.filters["country_or_dash"] = lambda v: v or "—"
    return env


def build_report(dataset: Dataset, scores: pl.DataFrame, *, model_info: dict | None,
                 period: str | None = None, capacity: str = "1%",
                 history: Sequence[Dataset] = (), provenance: dict | None = None,
                 scored_rows: pl.DataFrame | None = None, drift=None) -> str:
    """The risk report for one month of ``dataset`` as one self-contained HTML page.

    ``scored_rows``: the review records' scored feature rows (record_kind, record_id and
    `CARD_FEATURES`), so their case cards show what scoring computed (without them, the
    feature builders compute them for the review records: a page made from a scores
    table alone); ``drift``:
    the batch's `detector.drift.DriftReport` (None without a trained model: the page
    then has no "what changed" section)."""
    history = list(history)
    # Only the report month and the one before are needed row by row, and the records at
    # or above the threshold for the chart over time: a large batch's other records are
    # read for their keys and months only.
    scores = checked_scores(scores)
    months_present, score_models = scored_overview(dataset, scores)
    period = report_period(pl.DataFrame({"month": months_present}, schema={"month": pl.String}),
                           period, dataset.directory)
    previous_period = previous_month(period)
    window = scored_records(dataset, scores, [period, previous_period])
    in_period = window.filter(pl.col("month") == period)

    k = parse_capacity(capacity, in_period.height)
    if "queue_reason" in in_period.columns and in_period["queue_reason"].is_not_null().any():
        # the review queue as chosen (detector.queue): by risk, plus records to explore
        review = in_period.filter(pl.col("queue_reason").is_not_null())
        by_risk = review.filter(pl.col("queue_reason") == "risk")
        threshold = float((by_risk if by_risk.height else review)["risk_score"][-1])
    else:
        review = in_period.head(k)
        threshold = float(review["risk_score"][-1])
    current = figures(in_period, threshold)

    previous_scored = window.filter(pl.col("month") == previous_period)
    previous_note = None
    if previous_scored.height:
        previous = figures(previous_scored, threshold)
    else:
        # Records of the previous month that only the history holds were not scored in
        # this run: we can count them but not say how many cross the threshold.
        filed = sum(report_records(h).filter(pl.col("month") == previous_period).height
                    for h in history)
        previous = None
        previous_note = (f"{previous_period}: {filed:,} records in the history datasets, not "
                         "scored in this run" if filed else
                         f"no records dated {previous_period} in the data")
    headlines = [
        ("Records scored", headline(current, previous, "scored", "count", signals_risk=False)),
        (f"At or above the review threshold ({threshold:.3f})",
         headline(current, previous, "flagged", "count")),
        ("Declared value at risk", headline(current, previous, "value_at_risk", "money")),
    ]

    months = month_range(months_present[0], max(months_present[-1], period))
    flagged = scored_records(dataset, scores, keys=scores.filter(
        pl.col("risk_score") >= threshold).select("record_kind", "record_id"))
    charts_svg = {
        "over_time": risk_over_time(
            "chart-time", months,
            [("by destination", over_time(flagged, threshold, "destination", months)),
             ("by hub (first hub on the route; data-centre country for leases)",
              over_time(flagged, threshold, "hub", months))],
            period, "records at or above threshold"),
        "distribution": score_distribution(
            "chart-dist", in_period["risk_score"].to_list(), threshold, k),
        "consignees": ranked_bars(
            "chart-consignees", "Top consignees and lessees by risk",
            ranked_parties(in_period, "party_name", threshold, "party_country"),
            "highest risk score of a record"),
        "forwarders": ranked_bars(
            "chart-forwarders", "Top forwarders by risk",
            ranked_parties(in_period, "forwarder_name", threshold),
            "highest risk score of a record"),
    }
    typologies = typology_counts(dataset, history, in_period.select("record_kind", "record_id"))
    charts_svg["typology"] = (typology_mix("chart-typology", typologies, period)
                              if typologies else None)

    shipments_by_id = {r["shipment_id"]: r for r in dataset.shipments.lazy().filter(
        pl.col("shipment_id").is_in(review.filter(pl.col("record_kind") == "shipment")
                                    ["record_id"].implode())).collect().to_dicts()}
    trail_keys = [consignee_key(r) for r in shipments_by_id.values()]
    registry = build_registry(dataset, history, trail_keys)
    leases_by_id = {r["lease_id"]: r for r in dataset.leases.filter(
        pl.col("lease_id").is_in(review.filter(pl.col("record_kind") == "lease")
                                 ["record_id"].implode())).to_dicts()}
    if scored_rows is None:
        scored_rows = card_rows(dataset, history, review.select("record_kind", "record_id"))
    by_record = {(r["record_kind"], r["record_id"]): r for r in scored_rows.to_dicts()}
    # which later exports of the review's consignees count as re-exports, decided at once
    registry.prepare_trails(trail_keys)
    cards = []
    for position, rec in enumerate(review.to_dicts(), start=1):
        record = rec | {
            "position": position, "anchor": anchor(rec["record_kind"], rec["record_id"]),
            "reason_list": [r.strip() for r in (rec["reasons"] or "").split(";") if r.strip()],
        }
        feature_row = by_record.get((rec["record_kind"], rec["record_id"]))
        if rec["record_kind"] == "shipment":
            card = shipment_card(shipments_by_id[rec["record_id"]], record, registry,
                                  feature_row)
            r = card["row"]
            card["goods"] = r["description"]
            card["classification"] = (f"{r.get('eccn') or 'no ECCN'} · HS {r['hs_code']}"
                                      f" · {r['quantity']:,} units")
        else:
            card = lease_card(leases_by_id[rec["record_id"]], record, registry, feature_row)
            r = card["row"]
            card["goods"] = f"{r['gpu_count']:,} × {r['gpu_model']}"
            card["classification"] = f"lease, {r.get('access_type') or 'access unknown'}"
        cards.append(card)

    fallback = model_info is None or FALLBACK_MODEL in score_models
    metrics = [(metric_label(k), int(v) if k in COUNT_METRICS and v is not None else v)
               for k, v in sorted(((model_info or {}).get("metrics") or {}).items(),
                                  key=lambda kv: metric_order(kv[0]))]

    html = environment().get_template("report.html.j2").render(
        period=period, previous_period=previous_period, previous_note=previous_note,
        capacity_text=capacity, capacity=k, threshold=threshold,
        explore_count=sum(1 for c in cards if c.get("queue_reason") == "explore"),
        n_period=in_period.height,
        n_shipments=in_period.filter(pl.col("record_kind") == "shipment").height,
        n_leases=in_period.filter(pl.col("record_kind") == "lease").height,
        headlines=headlines, cards=cards, charts=charts_svg,
        model_info=model_info, metrics=metrics, fallback=fallback,
        score_models=score_models, provenance=sorted((provenance or {}).items()),
        history_count=len(history), months=months, hubs=", ".join(hub_countries()),
        review_csv=review_csv(cards), changed=what_changed(drift),
    )
    return html

# ----------------------------------------------------------------------------- writing

def write_report(html: str, out: Path) -> Path:
    """Write the report: ``.html`` as is, ``.pdf`` through WeasyPrint; atomically either way."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".html", ".htm", ".pdf"):
        raise UsageError(f"--out {out}: expected a file name ending in .html or .pdf")
    if suffix == ".pdf":
        weasyprint = _import_weasyprint()
    from detector.files import atomic_write

    def write(tmp: Path) -> None:
        if suffix == ".pdf":
            # base_url: relative references (there are none) would resolve locally only.
            weasyprint.HTML(string=html, base_url=str(out.parent)).write_pdf(tmp)
        else:
            tmp.write_text(html, encoding="utf-8")

    atomic_write(out, write)  # the user's umask decides the mode, as for every output
    return out


def _import_weasyprint() -> Any:
    try:
        import weasyprint
    except ImportError as exc:
        name = getattr(exc, "name", "") or ""
        if name.startswith("weasyprint") or "weasyprint" in str(exc) and "No module" in str(exc):
            raise EnvironmentFailure(
                "PDF output needs the weasyprint package: pip install weasyprint "
                "(or pip install -e '.[dev]'); or write .html instead") from exc
        raise EnvironmentFailure(_missing_library_message(exc)) from exc
    except OSError as exc:  # cffi could not load a system library (Pango, GObject)
        raise EnvironmentFailure(_missing_library_message(exc)) from exc
    return weasyprint


def _missing_library_message(exc: Exception) -> str:
    return ("PDF output needs the system Pango library, which could not be loaded "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); install it "
            "with: apt-get install libpango-1.0-0 libpangoft2-1.0-0 "
            "(or write .html instead)")


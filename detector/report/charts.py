"""Charts for the risk report, drawn as inline SVG text.

Everything here returns an ``<svg>`` string ready to paste into HTML: no files, no
external references, and the same input always gives the same bytes (fixed hash salt,
no date metadata, ids prefixed per chart so several charts can share one page).
Matplotlib is used through ``Figure`` directly (no pyplot), so no global backend or
figure registry is touched; the Agg backend is selected for any raster fallback.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: a scheduler has no display

from markupsafe import escape
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#bcbd22", "#7f7f7f"]
OTHER_COLOUR = "#b0b0b0"
THRESHOLD_COLOUR = "#d62728"

# Deterministic SVG: a fixed hash salt instead of a random one, glyphs as paths so the
# chart looks the same in every browser and in WeasyPrint, and no mathtext parsing of
# names from the data (a consignee called "$5 Trading" must not become maths).
SVG_RC = {
    "svg.hashsalt": "detector-report",
    "svg.fonttype": "path",
    "text.parse_math": False,
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
}

_PROLOG = re.compile(r"^.*?(?=<svg)", re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.DOTALL)
_ID = re.compile(r'\bid="([^"]+)"')


def figure_to_svg(fig: Figure, chart_id: str, title: str) -> str:
    """Serialise ``fig`` as an inline ``<svg>`` element whose ids all start with ``chart_id``."""
    buffer = io.StringIO()
    with rc_context(SVG_RC):
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None},
                    bbox_inches="tight")
    svg = _METADATA.sub("", _COMMENT.sub("", _PROLOG.sub("", buffer.getvalue(), count=1)))
    return _prefix_ids(svg, chart_id).replace(
        "<svg ", f'<svg role="img" aria-label="{escape(title)}" class="chart" ', 1)


def _prefix_ids(svg: str, prefix: str) -> str:
    """Make every id unique to this chart: glyph and clip-path ids repeat across charts."""
    ids = set(_ID.findall(svg))
    if not ids:
        return svg
    pattern = re.compile(r'(id="|#)(' + "|".join(re.escape(i) for i in sorted(ids, key=len,
                                                                                reverse=True))
                         + r')(?=[")])')
    return pattern.sub(lambda m: f"{m.group(1)}{prefix}-{m.group(2)}", svg)


def _new_figure(width: float, height: float) -> Figure:
    with rc_context(SVG_RC):
        return Figure(figsize=(width, height), dpi=100, layout="constrained")


def short(text: str, limit: int = 28) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def money(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"${value / size:,.1f}{unit}"
    return f"${value:,.0f}"


def empty_chart(chart_id: str, title: str, message: str) -> str:
    with rc_context(SVG_RC):
        fig = _new_figure(6.0, 1.2)
        ax = fig.add_subplot()
        ax.set_axis_off()
        ax.set_title(title)
        ax.text(0.0, 0.4, message, transform=ax.transAxes, color="#555555")
        return figure_to_svg(fig, chart_id, title)


def risk_over_time(chart_id: str, months: Sequence[str],
                   panels: Sequence[tuple[str, dict[str, list[int]]]],
                   period: str, y_label: str) -> str:
    """Small multiples: one row per grouping (destination, hub), one small chart per group
    (its top groups, then 'other'), each alone on a shared scale; the period shaded.
    Separate charts read at a glance where one chart of crossing lines does not."""
    title = "Flagged records over time"
    columns = max([len(series) for _, series in panels] + [1])
    with rc_context(SVG_RC):
        fig = _new_figure(11.0, 1.9 * len(panels) + 0.3)
        grid = fig.subplots(len(panels), columns, sharey="row", squeeze=False)
        fig.suptitle(f"{title}: {y_label}", fontsize=10, fontweight="bold", x=0.01,
                     ha="left")
        x = list(range(len(months)))
        ticks = [0, len(months) - 1] if len(months) > 1 else [0]
        for row, (panel_title, series) in zip(grid, panels):
            top = max([max(c) for c in series.values() if c] + [1])
            for i, ax in enumerate(row):
                if i >= len(series):
                    ax.set_axis_off()
                    continue
                name, counts = list(series.items())[i]
                colour = OTHER_COLOUR if name == "other" else PALETTE[0]
                ax.bar(x, counts, color=colour, width=0.8)
                if period in months:
                    p = months.index(period)
                    ax.axvspan(p - 0.5, p + 0.5, color="#fde9b7", zorder=0)
                    ax.text(p, counts[p], f"{counts[p]}", ha="center", va="bottom",
                            fontsize=7.5, color="#333333")
                ax.set_title(short(name, 18), fontsize=8.5)
                ax.set_xticks(ticks, [months[t] for t in ticks], fontsize=7)
                ax.set_xlim(-0.6, len(months) - 0.4)
                ax.set_ylim(0, top * 1.2)
                ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=3))
                ax.grid(axis="y", color="#eeeeee")
            row[0].set_ylabel(" ".join(panel_title.split()[:2]), fontsize=8.5)
        return figure_to_svg(fig, chart_id, title)


def score_distribution(chart_id: str, scores: Sequence[float], threshold: float,
                       capacity: int) -> str:
    title = "Score distribution this period"
    with rc_context(SVG_RC):
        fig = _new_figure(5.4, 3.2)
        ax = fig.add_subplot()
        low = min(0.0, min(scores, default=0.0))
        high = max(1.0, max(scores, default=1.0))
        ax.hist(scores, bins=40, range=(low, high), color=PALETTE[0], alpha=0.85)
        ax.set_yscale("log")
        # Plain numbers: with maths parsing off, the default 10^n labels would show as TeX.
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.axvline(threshold, color=THRESHOLD_COLOUR, linewidth=1.8, linestyle="--")
        ax.annotate(f"review threshold {threshold:.3f}\n(capacity {capacity})",
                    xy=(threshold, 1), xycoords=("data", "axes fraction"),
                    xytext=(-4, -4), textcoords="offset points", ha="right", va="top",
                    color=THRESHOLD_COLOUR, fontsize=8)
        ax.set_xlabel("risk score")
        ax.set_ylabel("records (log scale)")
        ax.set_title(title)
        ax.grid(axis="y", color="#e6e6e6")
        return figure_to_svg(fig, chart_id, title)


def ranked_bars(chart_id: str, title: str, rows: Sequence[tuple[str, float, int]],
                x_label: str) -> str:
    """Horizontal bars, largest on top; each bar annotated with its flagged count."""
    if not rows:
        return empty_chart(chart_id, title, "Nothing to show for this period.")
    with rc_context(SVG_RC):
        fig = _new_figure(5.4, 0.6 + 0.27 * len(rows))
        ax = fig.add_subplot()
        names = [short(r[0], 32) for r in rows][::-1]
        values = [r[1] for r in rows][::-1]
        flagged = [r[2] for r in rows][::-1]
        colours = [THRESHOLD_COLOUR if f else PALETTE[0] for f in flagged]
        bars = ax.barh(range(len(rows)), values, color=colours, height=0.7)
        ax.set_yticks(range(len(rows)), names)
        for bar, count in zip(bars, flagged):
            if count:
                ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                        f" {count} flagged", va="center", fontsize=7.5, color="#333333")
        ax.set_xlim(0, max(values) * 1.3 if max(values) > 0 else 1)
        ax.set_xlabel(x_label)
        ax.set_title(title)
        ax.grid(axis="x", color="#e6e6e6")
        return figure_to_svg(fig, chart_id, title)


def typology_mix(chart_id: str, rows: Sequence[tuple[str, int, int]], period: str) -> str:
    """Confirmed diversions by typology: all labelled data and the report period."""
    title = "Typology mix of confirmed diversions"
    with rc_context(SVG_RC):
        fig = _new_figure(5.4, 0.8 + 0.3 * len(rows))
        ax = fig.add_subplot()
        names = [short(r[0], 32) for r in rows][::-1]
        total = [r[1] for r in rows][::-1]
        in_period = [r[2] for r in rows][::-1]
        y = range(len(rows))
        ax.barh(y, total, color=PALETTE[4], height=0.7, label="all labelled data")
        ax.barh(y, in_period, color=PALETTE[3], height=0.4, label=f"records dated {period}")
        ax.set_yticks(list(y), names)
        ax.set_xlabel("confirmed diversions (label = 1)")
        ax.set_title(title)
        ax.legend(fontsize=7.5, frameon=False, loc="lower right")
        ax.grid(axis="x", color="#e6e6e6")
        return figure_to_svg(fig, chart_id, title)


# --------------------------------------------------------------------- network diagram

ROLE_COLOURS = {
    "consignee": "#fde0dd", "lessee": "#fde0dd", "parent": "#deebf7", "payer": "#fee6ce",
    "parent and payer": "#deebf7",
    "shared address": "#efedf5", "re-export": "#e5f5e0", "provider": "#f0f0f0",
    "exporter": "#f0f0f0",
}
_CHAR_WIDTH = 6.3  # px per character of 11px DejaVu Sans, near enough for box sizes


def network_svg(centre: tuple[str, str, str], others: Sequence[tuple[str, str, str]],
                edges: Sequence[tuple[int, int, str]], label: str) -> str:
    """A small hand-drawn graph: the case's entity in the middle, related ones around it.

    ``centre`` and each of ``others`` are (name, role, country); node 0 is the centre and
    node i is ``others[i-1]``. ``edges`` are (from, to, label). All text is escaped.
    """
    n = len(others)
    # One or two neighbours sit below and above; more go round an ellipse.
    width, height = 720, (330 if n > 2 else 200 if n else 60)
    cx, cy = width / 2, height / 2
    nodes = [centre, *others]
    positions = [(cx, cy)]
    for i in range(n):
        if n > 2:
            angle = -math.pi / 2 + 2 * math.pi * i / n
            positions.append((cx + 250 * math.cos(angle), cy + 120 * math.sin(angle)))
        else:
            positions.append((cx, cy + (70 if i == 0 else -70)))

    parts = [(f'<svg class="network" role="img" aria-label="{escape(label)}" '
             f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             'xmlns="http://www.w3.org/2000/svg" font-family="DejaVu Sans, sans-serif">')]
    for a, b, text in edges:
        (x1, y1), (x2, y2) = positions[a], positions[b]
        parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                     'stroke="#888" stroke-width="1.4"/>')
    for a, b, text in edges:
        (x1, y1), (x2, y2) = positions[a], positions[b]
        mx, my = (x1 + x2) / 2, (y1 + y2) / 2
        w = len(text) * 5.4 + 8
        parts.append(f'<rect x="{mx - w / 2:.1f}" y="{my - 8:.1f}" width="{w:.1f}" height="15" '
                     'rx="3" fill="#ffffff" fill-opacity="0.9"/>')
        parts.append(f'<text x="{mx:.1f}" y="{my + 3.5:.1f}" font-size="9.5" fill="#555" '
                     f'text-anchor="middle">{escape(text)}</text>')
    for (name, role, country), (x, y) in zip(nodes, positions):
        title = short(name, 30)
        subtitle = f"{role} · {country}" if country else role
        w = max(len(title), len(subtitle)) * _CHAR_WIDTH + 16
        fill = ROLE_COLOURS.get(role, "#f7f7f7")
        stroke = "#b2182b" if (x, y) == (cx, cy) else "#999"
        parts.append(f'<g><title>{escape(name)}</title>'
                     f'<rect x="{x - w / 2:.1f}" y="{y - 19:.1f}" width="{w:.1f}" height="38" '
                     f'rx="6" fill="{fill}" stroke="{stroke}" stroke-width="1.2"/>'
                     f'<text x="{x:.1f}" y="{y - 3:.1f}" font-size="11" text-anchor="middle" '
                     f'fill="#111">{escape(title)}</text>'
                     f'<text x="{x:.1f}" y="{y + 12:.1f}" font-size="9" text-anchor="middle" '
                     f'fill="#555">{escape(subtitle)}</text></g>')
    parts.append("</svg>")
    return "".join(parts)

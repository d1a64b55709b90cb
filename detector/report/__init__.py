"""The scheduled risk report (`detector report`): one self-contained HTML page or PDF.

Built for schedulers: the same inputs give the same bytes (no clock reads, no random
ids), nothing is fetched from anywhere (inline CSS, charts as inline SVG), text from the
data is escaped by jinja2's autoescape, and failures raise :mod:`detector.errors`
exceptions that the CLI turns into non-zero exit codes.

Definitions used throughout (they are also printed on the page):

* The period is a calendar month ``YYYY-MM``; a record belongs to it by its date
  (``export_date`` for a shipment, ``start_date`` for a lease).
* Review capacity ``k`` (``--capacity``): the period's records are ordered by risk
  (ties by record_kind, then record_id, as in the scores table); the review list is the
  first ``k`` and the review threshold is the score of the ``k``-th.
* "Above the threshold" means a score at or above it (ties at the threshold count).
* The previous period is the month before, counted at this period's threshold so the
  two figures are comparable.

The package: data.py (what the page shows, computed from the scores), cards.py (the case
cards), charts.py (inline SVG), render.py (the page from templates/, HTML or PDF) and
generate.py (`detector report` end to end).
"""

from detector.queue import parse_capacity
from detector.report.cards import CARD_FEATURES
from detector.report.data import hub_countries, metric_label
from detector.report.generate import generate_report
from detector.report.render import build_report, write_report

__all__ = ["CARD_FEATURES", "build_report", "generate_report", "hub_countries",
           "metric_label", "parse_capacity", "write_report"]

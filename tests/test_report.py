"""The scheduled risk report: content, links, self-containment, determinism, escaping,
PDF output and a real-browser rendering check."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from datetime import date
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest
from report_fixtures import MODEL_INFO, PROVENANCE, make_dataset

from detector.errors import EnvironmentFailure, UsageError
from detector.report import build_report, parse_capacity, write_report
from detector.tables import Dataset


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Dataset, pl.DataFrame, str]:
    dataset, scores = make_dataset(tmp_path_factory.mktemp("ds"))
    html = build_report(dataset, scores, model_info=MODEL_INFO, capacity="10%",
                        provenance=PROVENANCE)
    return dataset, scores, html


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.hrefs: list[str] = []
        self.srcs: list[str] = []
        self.tags: list[str] = []
        self.review_links: list[str] = []
        self._in_review = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "table" and "review" in (attrs.get("class") or ""):
            self._in_review = True
        for key in ("href", "xlink:href"):
            if key in attrs:
                self.hrefs.append(attrs[key])
                if self._in_review and tag == "a":
                    self.review_links.append(attrs[key])
        if "src" in attrs:
            self.srcs.append(attrs["src"])

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_review = False


def _parse(html: str) -> _Collector:
    collector = _Collector()
    collector.feed(html)
    return collector


def _period_expectations(dataset: Dataset, scores: pl.DataFrame, period: str, share: float):
    """Expected headline figures, computed here in plain Python from the raw frames."""
    dates = {("shipment", r["shipment_id"]): (r["export_date"], r["value_usd"])
             for r in dataset.shipments.to_dicts()}
    dates |= {("lease", r["lease_id"]): (r["start_date"], r["value_usd"])
              for r in dataset.leases.to_dicts()}
    by_month: dict[str, list[tuple[float, str, str, float]]] = {}
    for r in scores.to_dicts():
        day, value = dates[(r["record_kind"], r["record_id"])]
        by_month.setdefault(day.strftime("%Y-%m"), []).append(
            (r["risk_score"], r["record_kind"], r["record_id"], value or 0.0))
    current = sorted(by_month[period], key=lambda t: (-t[0], t[1], t[2]))
    k = max(1, math.ceil(share * len(current)))
    threshold = current[k - 1][0]
    return current, k, threshold, by_month


def test_headline_figures_match_an_independent_count(built):
    dataset, scores, html = built
    current, k, threshold, by_month = _period_expectations(dataset, scores, "2024-06", 0.10)
    previous = by_month["2024-05"]
    flagged = [t for t in current if t[0] >= threshold]
    flagged_before = [t for t in previous if t[0] >= threshold]
    assert "Chip diversion risk report — 2024-06" in html
    assert f"review threshold <strong>{threshold:.3f}</strong>" in html
    kpis = re.findall(r'<div class="value">([^<]+)</div>', html)
    from detector.report.charts import money
    assert kpis == [f"{len(current):,}", f"{len(flagged):,}",
                    money(sum(t[3] for t in flagged))]
    deltas = re.findall(r'<div class="delta [a-z]+">([^<]+)</div>', html)
    assert deltas[0].startswith(f"{len(current) - len(previous):+,}")
    assert deltas[1].startswith(f"{len(flagged) - len(flagged_before):+,}")
    assert f"({len(previous):,})" in deltas[0]
    # The review list: exactly the capacity, highest first, in this order.
    rows = re.findall(r'<td class="num">(\d+)</td>\s*<td><span class="kind">(\w+)</span><br>'
                      r'<a href="#[^"]+">([^<]+)</a>', html)
    assert [(kind, rid) for _, kind, rid in rows] == [(t[1], t[2]) for t in current[:k]]
    assert f"Review list ({k})" in html


def test_every_review_row_links_to_an_existing_case_card(built):
    _, _, html = built
    page = _parse(html)
    assert page.review_links, "the review list has no links"
    for href in page.review_links:
        assert href.startswith("#") and href[1:] in page.ids, href
    cards = re.findall(r'<article class="card" id="([^"]+)"', html)
    assert sorted(cards) == sorted(h[1:] for h in page.review_links)
    assert len(set(cards)) == len(cards)


def test_charts_are_inline_svg_and_nothing_is_fetched(built):
    _, _, html = built
    page = _parse(html)
    for label in ("Flagged records over time", "Score distribution this period",
                  "Top consignees and lessees by risk", "Top forwarders by risk",
                  "Typology mix of confirmed diversions"):
        assert re.search(r'<svg [^>]*aria-label="' + re.escape(label), html), label
    assert page.tags.count("svg") >= 5 + html.count('<article class="card"')
    assert "img" not in page.tags and "script" not in page.tags and "link" not in page.tags
    assert not page.srcs
    # in-page anchors, and the review list's CSV embedded as a data: link (nothing fetched)
    assert all(h.startswith(("#", "data:text/csv;charset=utf-8;base64,")) for h in page.hrefs), \
        [h for h in page.hrefs if not h.startswith("#")][:5]
    lowered = html.lower()
    for forbidden in ("<script src", "<link href=http", "url(http", "url(//", "@import",
                      'src="http', "src='http", 'href="http', 'href="//'):
        assert forbidden not in lowered, forbidden
    # SVG ids are unique on the page even though matplotlib reuses glyph/clip ids.
    all_ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(all_ids) == len(set(all_ids))


def test_same_inputs_give_the_same_report(built, tmp_path):
    dataset, scores, html = built
    again = build_report(dataset, scores, model_info=MODEL_INFO, capacity="10%",
                         provenance=PROVENANCE)
    assert again == html
    a = write_report(html, tmp_path / "a.html").read_bytes()
    b = write_report(again, tmp_path / "b.html").read_bytes()
    assert a == b


def test_text_from_the_data_is_escaped(built):
    _, _, html = built
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Trading Ltd" in html
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html


def test_case_card_shows_chain_payer_shared_address_and_reexports(built):
    dataset, _scores, html = built
    lion = dataset.shipments.filter(
        (pl.col("consignee_name") == "Lion Gate Compute Pte. Ltd.")
        & (pl.col("export_date") < date(2024, 6, 28))).sort("export_date")["shipment_id"]
    ids = re.findall(r'<article class="card" id="case-shipment-([^"]+)"', html)
    card_id = next(i for i in ids if i in set(lion.to_list()))
    card = html.split(f'id="case-shipment-{card_id}"')[1].split("</article>")[0]
    # Matched by normalised name + country (no party id on the filing), chain to the root.
    assert "Lion Gate Compute Pte Ltd [P-LION], matched by name and country" in card
    chain = re.findall(r"<li>([^<]+?) \((\w\w)\) \[(P-\w+)\]", card)
    assert chain[:2] == [("Lion Gate Group Pte. Ltd.", "SG", "P-MID"),
                         ("Dragon Holdings Limited", "HK", "P-ROOT")]
    assert "ultimate parent" in card
    assert "Bright Star Trading Pte. Ltd." in card  # shares the registered address
    assert "Shenzhen Endpoint Electronics" in card  # re-export counterparty
    assert re.search(r'<svg class="network"[^>]*>.*owned by.*same address.*re-exported to',
                     card, re.DOTALL)


def test_period_and_previous_figures_when_asked_for_an_earlier_month(built):
    dataset, scores, _ = built
    html = build_report(dataset, scores, model_info=None, period="2024-05", capacity="3")
    current, _, _threshold, _ = _period_expectations(dataset, scores, "2024-05", 0)
    assert "Chip diversion risk report — 2024-05" in html
    assert f"review threshold <strong>{current[2][0]:.3f}</strong>" in html
    assert "Review list (3)" in html
    assert "No trained model was used" in html  # model_info=None: the fallback is said
    assert "no records dated 2024-04 in the data" in html


def test_lease_cards(built):
    dataset, scores, _ = built
    lease_ids = scores.filter(pl.col("record_kind") == "lease")["record_id"].to_list()
    html = build_report(dataset, scores.filter(pl.col("record_kind") == "lease").vstack(
        scores.filter(pl.col("record_kind") == "shipment").with_columns(
            pl.col("risk_score") * 0.1)), model_info=MODEL_INFO, capacity="100%")
    assert all(f'id="case-lease-{i}"' in html for i in lease_ids
               if i.startswith("L202406"))
    card = html.split('id="case-lease-')[1].split("</article>")[0]
    assert "Nimbus Cloud Sdn. Bhd. [P-CLOUD]" in card and "bare_metal" in card


@pytest.mark.parametrize("text,n,expected", [("1%", 1000, 10), ("1%", 50, 1), ("1%", 150, 2),
                                              ("250", 10, 250), ("2.5%", 200, 5),
                                              (" 7 ", 100, 7), ("100%", 3, 3)])
def test_parse_capacity(text, n, expected):
    assert parse_capacity(text, n) == expected


@pytest.mark.parametrize("text", ["", "abc", "0", "-3", "0%", "101%", "1.5", "%", "1 %%"])
def test_parse_capacity_rejects_bad_text(text):
    with pytest.raises(UsageError):
        parse_capacity(text, 100)


def test_bad_period_and_extension_are_usage_errors(built, tmp_path):
    dataset, scores, html = built
    with pytest.raises(UsageError):
        build_report(dataset, scores, model_info=None, period="June 2024")
    with pytest.raises(UsageError):
        write_report(html, tmp_path / "report.docx")
    assert not list(tmp_path.iterdir())


def test_pdf_is_written(built, tmp_path):
    # No skip: CI installs Pango (.ci/run), and a missing library must fail loudly here.
    _, _, html = built
    out = write_report(html, tmp_path / "risk.pdf")
    data = out.read_bytes()
    assert data.startswith(b"%PDF") and len(data) > 20_000
    assert [p.name for p in tmp_path.iterdir()] == ["risk.pdf"]  # no temp file left
    assert write_report(html, tmp_path / "again.pdf").read_bytes() == data


def test_missing_pango_is_an_environment_failure_naming_the_package(built, tmp_path,
                                                                     monkeypatch):
    import builtins

    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name == "weasyprint":
            raise OSError("cannot load library 'libpango-1.0-0': No such file or directory")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "weasyprint", raising=False)
    monkeypatch.setattr(builtins, "__import__", failing_import)
    with pytest.raises(EnvironmentFailure, match="apt-get install libpango-1.0-0") as info:
        write_report(built[2], tmp_path / "risk.pdf")
    assert info.value.exit_code == 3
    assert not list(tmp_path.iterdir())


def test_same_report_from_a_fresh_process(built, tmp_path):
    # Hash seeds and glyph/clip ids differ between processes unless pinned; compare two.
    program = (
        "import sys, hashlib; sys.path.insert(0, sys.argv[1]);"
        "from pathlib import Path; import report_fixtures as t;"
        "from detector.report import build_report;"
        "d, s = t.make_dataset(Path(sys.argv[2]));"
        "h = build_report(d, s, model_info=t.MODEL_INFO, capacity='10%',"
        " provenance=t.PROVENANCE); print(hashlib.sha256(h.encode()).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", program, str(Path(__file__).parent),
                               str(tmp_path)], env={**os.environ, "PYTHONHASHSEED": seed},
                              check=True, capture_output=True, text=True).stdout.strip()
               for seed in ("1", "2")}
    assert len(digests) == 1


def test_previous_period_only_in_history_is_counted_not_compared(tmp_path):
    current, scores = make_dataset(tmp_path / "b", months=("2024-06",), seed=3)
    earlier, _ = make_dataset(tmp_path / "a", months=("2024-05",), per_month=17,
                              leases_per_month=2, seed=4)
    earlier.shipments = earlier.shipments.filter(~pl.col("shipment_id").str.contains("X"))
    html = build_report(current, scores, model_info=MODEL_INFO, history=[earlier])
    assert "2024-05: 19 records in the history datasets, not scored in this run" in html
    assert "vs 2024-05" not in html  # no comparison without previous-period scores


def test_renders_in_a_real_browser(built, tmp_path):
    from PIL import Image

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "headless Chromium is required (apt-get install chromium; .ci/run does)"
    _, _, html = built
    page = write_report(html, tmp_path / "report.html")
    png = tmp_path / "shot.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}",
         "--window-size=1280,2000", page.resolve().as_uri()],
        check=True, capture_output=True, timeout=120)
    image = Image.open(png).convert("RGB")
    assert image.size == (1280, 2000)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200  # text, charts, KPI boxes, not blank
    dominant = max(colours)[0] / (1280 * 2000)
    assert dominant < 0.95


def test_case_cards_name_the_party_scoring_resolved(tmp_path):
    """Issue #15: a card reads the party resolution the score used (here a fuzzy name
    match), not a second, exact-name lookup that found nothing."""
    from conftest import valid_tables, write_dataset
    from pipeline_fixtures import detector_env

    from detector.report import generate_report

    tables = valid_tables()
    fuzzy = pl.col("shipment_id") == "S0009"
    tables["shipments"] = tables["shipments"].with_columns(
        consignee_name=pl.when(fuzzy).then(pl.lit("Kirin Peak Electronic Sdn Bhd"))
        .otherwise(pl.col("consignee_name")),
        consignee_party_id=pl.when(fuzzy).then(None).otherwise(pl.col("consignee_party_id")))
    dataset = write_dataset(tmp_path / "ds", tables)
    with detector_env(tmp_path / "home"):
        out = generate_report(dataset, tmp_path / "r.html", period="2024-05",
                              capacity="100%")
    html = out.read_text()
    card = html[html.index("S0009"):]
    assert "Kirin Peak Electronics Sdn. Bhd. [P004], matched by similar name and country" \
        in card
    assert "not found in the party registry" not in card[:card.find("</section>")]


def test_review_list_csv_is_embedded_and_matches_the_list(built):
    import base64
    import io

    _, _, html = built
    encoded = re.search(r'href="data:text/csv;charset=utf-8;base64,([A-Za-z0-9+/=]+)"', html)
    assert encoded and 'download="review-list-' in html
    table = pl.read_csv(io.BytesIO(base64.b64decode(encoded.group(1))))
    cards = re.findall(r'<article class="card" id="case-(shipment|lease)-', html)
    assert table.height == len(cards) > 0
    assert table["position"].to_list() == list(range(1, table.height + 1))
    for column in ("record_id", "likely_scheme", "goods", "classification", "value_usd",
                   "reasons"):
        assert column in table.columns
    assert table["goods"].null_count() == 0
    text = table.select(pl.col(pl.String)).to_numpy().ravel()
    assert not any(str(v).startswith(("=", "+", "-", "@")) for v in text if v is not None)


def test_payer_is_drawn_only_when_it_is_another_party():
    from detector.report.cards import network_diagram, separate_payer

    # a named payer: as scoring decided (payer_is_other_party)
    assert not separate_payer("ACME PTE LTD", "SG", False, "SG")
    assert separate_payer("Golden Bridge Trading", "HK", True, "SG")
    # an unnamed one: drawn when it pays from another country
    assert separate_payer(None, "HK", None, "SG") and not separate_payer(None, "SG", None, "SG")
    assert network_diagram("Acme", "consignee", "SG", [], "nothing linked") == (None, 0)


def test_count_metrics_show_as_integers(built):
    # MLflow stores every metric as a float; a count reads "1,289", never "1289.000"
    html = built[2]
    assert ">1,289</td>" in html and ">42</td>" in html
    assert "1289.000" not in html and "42.000" not in html
    assert ">0.610</td>" in html


def test_metrics_have_readable_labels_ceilings_beside_their_metric(built):
    html = built[2]
    assert ".ceiling" not in html and "recall_at_5pct" not in html
    assert ">precision at 1%: the most the held-out slice allows</td>" in html
    assert ">recall at 5%, transshipment</td>" in html
    assert ">labelled records in the held-out slice</td>" in html
    # each ceiling right after its metric
    assert html.index(">precision at 1%</td>") < html.index(
        ">precision at 1%: the most the held-out slice allows</td>") < html.index(
        ">recall at 5%</td>")


def test_case_cards_agree_with_the_features_of_their_record(tmp_path):
    """Issue #15: a case card shows what scoring computed for its record, never a second
    reading of the data: the ownership chain as far as scoring followed it (six levels of
    the eight here, its top the ultimate parent the features name), the payer drawn when
    scoring calls it another party (here the consignee's own parent), as many parties at
    the address as scoring counted, and as re-export trail the later exports scoring
    linked (controlled chips to D:5/HK/MO), not the office chairs sent to Germany. The old
    cards walked the whole chain, took the parent for the consignee itself and listed
    every later export."""
    from detector.contract import PARTIES, SHIPMENTS
    from detector.reference import load_reference
    from features.build import build_features

    dataset, scores = make_dataset(tmp_path)
    upstream = [{"party_id": f"P-UP{i}", "name": f"Upstream Holding {i} Ltd", "country": "KY",
                 "parent_party_id": f"P-UP{i + 1}" if i < 6 else None} for i in range(1, 7)]
    dataset.parties = pl.concat([
        dataset.parties.with_columns(parent_party_id=pl.when(pl.col("party_id") == "P-ROOT")
                                     .then(pl.lit("P-UP1")).otherwise("parent_party_id")),
        pl.DataFrame(upstream, schema=PARTIES.schema)])
    lion = dataset.shipments.filter(
        (pl.col("consignee_name") == "Lion Gate Compute Pte. Ltd.")
        & (pl.col("export_date") >= date(2024, 6, 1))).sort("export_date")
    card_id, card_date = lion["shipment_id"][0], lion["export_date"][0]
    chairs = lion.head(1).with_columns(
        shipment_id=pl.lit("S202406-CHAIRS"), export_date=pl.lit(date(2024, 6, 27)),
        exporter_name=pl.lit("Lion Gate Compute Pte. Ltd."), exporter_country=pl.lit("SG"),
        consignee_name=pl.lit("Berlin Office Supplies GmbH"), consignee_country=pl.lit("DE"),
        destination_country=pl.lit("DE"), description=pl.lit("Office chairs, swivel"),
        hs_code=pl.lit("940130"), eccn=pl.lit(None, pl.String))
    dataset.shipments = pl.concat([
        dataset.shipments.with_columns(
            payer_name=pl.when(pl.col("shipment_id") == card_id)
            .then(pl.lit("Lion Gate Group Pte. Ltd.")).otherwise("payer_name"),
            payer_country=pl.when(pl.col("shipment_id") == card_id).then(pl.lit("SG"))
            .otherwise("payer_country")),
        chairs]).cast(SHIPMENTS.schema)
    scores = pl.concat([scores, scores.tail(1).with_columns(
        record_kind=pl.lit("shipment"), record_id=pl.lit("S202406-CHAIRS"),
        rank=pl.lit(scores.height + 1, pl.Int64),
        risk_score=pl.lit(0.01))])
    features = build_features(dataset.shipments, dataset.leases, dataset.parties, None,
                              load_reference())
    scored = features.filter(pl.col("record_id") == card_id).row(0, named=True)
    html = build_report(dataset, scores, model_info=None, capacity="100%",
                        scored_rows=features)
    card = html.split(f'id="case-shipment-{card_id}"')[1].split("</article>")[0]

    chain = re.findall(r"<li>([^<]+?) \((\w\w)\) \[(P-[\w-]+)\]",
                       card.split('<ol class="chain">')[1].split("</ol>")[0])
    assert scored["ownership_depth"] == 6 and len(chain) == 6
    assert chain[-1][0] == scored["ultimate_parent_name"] == "Upstream Holding 4 Ltd"
    assert "Upstream Holding 5 Ltd" in card.split("</ol>")[1]  # named as beyond, not chain
    assert scored["payer_is_other_party"] and "payer · SG" in card
    shared = re.findall(r"<li>([^<]+?) \((\w\w)\) \[(P-[\w-]+)\]",
                        card.split("<h3>Same address</h3>")[1].split("</ul>")[0])
    assert len(shared) == scored["consignee_address_shared_by"] == 1
    trail = re.findall(r"<tr><td>(\d{4}-\d\d-\d\d)</td><td>([^<]+)</td>",
                       card.split("<h3>Re-export trail</h3>")[1].split("<h3>")[0])
    assert [sid for _, sid in trail] == ["S202406-RX1"] and "CHAIRS" not in card
    assert scored["later_reexported_to_d5_hk_mo"]
    assert (date.fromisoformat(trail[0][0]) - card_date).days == scored["days_until_reexport"]
    # a page made from the scores table alone reads the same features
    assert build_report(dataset, scores, model_info=None, capacity="100%") == html


def test_a_parent_that_pays_is_drawn_once():
    from datetime import date

    from detector.report.cards import TRAIL_COLUMNS, Registry, shipment_card

    parties = {
        "P1": {"party_id": "P1", "name": "Lotus Trading Pte Ltd", "country": "SG",
               "parent_party_id": "P2", "address": "1 Harbour Rd"},
        "P2": {"party_id": "P2", "name": "Northern Star Holdings", "country": "CN",
               "parent_party_id": None, "address": "9 Long St"},
    }
    shipments = pl.DataFrame(schema={c: pl.String for c in TRAIL_COLUMNS}
                             | {"export_date": pl.Date, "exporter_key": pl.String})
    registry = Registry(parties, {}, shipments)
    row = {"shipment_id": "S1", "export_date": date(2024, 5, 1), "consignee_party_id": "P1",
           "consignee_name": "Lotus Trading Pte Ltd", "consignee_country": "SG",
           "consignee_address": "1 Harbour Rd", "destination_country": "SG",
           "exporter_name": "Chips Inc", "exporter_country": "US",
           "payer_name": "NORTHERN STAR HOLDINGS", "payer_country": "CN",
           "payment_method": "wire"}
    scored = {"consignee_party": "P1", "ownership_depth": 1, "payer_is_other_party": True}
    card = shipment_card(row, {}, registry, scored)
    svg = card["network"]
    assert svg.count("<g><title>") == 2, svg  # the consignee and its paying parent
    assert "NORTHERN STAR" not in svg and "parent and payer" in svg
    assert "owned by; paid (wire)" in svg
    # a payer that is not a parent is its own node
    other = shipment_card(row | {"payer_name": "Golden Bridge Ltd", "payer_country": "HK"},
                          {}, registry, scored)["network"]
    assert other.count("<g><title>") == 3 and "Golden Bridge" in other


def test_only_the_report_months_candidates_are_kept_while_scoring(tmp_path, monkeypatch):
    """A large batch keeps the report month's queue candidates, wide, not every month's
    (the 10M report was killed at 20 GiB); a month without records fails before scoring."""
    from conftest import valid_tables, write_dataset
    from pipeline_fixtures import detector_env

    import detector.report.generate as generate
    from detector.errors import InputError
    from detector.report.data import report_months
    from detector.tables import read_dataset

    dataset = write_dataset(tmp_path / "ds", valid_tables())
    months_in_data = report_months(read_dataset(dataset))["month"].to_list()
    assert len(months_in_data) > 1  # else the test proves nothing
    kept_months: set[str] = set()
    original = generate.queue_candidates

    def watching(frame, capacities, *args, **kwargs):
        kept = original(frame, capacities, *args, **kwargs)
        kept_months.update(kept["record_date"].dt.strftime("%Y-%m").to_list())
        return kept

    monkeypatch.setattr(generate, "queue_candidates", watching)
    with detector_env(tmp_path / "home"):
        generate.generate_report(dataset, tmp_path / "r.html", period="2024-05",
                                 capacity="100%")
        assert kept_months == {"2024-05"}
        with pytest.raises(InputError, match="2019-01"):
            generate.generate_report(dataset, tmp_path / "r2.html", period="2019-01")
    assert not (tmp_path / "r2.html").exists()


def test_registry_kept_for_the_cards_refuses_other_trails(built):
    """A report's registry keeps only its cards' consignees' exports; a trail for any
    other consignee would be silently empty, so it is refused."""
    from datetime import date

    from detector.report.cards import build_registry, consignee_key

    dataset, _, _ = built
    rows = dataset.shipments.head(2).to_dicts()
    keys = [consignee_key(r) for r in rows]
    assert keys[0] != keys[1]
    full = build_registry(dataset, [])
    kept = build_registry(dataset, [], keys[:1])
    assert kept.shipments.height < full.shipments.height
    assert kept.reexport_trail(keys[0], date(2000, 1, 1), "none") \
        == full.reexport_trail(keys[0], date(2000, 1, 1), "none")
    with pytest.raises(ValueError, match="asked for others"):
        kept.reexport_trail(keys[1], date(2000, 1, 1), "none")

"""The scheduled risk report: content, links, self-containment, determinism, escaping,
PDF output and a real-browser rendering check."""

from __future__ import annotations

import math
import os
import random
import re
import shutil
import subprocess
import sys
from datetime import date
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest

from detector.contract import LABELS, LEASES, PARTIES, SCORES, SHIPMENTS
from detector.errors import EnvironmentFailure, UsageError
from detector.report import build_report, parse_capacity, write_report
from detector.tables import Dataset, ValidationReport

SCRIPT_NAME = "<script>alert(1)</script> Trading Ltd"
HUB_CONSIGNEES = [("Lion Gate Compute Pte. Ltd.", "SG", "12 Kallang Way, Singapore"),
                  ("Harimau Data Sdn. Bhd.", "MY", "8 Jalan Ampang, Kuala Lumpur"),
                  ("Siam Server Co., Ltd.", "TH", "99 Rama IV Rd, Bangkok"),
                  ("Kowloon Logistics Limited", "HK", "3 Canton Rd, Kowloon")]
PLAIN_CONSIGNEES = [("Bavaria Rechenzentrum GmbH", "DE", "Hauptstr. 1, Munich"),
                    ("Osaka Research Institute KK", "JP", "1-1 Umeda, Osaka"),
                    ("Maple Cloud Inc.", "CA", "100 King St W, Toronto"),
                    ("Seoul AI Labs Co., Ltd.", "KR", "21 Teheran-ro, Seoul")]
FORWARDERS = ["Swift Freight HK Ltd", "Oceanic Forwarding Pte Ltd", "Global Air Cargo Inc",
              None]


def _frame(rows: list[dict], table) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=table.schema)


def make_dataset(tmp: Path, months: tuple[str, ...] = ("2024-05", "2024-06"),
                 per_month: int = 60, leases_per_month: int = 6, seed: int = 7
                 ) -> tuple[Dataset, pl.DataFrame]:
    """A small, realistic dataset and a scores table for it.

    Scores are a deterministic function of the record (hub routes and HK payers score
    high) so the report has something to rank; the tests compute every expected figure
    from these frames themselves.
    """
    rng = random.Random(seed)
    parties = [
        {"party_id": "P-ROOT", "name": "Dragon Holdings Limited", "country": "HK",
         "address": "88 Queensway, Admiralty"},
        {"party_id": "P-MID", "name": "Lion Gate Group Pte. Ltd.", "country": "SG",
         "parent_party_id": "P-ROOT", "address": "1 Raffles Pl, Singapore"},
        {"party_id": "P-LION", "name": "Lion Gate Compute Pte Ltd", "country": "SG",
         "parent_party_id": "P-MID", "address": "12 Kallang Way, Singapore",
         "incorporation_date": date(2023, 2, 1), "industry": "trading", "employees": 3,
         "aliases": ["LGC"]},
        {"party_id": "P-TWIN", "name": "Bright Star Trading Pte. Ltd.", "country": "SG",
         "address": "12 Kallang Way, Singapore"},
        {"party_id": "P-HARI", "name": "Harimau Data Sdn Bhd", "country": "MY",
         "address": "8 Jalan Ampang, Kuala Lumpur", "industry": "data_center"},
        {"party_id": "P-CLOUD", "name": "Nimbus Cloud Sdn Bhd", "country": "MY",
         "industry": "cloud_provider"},
    ]
    shipments, leases, labels = [], [], []
    for month in months:
        year, mon = map(int, month.split("-"))
        for i in range(per_month):
            hub = rng.random() < 0.45
            name, country, address = rng.choice(HUB_CONSIGNEES if hub else PLAIN_CONSIGNEES)
            destination = country if rng.random() < 0.8 else rng.choice(["CN", "VN", "AE"])
            sid = f"S{month.replace('-', '')}-{i:03d}"
            payer_country = rng.choice(["HK", "CN"]) if hub and rng.random() < 0.4 else country
            shipments.append({
                "shipment_id": sid, "export_date": date(year, mon, 1 + i % 28),
                "exporter_name": "Silicon Valley Systems Inc", "exporter_country": "US",
                "consignee_name": name, "consignee_country": country,
                "consignee_address": address, "consignee_type": "reseller" if hub else
                "direct_consumer", "destination_country": destination,
                "transit_countries": ["HK"] if hub and rng.random() < 0.3 else None,
                "forwarder_name": rng.choice(FORWARDERS), "transport_mode": "air",
                "hs_code": "847330", "eccn": "3A090.a", "license_type": "nlr",
                "description": "NVIDIA H100 80GB PCIe accelerator boards",
                "quantity": rng.randint(1, 200), "value_usd": float(rng.randint(20, 4000) * 1000),
                "payer_name": "Far East Payments Ltd" if payer_country != country else name,
                "payer_country": payer_country,
                "payment_method": "third_party" if payer_country != country else "wire",
            })
        for i in range(leases_per_month):
            leases.append({
                "lease_id": f"L{month.replace('-', '')}-{i:02d}", "provider_name":
                "Nimbus Cloud Sdn. Bhd.", "datacenter_country": rng.choice(["MY", "SG", "US"]),
                "lessee_name": rng.choice(["Harimau Data Sdn Bhd", "Beijing Zhiyuan Tech Co"]),
                "lessee_country": rng.choice(["MY", "CN"]), "gpu_model": "H100 SXM5 80GB",
                "gpu_count": rng.choice([8, 64, 512]), "start_date": date(year, mon, 3 + i),
                "term_months": 12, "value_usd": float(rng.randint(100, 9000) * 1000),
                "payer_country": rng.choice(["MY", "HK"]), "access_type": "bare_metal",
            })
    period_tag = months[-1].replace("-", "")
    # The escaping probe: a hostile consignee name that scores at the top.
    shipments.append({**shipments[-1], "shipment_id": f"S{period_tag}-XSS",
                      "consignee_name": SCRIPT_NAME, "consignee_address": "<b>bold</b> St"})
    # A re-export by the SG consignee from Singapore, after its first import.
    shipments.append({**shipments[-2], "shipment_id": f"S{period_tag}-RX1",
                      "export_date": date(int(months[-1][:4]), int(months[-1][5:]), 28),
                      "exporter_name": "LION GATE COMPUTE PTE. LTD.", "exporter_country": "SG",
                      "consignee_name": "Shenzhen Endpoint Electronics", "consignee_country":
                      "CN", "destination_country": "CN", "consignee_address": None})
    for i, row in enumerate(shipments[: len(shipments) // 3]):
        if row["consignee_country"] in ("SG", "MY", "HK"):
            labels.append({"record_kind": "shipment", "record_id": row["shipment_id"],
                           "label": i % 2, "typology": rng.choice(
                               ["front company", "transshipment via HK", None])})
    for row in shipments[-40:]:  # some labels in the report period too
        if row["payer_country"] in ("HK", "CN"):
            labels.append({"record_kind": "shipment", "record_id": row["shipment_id"],
                           "label": 1, "typology": "third-country payer"})

    dataset = Dataset(directory=tmp, shipments=_frame(shipments, SHIPMENTS),
                      parties=_frame(parties, PARTIES), leases=_frame(leases, LEASES),
                      labels=_frame(labels, LABELS), screening_list=None,
                      report=ValidationReport())

    def score(row: dict, kind: str) -> float:
        base = 0.05 + 0.002 * (sum(map(ord, row[f"{kind}_id"])) % 50)
        if kind == "shipment":
            base += 0.3 * (row["consignee_country"] in ("SG", "MY", "HK", "TH"))
            base += 0.3 * (row["payer_country"] != row["consignee_country"])
            base += 0.25 * (row["destination_country"] in ("CN", "VN", "AE"))
            base += 0.9 * (row["consignee_name"] == SCRIPT_NAME)
        else:
            base += 0.4 * (row["lessee_country"] == "CN") + 0.1 * (row["gpu_count"] >= 512)
        return round(min(base, 0.999), 6)

    rows = [("shipment", r["shipment_id"], score(r, "shipment"),
             "payer in a third country; consignee in a hub" if score(r, "shipment") > 0.5 else "")
            for r in shipments]
    rows += [("lease", r["lease_id"], score(r, "lease"),
              "lessee in a D:5 country" if r["lessee_country"] == "CN" else "") for r in leases]
    scores = pl.DataFrame(rows, schema=["record_kind", "record_id", "risk_score", "reasons"],
                          orient="row")
    scores = (scores.sort(["risk_score", "record_kind", "record_id"],
                          descending=[True, False, False])
              .with_row_index("rank", offset=1)
              .with_columns(pl.col("rank").cast(pl.Int64), pl.lit("chip-diversion/3").alias("model"))
              # a v1-shaped table (no likely_scheme or context): the report accepts it
              .select([c.name for c in SCORES.columns if c.required]))
    return dataset, scores


MODEL_INFO = {"name": "chip-diversion", "version": "3", "run_id": "0123abcd",
              "metrics": {"pr_auc": 0.61, "precision_at_1pct": 0.8, "recall_at_5pct": 0.55,
                          "brier": 0.031, "records": 1289.0, "positives": 42.0,
                          "recall_at_5pct.ceiling": 1.0, "precision_at_1pct.ceiling": 0.326,
                          "recall_at_5pct_transshipment": 0.5},
              "trained_on": "2023-01 to 2024-04"}
PROVENANCE = {"data_fingerprint": "sha256:feedbeef", "screening_list": "csl 2024-06-01",
              "reference_version": "facts v1"}


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
    from detector.charts import money
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
        "from pathlib import Path; import test_report as t;"
        "d, s = t.make_dataset(Path(sys.argv[2]));"
        "h = t.build_report(d, s, model_info=t.MODEL_INFO, capacity='10%',"
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
    from detector.report import _network, _separate_payer

    assert not _separate_payer("ACME PTE LTD", "SG", ["Acme Pte. Ltd."], "SG")  # itself
    assert not _separate_payer("Acme Holdings", "CN", ["Acme Pte. Ltd.", "Acme Holdings"], "SG")
    assert _separate_payer("Golden Bridge Trading", "HK", ["Acme Pte. Ltd."], "SG")
    assert _separate_payer(None, "HK", [], "SG") and not _separate_payer(None, "SG", [], "SG")
    assert _network("Acme", "consignee", "SG", [], "nothing linked") == (None, 0)


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

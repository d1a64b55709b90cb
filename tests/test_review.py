"""The review page (issue #14): queue, filters, case pages, decisions, security, and a
browser test driving Debian's Chromium headless through Playwright.

One review session per test session: the pipeline tests' world with a hostile consignee
name planted on its top-ranked shipment, scored with their trained champion, decisions
going to a store of its own.
"""

from __future__ import annotations

import csv
import re
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
from pipeline_fixtures import cli, copy_world, detector_env
from starlette.testclient import TestClient

from detector.decisions import DecisionStore
from detector.review.app import create_app
from detector.review.session import open_review

HOSTILE = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">Trading & Co'
CHROMIUM = Path("/usr/bin/chromium")


@dataclass
class Review:
    session: object
    world: Path
    store: DecisionStore
    hostile_id: str
    home: Path


@pytest.fixture(scope="session")
def review(world, trained, scores_csv, tmp_path_factory) -> Review:
    root = tmp_path_factory.mktemp("review")
    data = copy_world(world, root / "world")
    top = pl.read_csv(scores_csv[0]).filter(pl.col("record_kind") == "shipment")["record_id"][0]
    shipments = pl.read_csv(data / "shipments.csv", infer_schema=False)
    shipments.with_columns(
        consignee_name=pl.when(pl.col("shipment_id") == top).then(pl.lit(HOSTILE))
        .otherwise(pl.col("consignee_name"))).write_csv(data / "shipments.csv")
    store = DecisionStore(root / "decisions.sqlite")
    with detector_env(trained.home):
        session = open_review(data, analyst="Ana Analyst", store=store, capacity="1%",
                              explore=0.1)
        session.scored()  # explanations ready before the timed pages
        session.registry()
    return Review(session, data, store, top, trained.home)


@pytest.fixture
def client(review) -> TestClient:
    return TestClient(create_app(review.session), base_url="http://127.0.0.1")


def _token(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def _rows(html: str) -> list[str]:
    return re.findall(r'data-record="([^"]+)"', html)


# ------------------------------------------------------------------ queue


def test_queue_shows_the_queue_with_its_reasons(client, review):
    response = client.get("/")
    assert response.status_code == 200
    queue = review.session.table.filter(pl.col("queue_reason").is_not_null())
    rows = _rows(response.text)
    assert len(rows) == min(50, queue.height)
    expected = [f"{k}:{i}" for k, i in queue.select("record_kind", "record_id").head(50).rows()]
    assert rows == expected  # rank order
    whole = client.get("/", params={"per_page": "500"}).text  # explore rows rank lower
    assert len(_rows(whole)) == queue.height
    assert whole.count('class="tag explore"') == (queue["queue_reason"] == "explore").sum() > 0
    assert whole.count('class="tag risk"') == (queue["queue_reason"] == "risk").sum()
    # goods: the recognised chip and whether it is controlled
    assert whole.count('class="tag controlled"') == queue["chip_controlled"].sum() > 0
    assert "Content-Security-Policy" in response.headers
    assert "<script" not in response.text.replace(HOSTILE, "")  # the page carries no script


def test_queue_filters_sort_and_pages(client, review):
    table = review.session.table
    destination = table.filter(pl.col("queue_reason").is_not_null())["destination"][0]
    page = client.get("/", params={"destination": destination})
    wanted = table.filter(pl.col("queue_reason").is_not_null()
                          & (pl.col("destination") == destination))
    assert _rows(page.text) == [f"{k}:{i}" for k, i in
                                wanted.select("record_kind", "record_id").head(50).rows()]
    leases = client.get("/", params={"scope": "all", "kind": "lease"})
    assert _rows(leases.text) and all(r.startswith("lease:") for r in _rows(leases.text))
    second = client.get("/", params={"scope": "all", "page": "2"})
    assert _rows(second.text) == [f"{k}:{i}" for k, i in
                                  table.select("record_kind", "record_id").slice(50, 50).rows()]
    by_value = client.get("/", params={"scope": "all", "sort": "value", "per_page": "20"})
    top_value = table.sort("value_usd", descending=True, nulls_last=True).head(20)
    assert _rows(by_value.text) == [f"{k}:{i}" for k, i in
                                    top_value.select("record_kind", "record_id").rows()]
    high = client.get("/", params={"scope": "all", "band": "high", "per_page": "500"})
    assert len(_rows(high.text)) == min(500, table.filter(pl.col("risk_score") >= 0.9).height)
    bad = client.get("/", params={"sort": "nonsense"})
    assert bad.status_code == 400 and "sort: expected one of" in bad.text


def _expected_page(session, query):
    """The queue page by its definition: the whole table with each record's latest
    decision, filtered, sorted (ties by rank) and sliced."""
    from detector.review.session import BANDS, SORTS

    table = session.table.join(session.statuses(), on=["record_kind", "record_id"],
                               how="left", maintain_order="left")
    if query.scope == "queue":
        table = table.filter(pl.col("queue_reason").is_not_null())
    counts = dict(table.group_by(pl.col("status").fill_null("undecided")).len().iter_rows())
    keep = pl.lit(True)
    if query.kind:
        keep &= pl.col("record_kind") == query.kind
    if query.status == "undecided":
        keep &= pl.col("status").is_null()
    elif query.status:
        keep &= pl.col("status") == query.status
    if query.band:
        low, high = BANDS[query.band]
        keep &= (pl.col("risk_score") >= (low if low is not None else -1.0)) \
            & (pl.col("risk_score") < (high if high is not None else 2.0))
    if query.scheme:
        keep &= (pl.col("likely_scheme") == query.scheme).fill_null(False) \
            | (pl.col("decided_scheme") == query.scheme).fill_null(False)
    table = table.filter(keep)
    column, descending = SORTS[query.sort]
    table = table.sort([column, "rank"], descending=[descending, False], nulls_last=True)
    return (table.slice((query.page - 1) * query.per_page, query.per_page)
            .select("record_kind", "record_id", "status", "decided_scheme").rows(),
            table.height, counts)


def test_queue_page_equals_filtering_and_sorting_the_whole_table(review, tmp_path):
    """The page is computed on a narrow index with the decisions placed by position; it
    must equal the definition over the whole table, for every filter and sort."""
    import itertools

    from detector.decisions import make_decision
    from detector.review.session import SORTS, QueueQuery

    session = review.session
    table = session.table
    store = DecisionStore(tmp_path / "decisions.sqlite")
    picks = table.select("record_kind", "record_id").gather([0, 1, 2, 5, 40, 300, 301])
    verdicts = ["confirm", "clear", "needs_info", "confirm", "clear", "confirm", "clear"]
    store.add([make_decision(k, i, v, "Ana", typology="transshipment" if v == "confirm"
                             else None) for (k, i), v in zip(picks.rows(), verdicts)])
    store.add([make_decision("shipment", "NOT-IN-THIS-BATCH", "confirm", "Ana",
                             typology="splitting")])
    kept, session.store = session.store, store
    try:
        scheme = table["likely_scheme"].drop_nulls().head(1).to_list() or [None]
        for scope, kind, status, band, sort in itertools.product(
                ("queue", "all"), (None, "lease"), (None, "undecided", "confirm", "clear"),
                (None, "elevated"), list(SORTS)):
            for page, extra in ((1, {}), (2, {"scheme": scheme[0]})):
                query = QueueQuery(scope=scope, kind=kind, status=status, band=band,
                                   sort=sort, page=page, per_page=20, **extra)
                got = session.queue_page(query)
                rows, total, counts = _expected_page(session, query)
                assert got.total == total, query
                assert got.counts == counts, query
                if got.page == page:
                    assert [(r["record_kind"], r["record_id"], r["status"],
                             r["decided_scheme"]) for r in got.rows] == rows, query
    finally:
        session.store = kept


# ------------------------------------------------------------------ case and decisions


def test_case_page_shows_explanation_parties_and_history(client, review):
    row = review.session.table.row(1, named=True)
    page = client.get("/case", params={"kind": row["record_kind"], "id": row["record_id"]})
    assert page.status_code == 200
    text = page.text
    assert row["record_id"] in text and "The features that matter" in text
    assert "Ownership chain" in text and "Linked entities" in text
    assert "+0.000" not in text  # no wall of zero contributions
    assert client.get("/case", params={"kind": "shipment", "id": "nope"}).status_code == 404
    assert client.get("/case", params={"kind": "../../etc", "id": "x"}).status_code == 404


def test_case_page_features_never_show_a_null_or_another_kinds_feature(review):
    """Issue 12: a null or not-applicable feature is never a driver; the case page's
    list once kept any feature with a contribution (`days_since_first_shipment` null
    at +0.272 on the demo's top record)."""
    table = review.session.table
    checked = nulls_hidden = 0
    for kind in ("shipment", "lease"):
        for record_id in table.filter(pl.col("record_kind") == kind)["record_id"][:15]:
            explained = review.session.explanation(kind, record_id)
            shown = explained["features_shown"]
            assert shown
            for feature in shown:
                assert feature["value"] is not None, (record_id, feature["feature"])
                assert feature["applies"], (record_id, feature["feature"])
            nulls_hidden += sum(1 for f in explained["features"]
                                if f["value"] is None and f["contribution"]
                                and abs(f["contribution"]) >= 0.005)
            checked += 1
    assert checked == 30
    assert nulls_hidden > 0  # the records do have null features with contributions


def test_decision_needs_the_csrf_token_and_valid_values(client, review):
    row = review.session.table.row(2, named=True)
    key = {"kind": row["record_kind"], "id": row["record_id"]}
    before = review.store.history().height
    page = client.get("/case", params=key)
    token = _token(page.text)
    assert client.post("/decide", data={**key, "decision": "clear"}).status_code == 403
    assert client.post("/decide", data={**key, "decision": "clear", "csrf_token": "0" * 64}
                       ).status_code == 403
    other_origin = client.post("/decide", data={**key, "decision": "clear", "csrf_token": token},
                               headers={"Origin": "http://evil.example"})
    assert other_origin.status_code == 403
    bad = client.post("/decide", data={**key, "decision": "burn", "csrf_token": token})
    assert bad.status_code == 400 and "decision: expected" in bad.text
    no_scheme = client.post("/decide", data={**key, "decision": "confirm", "csrf_token": token,
                                             "analyst": "x"})
    assert no_scheme.status_code == 400 and "needs a scheme" in no_scheme.text
    unknown = client.post("/decide", data={"kind": "shipment", "id": "nope", "csrf_token": token,
                                           "decision": "clear"})
    assert unknown.status_code == 404
    assert review.store.history().height == before  # nothing stored by any of them

    ok = client.post("/decide", data={**key, "decision": "needs_info", "csrf_token": token,
                                      "note": "ask the exporter"}, follow_redirects=False)
    assert ok.status_code == 303
    stored = review.store.history(row["record_kind"], row["record_id"]).row(-1, named=True)
    assert stored["decision"] == "needs_info" and stored["analyst"] == "Ana Analyst"
    assert stored["model"] == row["model"] and stored["risk_score"] == row["risk_score"]
    assert stored["source"] == "review" and stored["note"] == "ask the exporter"


def test_hostile_names_are_escaped(client, review):
    page = client.get("/case", params={"kind": "shipment", "id": review.hostile_id})
    assert page.status_code == 200
    assert HOSTILE not in page.text
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in page.text
    queue = client.get("/", params={"scope": "all", "party": HOSTILE})
    assert _rows(queue.text) == [f"shipment:{review.hostile_id}"]
    assert "<img src=x" not in queue.text


def test_requests_outside_the_data_are_refused(client, review):
    for path in ("/../../etc/passwd", "/static/../../etc/passwd", "/etc/passwd",
                 "/case/../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "root:" not in response.text
    foreign = TestClient(create_app(review.session), base_url="http://attacker.example")
    assert foreign.get("/").status_code == 400  # Host check: no DNS rebinding
    assert client.put("/decide").status_code in (404, 405)


def test_review_with_a_scores_file_shows_its_queue(review, scores_csv, tmp_path):
    scores = pl.read_csv(scores_csv[0])
    with detector_env(review.home):
        session = open_review(review.world, scores_path=scores_csv[0],
                              store=DecisionStore(tmp_path / "d.sqlite"))
    assert session.model.label == scores["model"][0]
    page = TestClient(create_app(session), base_url="http://127.0.0.1").get("/")
    queue = scores.filter(pl.col("queue_reason").is_not_null())
    assert _rows(page.text) == [f"{k}:{i}" for k, i in
                                queue.select("record_kind", "record_id").head(50).rows()]


def test_cli_review_binds_localhost_and_warns_for_other_hosts(monkeypatch, tmp_path, world):
    import detector.review

    calls = []
    monkeypatch.setattr(detector.review, "serve", lambda *a, **kw: calls.append(kw))
    result = cli(["review", world, "--analyst", "ana"], tmp_path)
    assert result.exit_code == 0 and calls[-1]["host"] == "127.0.0.1"
    assert "warning" not in result.output
    result = cli(["review", world, "--host", "0.0.0.0"], tmp_path)
    assert result.exit_code == 0 and calls[-1]["host"] == "0.0.0.0"
    assert "warning: --host 0.0.0.0" in result.output


# ------------------------------------------------------------------ browser


@pytest.fixture
def server(review):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(review.session), host="127.0.0.1", port=port,
                            log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline, "review server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: run `bash .ci/system-deps`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield chromium
        chromium.close()


def test_browser_review_flow(server, browser, review, tmp_path):
    """Open the queue, filter by destination, open a case, confirm it with a scheme and a
    note, see its status change, export labels and find the row; a hostile name is text."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    requests_elsewhere = []
    page.on("request", lambda r: None if r.url.startswith(server)
            else requests_elsewhere.append(r.url))
    page.goto(server + "/")
    rows = page.locator("table.queue tbody tr[data-record]")
    assert rows.count() > 0
    page.screenshot(path=str(tmp_path / "queue.png"), full_page=True)

    destination = rows.first.locator("td").nth(4).inner_text().strip()
    page.select_option("select[name=destination]", destination)
    page.click("form.filters button[type=submit]")
    page.wait_for_url(re.compile(r"destination=" + destination))
    cells = page.locator("table.queue tbody tr[data-record] td:nth-child(5)").all_inner_texts()
    assert cells and {c.strip() for c in cells} == {destination}

    undecided = page.locator("table.queue tbody tr[data-record]", has_text="undecided").first
    record = undecided.get_attribute("data-record")
    kind, record_id = record.split(":", 1)
    undecided.locator("td").nth(1).locator("a").click()
    page.wait_for_url(re.compile(r"/case\?"))
    assert record_id in page.locator("h1").inner_text()
    assert page.locator("#status").inner_text().strip() == "undecided"
    page.screenshot(path=str(tmp_path / "case.png"), full_page=True)

    page.check("input[name=decision][value=confirm]")
    page.select_option("select[name=scheme]", "transshipment")
    page.fill("textarea[name=note]", "re-exported to HK 3 weeks later; payer in HK")
    page.click("form.decide button[type=submit]")
    page.wait_for_selector(".flash")
    assert page.locator("#status").inner_text().strip() == "confirmed diversion"
    assert "re-exported to HK 3 weeks later" in page.locator("table.decisions").inner_text()

    page.click("text=← queue")
    row = page.locator(f'tr[data-record="{record}"]')
    assert "confirmed diversion" in row.inner_text() and "transshipment" in row.inner_text()

    with page.expect_download() as download:
        page.click("text=export labels (CSV)")
    path = tmp_path / "labels.csv"
    download.value.save_as(path)
    with open(path, newline="") as fh:
        exported = [r for r in csv.DictReader(fh) if r["record_id"] == record_id]
    assert len(exported) == 1
    assert (exported[0]["record_kind"], exported[0]["label"], exported[0]["typology"],
            exported[0]["analyst"]) == (kind, "1", "transshipment", "Ana Analyst")

    page.goto(server + "/case?" + f"kind=shipment&id={review.hostile_id}")
    header = page.locator("h1 + p.muted, p.muted").first.inner_text()
    assert "<script>window.__xss=1</script>" in page.content().replace("&lt;", "<") \
        .replace("&gt;", ">")
    assert HOSTILE.split("<img")[0] in header or "<script>" in header
    assert page.evaluate("window.__xss") is None
    assert page.locator("script").count() == 0 and page.locator("main img").count() == 0
    assert requests_elsewhere == []  # nothing loaded from the network
    page.close()
    shots = Path(__file__).resolve().parent.parent / "out"
    if shots.is_dir():  # keep the screenshots to look at (`mkdir out` first)
        for name in ("queue.png", "case.png"):
            shutil.copy(tmp_path / name, shots / name)

"""The inspection budget (issue #14): the queue is the top records by risk plus a share
chosen for learning, and each row says why it is there."""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl
import pytest

from detector.errors import UsageError
from detector.queue import (
    adaptive_share,
    choose_queue,
    explore_order,
    explore_slots,
    mark_queue,
    parse_capacity,
)


def test_without_exploration_the_queue_is_the_top_by_risk():
    risk = np.linspace(0.99, 0.01, 50)
    reasons = choose_queue(risk, None, 10, 0.0, supervised=True)
    assert list(reasons[:10]) == ["risk"] * 10
    assert all(r is None for r in reasons[10:])


def test_explore_slots_alternate_least_sure_and_most_unusual():
    risk = np.array([0.99, 0.98, 0.97, 0.96, 0.95, 0.9, 0.7, 0.52, 0.2, 0.1, 0.05, 0.01])
    unusual = np.array([0.1, 0.1, 0.1, 0.1, 0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 0.99, 0.5])
    reasons = choose_queue(risk, unusual, 6, 0.34, supervised=True)
    assert explore_slots(6, 0.34) == 2
    assert list(reasons[:4]) == ["risk"] * 4
    chosen = set(np.flatnonzero(reasons == "explore"))
    # least sure: 0.52 (index 7); most unusual among the rest: 0.99 (index 10)
    assert chosen == {7, 10}
    assert (reasons != None).sum() == 6


def test_least_sure_prefers_doubt_where_the_model_learned_little():
    """A probability near 0.5 in a cell the trees learned from many labels is a known coin
    toss; the same doubt, or a little less, in a cell they barely saw is what a decision
    teaches (p(1 - p) over sqrt(familiarity))."""
    risk = np.array([0.99, 0.5, 0.8, 0.1])
    # row 1: a shipment cell of 99 labels and 49 confirmed shipments; row 2: a lease cell
    # of 1 label, no confirmed lease; row 3: like row 2 but sure (0.1)
    familiar = np.array([5000.0, 5000.0, 2.0, 2.0])
    reasons = choose_queue(risk, None, 2, 0.5, supervised=True, familiarity=familiar)
    assert list(reasons) == ["risk", None, "explore", None]
    # without familiarity: closest to 0.5
    reasons = choose_queue(risk, None, 2, 0.5, supervised=True)
    assert list(reasons) == ["risk", "explore", None, None]


def test_fallback_explores_by_unusualness_only():
    risk = np.array([0.9, 0.8, 0.5, 0.4, 0.3])
    unusual = np.array([0.1, 0.2, 0.3, 0.9, 0.4])
    reasons = choose_queue(risk, unusual, 2, 0.5, supervised=False)
    assert list(reasons) == ["risk", None, None, "explore", None]


def test_the_queue_never_takes_a_record_twice_and_fills_up():
    rng = np.random.default_rng(0)
    risk = np.sort(rng.random(200))[::-1]
    unusual = rng.random(200)
    reasons = choose_queue(risk, unusual, 40, 1.0, supervised=True)
    assert (reasons == "explore").sum() == 40 and (reasons == "risk").sum() == 0
    again = choose_queue(risk, unusual, 40, 1.0, supervised=True)
    assert list(reasons) == list(again)  # deterministic


@pytest.mark.parametrize("share", [-0.1, 1.5, float("nan")])
def test_bad_explore_share_is_a_usage_error(share):
    with pytest.raises(UsageError, match="--explore"):
        choose_queue(np.array([0.5]), None, 1, share, supervised=True)


def test_adaptive_share_doubles_after_a_find_and_halves_after_none():
    bounds = {"base": 0.1, "low": 0.04, "high": 0.2}
    assert adaptive_share(0.1, 3, 1, **bounds) == pytest.approx(0.2)
    assert adaptive_share(0.2, 5, 2, **bounds) == pytest.approx(0.2)  # capped
    assert adaptive_share(0.1, 3, 0, **bounds) == pytest.approx(0.05)
    assert adaptive_share(0.05, 1, 0, **bounds) == pytest.approx(0.04)  # floored
    assert adaptive_share(0.04, 1, 1, **bounds) == pytest.approx(0.08)
    assert adaptive_share(0.04, 0, 0, **bounds) == pytest.approx(0.1)  # nothing explored
    with pytest.raises(UsageError, match="low <= base <= high"):
        adaptive_share(0.1, 3, 1, base=0.3, low=0.04, high=0.2)


def test_capacity_parsing():
    assert parse_capacity("250", 10) == 250
    assert parse_capacity("1%", 1001) == 11
    with pytest.raises(UsageError):
        parse_capacity("0", 10)


def test_score_writes_the_queue(scores_csv):
    """`detector score` (default capacity 1%, explore 0.1) marks the queue in the file."""
    path, _ = scores_csv
    scores = pl.read_csv(path)
    k = parse_capacity("1%", scores.height)
    marked = scores.filter(pl.col("queue_reason").is_not_null())
    assert marked.height == k
    assert (marked["queue_reason"] == "explore").sum() == explore_slots(k, 0.1) > 0
    risk_ranks = marked.filter(pl.col("queue_reason") == "risk")["rank"].sort().to_list()
    assert risk_ranks == list(range(1, k - explore_slots(k, 0.1) + 1))
    assert set(scores["queue_reason"].drop_nulls().unique()) == {"risk", "explore"}


def test_mark_queue_on_a_frame():
    frame = pl.DataFrame({"risk_score": [0.9, 0.6, 0.5, 0.1],
                          "unsupervised_score": [0.1, 0.2, 0.3, 0.95]})
    out = mark_queue(frame, "3", 0.34, supervised=True)
    # one slot: the new-to-the-model list goes first (most unusual)
    assert out["queue_reason"].to_list() == ["risk", "risk", None, "explore"]
    out = mark_queue(frame, "4", 0.5, supervised=True)
    assert out["queue_reason"].to_list() == ["risk", "risk", "explore", "explore"]


def test_mark_queue_all_explore_with_the_top_row_left_out():
    """--explore 1: every slot explores; the top-ranked row, not chosen, stays null
    (the column was once built from Python objects and failed when the first was None)."""
    frame = pl.DataFrame({"risk_score": [0.9, 0.6, 0.5, 0.1],
                          "unsupervised_score": [0.1, 0.2, 0.3, 0.95]})
    out = mark_queue(frame, "2", 1.0, supervised=False)
    assert out["queue_reason"].dtype == pl.String
    assert out["queue_reason"].to_list() == [None, None, "explore", "explore"]


def _cluster_frame() -> pl.DataFrame:
    """Ten records by risk: rows 2-6 are unusual shipments to SG (one cluster), row 7 an
    unusual lease to CN, row 8 a less unusual shipment to DE."""
    return pl.DataFrame({
        "record_kind": ["shipment"] * 7 + ["lease", "shipment", "shipment"],
        "destination": ["SG", "SG", "SG", "SG", "SG", "SG", "SG", "CN", "DE", "DE"],
        "risk_score": [0.99, 0.98, 0.3, 0.29, 0.28, 0.27, 0.26, 0.1, 0.05, 0.01],
        "unsupervised_score": [0.1, 0.1, 0.99, 0.98, 0.97, 0.96, 0.95, 0.9, 0.8, 0.1]})


def test_explore_slots_spread_over_cells_not_one_cluster():
    frame = _cluster_frame()
    out = mark_queue(frame, "5", 0.6, supervised=False)
    explored = out.filter(pl.col("queue_reason") == "explore")
    # three slots: the most unusual of each cell, not the three most unusual SG shipments
    assert explored["record_kind"].to_list() == ["shipment", "lease", "shipment"]
    assert explored["destination"].to_list() == ["SG", "CN", "DE"]
    # without cells (no kind/destination columns), the three most unusual: one cluster
    plain = mark_queue(frame.drop("destination"), "5", 0.6, supervised=False)
    assert plain.filter(pl.col("queue_reason") == "explore")["unsupervised_score"].to_list() \
        == [0.99, 0.98, 0.97]


def test_explore_prefers_cells_the_model_has_few_labels_of():
    frame = _cluster_frame()
    # the model learned from 300 SG shipments and 40 DE shipments, no lease to CN
    familiar = {"shipment|SG": 300, "shipment|DE": 40}
    out = mark_queue(frame, "3", 0.34, supervised=False, familiar=familiar)
    explored = out.filter(pl.col("queue_reason") == "explore")
    assert explored.select("record_kind", "destination").row(0) == ("lease", "CN")
    # and without the familiarity, the most unusual (an SG shipment)
    out = mark_queue(frame, "3", 0.34, supervised=False)
    assert out.filter(pl.col("queue_reason") == "explore")["destination"].to_list() == ["SG"]


def test_labelled_cells_count_the_kind_and_destination():
    from detector.queue import labelled_cells

    frame = pl.DataFrame({"record_kind": ["shipment", "shipment", "lease"],
                          "destination_country": ["SG", "SG", None],
                          "lessee_country": [None, None, "CN"], "label": [1, 0, 0]})
    # labelled records per cell, confirmed diversions per kind
    assert labelled_cells(frame) == {"lease|CN": 1, "shipment|SG": 2, "lease": 0,
                                     "shipment": 1}


def test_a_trained_model_stores_what_it_learned_from_per_cell(trained):
    """The familiarity the queue reads: labelled records per kind|destination and
    confirmed diversions per kind, over the slice the model's trees were fitted on (the
    calibration slice, the newest labels, only scales the probability: records like
    those are still new to the trees, and exploring them still teaches)."""
    from pipeline_fixtures import detector_env

    from detector import tracking
    from detector.queue import LABELLED_CELLS, familiar_cells
    from detector.scoring import load_model

    with detector_env(trained.home):
        model = load_model(tracking.DEFAULT_MODEL_URI)
    cells = familiar_cells(model)
    assert cells == model.bundle.provenance[LABELLED_CELLS]
    slices = model.bundle.provenance["slices"]
    learned = slices["fit"]["records"]
    assert sum(n for c, n in cells.items() if "|" in c) == learned
    confirmed = slices["fit"]["positives"]
    assert cells["shipment"] + cells.get("lease", 0) == confirmed
    assert slices["calibrate"]["records"] > 0
    assert any(c.startswith("lease|") for c in cells)


def test_value_order_weighs_the_chance_of_a_find_against_what_it_teaches():
    """order="value": one list by risk x unusualness / familiarity ** 0.25, spread over
    cells; the lists' order (the default) takes the most unusual unfamiliar record."""
    frame = pl.DataFrame({  # in rank order
        "record_kind": ["shipment", "shipment", "lease", "lease", "shipment", "lease"],
        "record_id": ["S1", "S2", "L1", "L2", "S3", "L3"],
        "risk_score": [0.99, 0.95, 0.60, 0.50, 0.40, 0.05],
        "unsupervised_score": [0.5, 0.5, 0.8, 0.9, 0.5, 0.99],
        "destination": ["HK", "HK", "CN", "CN", "HK", "DE"],
    })
    # shipments: familiarity (1 + 80) x (1 + 400), fourth root 13.4; leases: 1.
    # value: L1 0.48, L2 0.45, L3 0.0495, S3 0.0149; spread: L1 (CN), L3 (DE), S3, L2
    familiar = {"shipment": 80, "shipment|HK": 400}

    def explored(**kw):
        marked = mark_queue(frame, 4, 0.5, supervised=kw.pop("supervised", True), **kw)
        assert marked.filter(pl.col("queue_reason") == "risk")["record_id"].to_list() \
            == ["S1", "S2"]
        return marked.filter(pl.col("queue_reason") == "explore")["record_id"].to_list()

    assert explored(familiar=familiar, order="value") == ["L1", "L3"]
    # the lists: the most unusual unfamiliar (L3), then the least sure (L2: p = 0.5)
    assert explored(familiar=familiar) == ["L2", "L3"]
    assert mark_queue(frame, 3, 0.34, supervised=True, familiar=familiar,
                      order="value")["queue_reason"].to_list()[2] == "explore"  # L1
    assert mark_queue(frame, 3, 0.34, supervised=True, familiar=familiar
                      )["queue_reason"].to_list()[5] == "explore"  # L3
    with pytest.raises(UsageError, match="explore order"):
        explored(familiar=familiar, order="best")
    # without a trained model there is no probability to weigh: as the lists (the most
    # unusual of each cell first: DE's L3, CN's L2)
    assert explored(supervised=False, order="value") == ["L2", "L3"]


def test_a_model_says_how_its_queue_explores():
    from types import SimpleNamespace

    def loaded(config, fallback=False):
        return SimpleNamespace(fallback=fallback, bundle=SimpleNamespace(config=config))

    assert explore_order(loaded({"queue.explore_order": "value"})) == "value"
    assert explore_order(loaded({})) == "lists"  # a model trained before the setting
    assert explore_order(loaded({"queue.explore_order": "value"}, fallback=True)) == "lists"


@pytest.mark.parametrize("order", ["lists", "value"])
@pytest.mark.parametrize("supervised", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_report_candidates_hold_every_record_the_queue_takes(seed, supervised, order):
    """`detector report` keeps only the rows a month's queue can take while it scores
    (report.generate.queue_candidates); each month's queue (mark_queue over the whole
    month) must find every record it takes among them. The candidates once used raw cell
    counts (0 for an unseen cell: division by zero) and |risk - 0.5| where the queue uses
    (1 + kind) x (1 + cell) and p(1-p) over its square root, so records were cut."""
    from detector.report.generate import queue_candidates

    rng = np.random.default_rng(seed)
    n = 3000
    kinds = rng.choice(["shipment", "lease"], n, p=[0.8, 0.2])
    frame = pl.DataFrame({
        "record_kind": kinds,
        "record_id": [f"R{i:05d}" for i in range(n)],
        "risk_score": rng.beta(0.5, 3, n),
        "unsupervised_score": rng.random(n),
        "destination": rng.choice(["HK", "SG", "AE", "MY", "DE", "KZ"], n),
        "record_date": pl.Series([date(2025, 1 + int(m), 1) for m in rng.integers(0, 3, n)]),
    })
    familiar = {"shipment": 40, "lease": 1, "shipment|HK": 500, "shipment|SG": 30,
                "lease|AE": 2}
    months = frame["record_date"].dt.strftime("%Y-%m")
    capacities = {m: 40 for m in months.unique().to_list()}
    kept = queue_candidates(frame, capacities, supervised, 0.25, familiar, order)
    kept_ids = set(kept["record_id"].to_list())
    taken = 0
    for month in capacities:
        ranked = (frame.filter(months == month)
                  .sort(["risk_score", "record_kind", "record_id"],
                        descending=[True, False, False]))
        marked = mark_queue(ranked, 40, 0.25, supervised=supervised, familiar=familiar,
                            order=order)
        ids = set(marked.filter(pl.col("queue_reason").is_not_null())["record_id"].to_list())
        assert len(ids) == 40
        assert ids <= kept_ids, sorted(ids - kept_ids)[:5]
        taken += len(ids)
    assert taken == 120

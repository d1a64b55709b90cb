"""The inspection budget (issue #14): the queue is the top records by risk plus a share
chosen for learning, and each row says why it is there."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from detector.errors import UsageError
from detector.queue import choose_queue, explore_slots, mark_queue, parse_capacity


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
    assert out["queue_reason"].to_list() == ["risk", "risk", "explore", None]

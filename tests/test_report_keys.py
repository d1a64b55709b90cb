"""The report's look-ups by record key that spare a large batch a join of its whole scores
table (issue #15): each gives what the join gave, including its errors, and falls back
to the join where a hash cannot decide."""

from __future__ import annotations

import polars as pl
import pytest
from report_fixtures import make_dataset

from detector.errors import InputError
from detector.report import data
from detector.report.generate import with_queue

KEY = ["record_kind", "record_id"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds"))


def _joined_records(dataset, scores, months=None, keys=None) -> pl.DataFrame:
    """`data.scored_records` as it was: the records joined to the whole scores table."""
    return data.report_records(dataset, months, keys).join(scores, on=KEY, how="left").sort(
        ["risk_score", "record_kind", "record_id"], descending=[True, False, False])


def test_overview_by_hashes_equals_the_join(made):
    dataset, scores = made
    scores = data.checked_scores(scores)
    months, models = data.scored_overview(dataset, scores)
    assert (months, models) == data._joined_overview(dataset, scores)
    assert len(months) == 2 and len(models) == 1
    # scores of records outside the dataset do not count
    extra = scores.head(1).with_columns(pl.lit("S-ELSEWHERE").alias("record_id"))
    assert data.scored_overview(dataset, pl.concat([scores, extra])) == (months, models)


def test_several_models_are_found_by_the_join(made):
    dataset, scores = made
    scores = data.checked_scores(scores)
    two = scores.with_columns(pl.when(pl.col("record_kind") == "lease").then(pl.lit("other/1"))
                              .otherwise(pl.col("model")).alias("model"))
    _, models = data.scored_overview(dataset, two)
    assert models == sorted([scores["model"][0], "other/1"])
    # a model that scored only records outside the dataset is not named
    outside = two.with_columns(pl.when(pl.col("record_kind") == "lease")
                               .then(pl.lit("LSE-ELSEWHERE-") + pl.col("record_id"))
                               .otherwise(pl.col("record_id")).alias("record_id"))
    outside = pl.concat([outside, scores.filter(pl.col("record_kind") == "lease")])
    assert data.scored_overview(dataset, outside)[1] == [scores["model"][0]]


def test_an_unscored_record_is_named(made):
    dataset, scores = made
    scores = data.checked_scores(scores)
    missing = scores.filter(pl.col("record_kind") == "shipment")["record_id"].sort()[:3]
    partial = scores.filter(~pl.col("record_id").is_in(missing.implode()))
    with pytest.raises(InputError, match="3 have none") as caught:
        data.scored_overview(dataset, partial)
    assert all(f"shipment {m}" in str(caught.value) for m in missing)


def test_repeated_keys_are_refused(made):
    _, scores = made
    twice = pl.concat([scores, scores.tail(2)])
    with pytest.raises(InputError, match="4 rows repeat") as caught:
        data.checked_scores(twice)
    assert scores.tail(1)["record_id"][0] in str(caught.value)
    # the same id under two kinds is two records
    other_kind = scores.head(1).with_columns(pl.lit("lease").alias("record_kind"))
    assert data.checked_scores(pl.concat([scores.filter(pl.col("record_kind") == "shipment")
                                          .head(1), other_kind])).height == 2


def test_colliding_hashes_fall_back_to_the_keys(made, monkeypatch):
    """With every hash equal (the worst collision) the answers are still the keys'."""
    dataset, scores = made
    checked = data.checked_scores(scores)
    expected = data.scored_overview(dataset, checked)
    monkeypatch.setattr(data, "_key_hash", lambda: pl.col("record_kind").hash() * 0)
    assert data.checked_scores(scores).equals(checked)
    assert data.scored_overview(dataset, checked) == expected
    with pytest.raises(InputError, match="2 rows repeat"):
        data.checked_scores(pl.concat([scores, scores.tail(1)]))


def test_scored_records_equal_the_join(made):
    dataset, scores = made
    scores = data.checked_scores(scores)
    window = data.scored_records(dataset, scores, ["2024-06"])
    assert window.equals(_joined_records(dataset, scores, ["2024-06"]))
    assert 0 < window.height < scores.height
    keys = scores.filter(pl.col("risk_score") >= scores["risk_score"].median()).select(KEY)
    flagged = data.scored_records(dataset, scores, keys=keys)
    assert flagged.equals(_joined_records(dataset, scores, keys=keys))
    assert flagged.height == keys.height


def test_queue_set_by_rank_equals_the_join(made):
    _, scores = made
    table = scores.drop("rank").sort(["risk_score", "record_kind", "record_id"],
                        descending=[True, False, False]).with_row_index("rank", offset=1) \
        .with_columns(pl.col("rank").cast(pl.Int64))
    review = table.filter(pl.col("rank").is_in([1, 4, 9])).select(
        *KEY, "rank", pl.Series("queue_reason", ["risk", "risk", "explore"]))
    full = pl.Series("_full", ["full 1", None, "full 9"], dtype=pl.String)
    reasons = review.select(*KEY, "queue_reason", full)
    joined = table.join(reasons, on=KEY, how="left", maintain_order="left") \
        .with_columns(reasons=pl.coalesce("_full", "reasons")).drop("_full")
    assert with_queue(table, review, full).equals(joined)
    with pytest.raises(RuntimeError, match="rank order"):
        with_queue(table.reverse(), review, full)

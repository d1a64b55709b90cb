"""The review queue: an inspection budget that keeps learning.

Analysts can review ``capacity`` records (`--capacity`: a count, or a share such as
``1%``). Most of the queue goes to the riskiest records; a share (`--explore`) goes to
records chosen for what deciding them teaches the model, as customs-selection systems
(DATE/SCFD) spend part of the inspection budget on exploration:

* **least sure**: records whose calibrated probability is closest to 0.5 (only with a
  trained model; the fallback's score is not a probability);
* **unusual but unfamiliar**: records the unsupervised layer finds most unusual (its
  score is a percentile of the training population, so a high score means unlike what
  the model was fitted on) among those the risk ranking left out.

Explore slots alternate between the two lists (the first of each not yet taken);
without a trained model all go to the unusual list. Everything is deterministic: ties
follow the rank, so the same scores give the same queue. Each queue row says why it is
there: ``queue_reason`` = ``risk`` or ``explore`` (null outside the queue).
"""

from __future__ import annotations

import math
import re

import numpy as np
import polars as pl

from detector.errors import UsageError

DEFAULT_CAPACITY = "1%"
# Share of the queue spent on exploration; README "Inspection budget" says why 0.1
# (benchmarks/bench_loop.py).
DEFAULT_EXPLORE = 0.1
RISK, EXPLORE = "risk", "explore"

_COUNT_RE = re.compile(r"^\s*(\d+)\s*$")
_SHARE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*%\s*$")


def parse_capacity(text: str, n_records: int) -> int:
    """Review capacity in records: "250" -> 250, "1%" -> ceil(1% of n_records), at least 1."""
    text = str(text)
    if match := _COUNT_RE.match(text):
        count = int(match.group(1))
        if count < 1:
            raise UsageError(f"--capacity: expected a positive count such as 250 or a share "
                             f"such as 1%, got {text!r}")
        return count
    if match := _SHARE_RE.match(text):
        share = float(match.group(1))
        if not 0 < share <= 100:
            raise UsageError(f"--capacity: a share must be above 0% and at most 100%, "
                             f"got {text!r}")
        return max(1, math.ceil(share / 100 * n_records - 1e-9))
    raise UsageError(f"--capacity: expected a count such as 250 or a share such as 1%, "
                     f"got {text!r}")


def check_explore(share: float) -> float:
    if share is None or math.isnan(float(share)) or not 0.0 <= float(share) <= 1.0:
        raise UsageError(f"--explore: expected a share of the queue from 0 to 1 (e.g. 0.1), "
                         f"got {share}")
    return float(share)


def explore_slots(capacity: int, share: float) -> int:
    """Explore slots in a queue of ``capacity``: the share, rounded half up."""
    return min(capacity, math.floor(capacity * share + 0.5))


def choose_queue(risk: np.ndarray, unusual: np.ndarray | None, capacity: int, explore: float,
                 *, supervised: bool) -> np.ndarray:
    """queue_reason per row for rows given in rank order (highest risk first).

    ``risk``: the risk scores; ``unusual``: the unsupervised layer's score (None when
    unknown); ``supervised``: risk is a calibrated probability from a trained model.
    """
    n = len(risk)
    reasons = np.full(n, None, dtype=object)
    capacity = min(capacity, n)
    k_explore = explore_slots(capacity, check_explore(explore))
    k_risk = capacity - k_explore
    reasons[:k_risk] = RISK
    rest = np.arange(k_risk, n)
    lists = []
    if supervised and len(rest):
        # closest to 0.5 first; stable sort keeps rank order among equals
        lists.append(rest[np.argsort(np.abs(risk[rest] - 0.5), kind="stable")])
    if unusual is not None and len(rest):
        values = np.nan_to_num(np.asarray(unusual, dtype=np.float64)[rest], nan=-1.0)
        lists.append(rest[np.argsort(-values, kind="stable")])
    if not lists:  # nothing to learn from: the next records by risk
        lists.append(rest)
    position = [0] * len(lists)
    taken = 0
    turn = 0
    while taken < k_explore:
        order = lists[turn % len(lists)]
        i = position[turn % len(lists)]
        while i < len(order) and reasons[order[i]] is not None:
            i += 1
        position[turn % len(lists)] = i
        if i < len(order):
            reasons[order[i]] = EXPLORE
            taken += 1
        elif all(p >= len(o) for p, o in zip(position, lists)):
            break
        turn += 1
    return reasons


def mark_queue(ranked: pl.DataFrame, capacity: str | int, explore: float, *,
               supervised: bool) -> pl.DataFrame:
    """``ranked`` (sorted by rank) with ``queue_reason`` set for the review queue.

    ``capacity``: a count or a share text (``parse_capacity``). Uses the
    ``unsupervised_score`` column when the frame has it.
    """
    k = parse_capacity(capacity, ranked.height) if isinstance(capacity, str) else int(capacity)
    unusual = (ranked["unsupervised_score"].to_numpy()
               if "unsupervised_score" in ranked.columns else None)
    reasons = choose_queue(ranked["risk_score"].to_numpy(), unusual, k, explore,
                           supervised=supervised)
    return ranked.with_columns(queue_reason=pl.Series(reasons, dtype=pl.String))


def queue_summary(frame: pl.DataFrame) -> str:
    counts = dict(frame.group_by("queue_reason").len().drop_nulls().iter_rows())
    total = sum(counts.values())
    return (f"review queue: {total} records ({counts.get(RISK, 0)} by risk, "
            f"{counts.get(EXPLORE, 0)} chosen to explore)")

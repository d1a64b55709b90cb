"""The review queue: an inspection budget that keeps learning.

Analysts can review ``capacity`` records (`--capacity`: a count, or a share such as
``1%``). Most of the queue goes to the riskiest records; a share (`--explore`) goes to
records chosen for what deciding them teaches the model, as customs-selection systems
(DATE/SCFD) spend part of the inspection budget on exploration:

* **new to the model**: records the unsupervised layer finds unusual (its score is a
  percentile of the training population, so a high score means unlike what the model
  was fitted on) that are far from the labelled records the model learned from. A
  record's *cell* is its kind and destination (a lease's: the lessee's country), the
  channel a scheme runs through; its familiarity is (1 + confirmed diversions of its
  kind) x (1 + labelled records of its cell) among the labels the model's trees were
  fitted on (stored with the model, `labelled_cells`; not the calibration slice: the
  newest labels only set the probability scale, so records like them are still new to
  the trees). The list is ordered by ``unusual / sqrt(familiarity)``: an unusual lease,
  when the model was never shown a diverted lease, comes before an unusual shipment to
  a destination with hundreds of labels;
* **least sure**: records whose calibrated probability is most in doubt where the trees
  learned least, ordered by ``p (1 - p) / sqrt(familiarity)`` (only with a trained
  model; the fallback's score is not a probability). A 0.5 in a cell of hundreds of
  labels is a coin toss the model knows about; doubt in a cell it barely saw is
  ignorance, which a decision resolves. Without stored familiarity: closest to 0.5.

Explore slots alternate between the two lists, new-to-the-model first, and spread across
cells: each list offers the first record of every cell before the second of any (so
three slots are not spent on one cluster). Without a trained model all go to the
unusual list; without stored familiarity the unusual list is ordered by unusualness
alone, still spread across cells. Everything is deterministic: ties follow the rank, so
the same scores give the same queue. Each queue row says why it is there:
``queue_reason`` = ``risk`` or ``explore`` (null outside the queue).
"""

from __future__ import annotations

import math
import re

import numpy as np
import polars as pl

from detector.config import EXPLORE_ORDERS
from detector.errors import UsageError

DEFAULT_CAPACITY = "1%"
# Share of the queue spent on exploration; README "Inspection budget" says why 0.1
# (benchmarks/bench_loop.py).
DEFAULT_EXPLORE = 0.1
RISK, EXPLORE = "risk", "explore"
LABELLED_CELLS = "labelled_cells"  # the bundle's provenance key
VALUE_FAMILIARITY_POWER = 0.25  # `explore_value`

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


def adaptive_share(previous: float, explored: int, found: int, *, base: float,
                   low: float, high: float) -> float:
    """The next period's explore share from the last one's outcome: doubled (up to
    ``high``) when its explore slots found at least one confirmed diversion, halved (down
    to ``low``) when they found none; ``base`` when no slot explored (nothing learned).

    Exploring pays while it finds what the risk ranking misses (a new channel); a slot
    that finds nothing is a diversion the risk ranking would likely have caught. The
    outcome needs each decision's queue reason (the replay, benchmarks/bench_loop.py
    ``--adaptive``, keeps it; the decision store does not yet)."""
    for share in (previous, base, low, high):
        check_explore(share)
    if not low <= base <= high:
        raise UsageError(f"adaptive explore share: expected low <= base <= high, got "
                         f"{low}, {base}, {high}")
    if explored <= 0:
        return base
    return min(high, previous * 2.0) if found > 0 else max(low, previous / 2.0)


def cell_expr() -> pl.Expr:
    """A record's cell in a scores table: its kind and destination (module docstring)."""
    return pl.concat_str(pl.col("record_kind"), pl.lit("|"),
                         pl.col("destination").cast(pl.String).fill_null("?"))


def labelled_cells(labelled: pl.DataFrame) -> dict[str, int]:
    """What a model learned from, for the queue's familiarity: labelled records per cell
    (``kind|destination``; destination: the shipment's, else the lessee's country) and
    confirmed diversions per kind (``kind``), from a feature frame's labelled rows."""
    frame = labelled.select(
        "record_kind", pl.coalesce(pl.col("destination_country"), pl.col("lessee_country"))
        .alias("destination"), "label")
    cells = frame.select(cell_expr().alias("cell")).group_by("cell").len()
    kinds = frame.group_by("record_kind").agg((pl.col("label") == 1).sum().alias("n"))
    return {**{c: int(n) for c, n in cells.sort("cell").iter_rows()},
            **{k: int(n) for k, n in kinds.sort("record_kind").iter_rows()}}


def familiarity(ranked: pl.DataFrame, familiar: dict[str, int],
                cells: pl.Series | None = None) -> np.ndarray:
    """Per row: (1 + confirmed diversions of its kind) x (1 + labelled records of its
    cell) the model learned from (`labelled_cells`). ``cells``: the rows' `cell_expr`
    when already computed."""
    cell = ranked.select(cell_expr())[:, 0] if cells is None else cells
    cell = cell.replace_strict(familiar, default=0, return_dtype=pl.Int64)
    kind = ranked["record_kind"].replace_strict(familiar, default=0, return_dtype=pl.Int64)
    return ((1 + kind) * (1 + cell)).to_numpy().astype(np.float64)


def novelty_order(unusual: np.ndarray, familiarity: np.ndarray | None) -> np.ndarray:
    """The explore list's sort value: unusualness over sqrt(familiarity); missing
    unusualness last."""
    values = np.nan_to_num(np.asarray(unusual, dtype=np.float64), nan=-1.0)
    if familiarity is None:
        return values
    return np.where(values >= 0, values / np.sqrt(np.asarray(familiarity, np.float64)), values)


def unsureness(risk: np.ndarray, familiarity: np.ndarray | None) -> np.ndarray:
    """The least-sure list's sort value: p(1 - p) (largest at 0.5), over sqrt(familiarity).

    A probability near 0.5 in a cell the trees learned from hundreds of labels is a coin
    toss the model knows about: deciding it teaches little. The same doubt where they
    learned from few labels is ignorance, which a decision resolves."""
    p = np.nan_to_num(np.asarray(risk, dtype=np.float64), nan=0.0)
    doubt = p * (1.0 - p)
    if familiarity is None:
        return doubt
    return doubt / np.sqrt(np.asarray(familiarity, np.float64))


def explore_value(risk: np.ndarray, unusual: np.ndarray,
                  familiarity: np.ndarray | None) -> np.ndarray:
    """The ``value`` order's sort value: risk x unusualness / familiarity ** 0.25.

    A slot spent on a record that is cleared is a diversion the risk ranking would likely
    have caught, so the chance of a find (the risk) counts; unusualness and a cell the
    trees learned little from say what a find teaches. The fourth root (the lists use the
    square root) leaves the risk more say: chosen on seeds 22 and 23 of the replay
    (benchmarks/bench_loop.py; README "Inspection budget"). Missing risk or unusualness
    counts as 0."""
    value = (np.nan_to_num(np.asarray(risk, np.float64), nan=0.0)
             * np.nan_to_num(np.asarray(unusual, np.float64), nan=0.0))
    if familiarity is None:
        return value
    return value / np.asarray(familiarity, np.float64) ** VALUE_FAMILIARITY_POWER


def spread(order: np.ndarray, cells: np.ndarray | None) -> np.ndarray:
    """``order`` (row indices) re-ordered round by round: the first row of every cell (in
    ``order``), then the second of every cell, ... (stable: within a round, ``order``)."""
    if cells is None or not len(order):
        return order
    codes = pl.Series(cells[order])
    if codes.dtype == pl.Object:  # cells given as Python objects (text): grouped as text
        codes = codes.cast(pl.String)
    within = pl.DataFrame({"c": codes}).select(
        pl.int_range(pl.len()).over("c").alias("r"))["r"].to_numpy()
    return order[np.lexsort((np.arange(len(order)), within))]


def choose_queue(risk: np.ndarray, unusual: np.ndarray | None, capacity: int, explore: float,
                 *, supervised: bool, cells: np.ndarray | None = None,
                 familiarity: np.ndarray | None = None, order: str = "lists") -> np.ndarray:
    """queue_reason per row for rows given in rank order (highest risk first).

    ``risk``: the risk scores; ``unusual``: the unsupervised layer's score (None when
    unknown); ``supervised``: risk is a calibrated probability from a trained model;
    ``cells``: each row's cell (None: no spreading); ``familiarity``: labelled records the
    model was trained on in each row's cell (None: unknown).
    """
    codes = _queue_codes(risk, unusual, capacity, explore, supervised=supervised,
                         cells=cells, familiarity=familiarity)
    return np.array([None, RISK, EXPLORE], dtype=object)[codes]


_OUT, _RISK, _EXPLORE = 0, 1, 2  # `_queue_codes`: one small integer per row


def _queue_codes(risk: np.ndarray, unusual: np.ndarray | None, capacity: int, explore: float,
                 *, supervised: bool, cells: np.ndarray | None = None,
                 familiarity: np.ndarray | None = None, order: str = "lists") -> np.ndarray:
    """`choose_queue` as codes (_OUT, _RISK, _EXPLORE) per row: no Python object per row."""
    n = len(risk)
    reasons = np.zeros(n, dtype=np.int8)
    capacity = min(capacity, n)
    k_explore = explore_slots(capacity, check_explore(explore))
    k_risk = capacity - k_explore
    reasons[:k_risk] = _RISK
    rest = np.arange(k_risk, n)
    if order not in EXPLORE_ORDERS:
        raise UsageError(f"explore order: expected one of {list(EXPLORE_ORDERS)}, got "
                         f"{order!r}")
    lists = []
    if order == "value" and supervised and unusual is not None and len(rest):
        lists.append(rest[np.argsort(-explore_value(
            risk[rest], np.asarray(unusual)[rest],
            None if familiarity is None else np.asarray(familiarity)[rest]), kind="stable")])
    elif unusual is not None and len(rest):
        values = novelty_order(np.asarray(unusual)[rest],
                               None if familiarity is None else np.asarray(familiarity)[rest])
        lists.append(rest[np.argsort(-values, kind="stable")])
    if supervised and len(rest) and not (order == "value" and lists):
        lists.append(rest[np.argsort(-unsureness(risk[rest], None if familiarity is None
                                                 else np.asarray(familiarity)[rest]),
                                     kind="stable")])
    if not lists:  # nothing to learn from: the next records by risk
        lists.append(rest)
    lists = [spread(order, cells) for order in lists]
    position = [0] * len(lists)
    taken = 0
    turn = 0
    while taken < k_explore:
        order = lists[turn % len(lists)]
        i = position[turn % len(lists)]
        while i < len(order) and reasons[order[i]] != _OUT:
            i += 1
        position[turn % len(lists)] = i
        if i < len(order):
            reasons[order[i]] = _EXPLORE
            taken += 1
        elif all(p >= len(o) for p, o in zip(position, lists)):
            break
        turn += 1
    return reasons


def mark_queue(ranked: pl.DataFrame, capacity: str | int, explore: float, *,
               supervised: bool, familiar: dict[str, int] | None = None,
               order: str = "lists") -> pl.DataFrame:
    """``ranked`` (sorted by rank) with ``queue_reason`` set for the review queue.

    ``capacity``: a count or a share text (``parse_capacity``). Uses the
    ``unsupervised_score`` column when the frame has it, and spreads explore slots over
    cells when it has ``record_kind`` and ``destination``; ``familiar``: the model's
    labelled records per cell (`labelled_cells`, stored with it); ``order``: how the
    explore slots are chosen (`choose_queue`; the model's `explore_order`).
    """
    k = parse_capacity(capacity, ranked.height) if isinstance(capacity, str) else int(capacity)
    unusual = (ranked["unsupervised_score"].to_numpy()
               if "unsupervised_score" in ranked.columns else None)
    cells = known = None
    if {"record_kind", "destination"} <= set(ranked.columns):
        cell = ranked.select(cell_expr())[:, 0]
        # the cells as integer codes (equal text, equal code): grouped without text
        cells = cell.cast(pl.Categorical).to_physical().to_numpy()
        if familiar is not None:
            known = familiarity(ranked, familiar, cell)
    codes = pl.Series(_queue_codes(ranked["risk_score"].to_numpy(), unusual, k, explore,
                                   supervised=supervised, cells=cells, familiarity=known,
                                   order=order))
    reason = pl.when(codes == _RISK).then(pl.lit(RISK)) \
        .when(codes == _EXPLORE).then(pl.lit(EXPLORE)).otherwise(pl.lit(None, pl.String))
    return ranked.with_columns(queue_reason=pl.select(reason).to_series())


def familiar_cells(model) -> dict[str, int] | None:
    """The labelled records per cell a loaded model (detector.engine.LoadedModel) was
    trained on; None for the fallback or a model trained before they were stored."""
    if model.fallback:
        return None
    return (model.bundle.provenance or {}).get(LABELLED_CELLS)


def explore_order(model) -> str:
    """How a loaded model's queue explores (``lists`` or ``value``: its training config's
    ``[queue] explore_order``); ``lists`` for the fallback or an older model."""
    if model.fallback:
        return "lists"
    from detector.config import explore_order as configured

    return configured(model.bundle.config or {})


def queue_summary(frame: pl.DataFrame) -> str:
    counts = dict(frame.group_by("queue_reason").len().drop_nulls().iter_rows())
    total = sum(counts.values())
    return (f"review queue: {total} records ({counts.get(RISK, 0)} by risk, "
            f"{counts.get(EXPLORE, 0)} chosen to explore)")

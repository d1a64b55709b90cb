"""`detector retrain`: train on the latest labels (and the analysts' stored decisions),
compare the new version with the champion, promote it only if it is better.

Exit codes (the result's ``exit_code``; docs/scheduling.md):

- 0: the new version is champion (better beyond noise, or the first version of the name);
- 4: trained and registered, champion kept: the new version is not better beyond noise
  (or is worse);
- 5: trained and registered, champion kept: too few labelled records neither model
  learned from to decide (fewer than 30 confirmed diversions, or none at all);
- 1, 2, 3 as for every command (bad input, wrong usage, environment failure).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from detector.compare import BETTER, DEFAULT_BOOTSTRAP, DEFAULT_CAPACITY, NO_DIFFERENCE, \
    TOO_FEW, Comparison, compare_models
from detector.errors import InputError, UsageError
from detector.settings import DEFAULT_EXPERIMENT, DEFAULT_MODEL_NAME

PROMOTED, NOT_BETTER, UNDECIDED = 0, 4, 5


@dataclass
class Retrained:
    version: int
    champion_before: int | None
    champion_after: int
    exit_code: int
    summary: str
    comparison: Comparison | None = None


def retrain(dataset_dir: str | Path, history_dirs: list[str | Path] = (), *,
            config_path: str | Path | None = None, experiment: str = DEFAULT_EXPERIMENT,
            name: str = DEFAULT_MODEL_NAME, screening_list: str | Path | None = None,
            promote_when: str = "better", capacity: str = DEFAULT_CAPACITY,
            n_boot: int = DEFAULT_BOOTSTRAP,
            log: Callable[[str], None] = lambda _: None) -> Retrained:
    """``promote_when``: "better" (better beyond noise) or "not-worse" (better, or no
    difference beyond noise, with enough positives to tell)."""
    from detector import tracking
    from detector.training import train

    if promote_when not in ("better", "not-worse"):
        raise UsageError(f"--promote-when {promote_when}: expected better or not-worse")
    before = tracking.champion_version(name)
    result = train(dataset_dir, history_dirs, config_path=config_path, experiment=experiment,
                   model_name=name, screening_list=screening_list, log=log)
    if before is None or result.champion:
        return Retrained(result.version, before, result.version, PROMOTED,
                         f"version {result.version} is the first of {name!r}: champion")
    log(f"comparing version {result.version} with champion version {before}")
    try:
        comparison = compare_models(dataset_dir, str(before), str(result.version),
                                    history_dirs, name=name, capacity=capacity,
                                    n_boot=n_boot, screening_list=screening_list, log=log)
    except InputError as exc:
        return Retrained(result.version, before, before, UNDECIDED,
                         f"version {result.version} registered; champion stays version "
                         f"{before}: cannot compare ({exc})")
    wanted = (BETTER,) if promote_when == "better" else (BETTER, NO_DIFFERENCE)
    if comparison.verdict in wanted:
        tracking.promote(name, result.version, record={
            "how": "retrain", "verdict": comparison.verdict,
            "comparison_run": comparison.run_id})
        return Retrained(result.version, before, result.version, PROMOTED,
                         f"version {result.version} promoted to champion "
                         f"({comparison.verdict})", comparison)
    code = UNDECIDED if comparison.verdict == TOO_FEW else NOT_BETTER
    return Retrained(result.version, before, before, code,
                     f"version {result.version} registered; champion stays version {before} "
                     f"({comparison.verdict})", comparison)

"""Scoring and training beyond one machine, on a dask.distributed cluster.

Why the work is split this way: features that look across records (behaviour windows,
re-export links, shared addresses, name resolution against the whole party registry)
depend on every record, so the feature frame is built once, with full context; the
model layers (rules, unsupervised detectors, LightGBM) are per-row functions of that
frame plus the loaded bundle, so they run per partition (`layer_partition`) and give
the same scores however the frame is cut. Ranking and reasons need every risk score
and run once on the driver, for the top N only.

Dask is imported here only, and only when an engine call needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import polars as pl

from detector.errors import EnvironmentFailure

LOCAL_WORKERS = 2


@contextmanager
def dask_client(scheduler: str | None = None, log: Callable[[str], None] = lambda _: None,
                processes: bool = False) -> Iterator[object]:
    """A client on ``scheduler`` (e.g. tcp://10.0.0.5:8786), else on a LocalCluster.

    ``processes``: local workers as separate processes (lightgbm.dask needs that: its
    network layer is one per process); threads suffice for scoring.
    """
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as exc:
        raise EnvironmentFailure(
            f"--engine dask needs dask.distributed ({exc}); install with "
            f"pip install 'dask[distributed]'") from None
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise EnvironmentFailure(f"--scheduler {scheduler}: cannot reach the Dask "
                                     f"scheduler ({exc})") from None
        log(f"dask: connected to {scheduler} ({len(client.scheduler_info()['workers'])} workers)")
        try:
            yield client
        finally:
            client.close()
        return
    with LocalCluster(n_workers=LOCAL_WORKERS, threads_per_worker=1, processes=processes,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        log(f"dask: LocalCluster with {LOCAL_WORKERS} workers")
        yield client


def layer_partition(part: pl.DataFrame, scorer) -> pl.DataFrame:
    """The stateless per-partition step: rule, unsupervised and risk columns for ``part``."""
    layered = scorer.layers(part)
    return layered.with_columns(risk_score=pl.Series(scorer.risk(layered), dtype=pl.Float64))


def partitions(frame: pl.DataFrame, count: int) -> list[pl.DataFrame]:
    """``frame`` cut into ``count`` contiguous slices (at least one row each)."""
    count = max(1, min(count, frame.height))
    size = -(-frame.height // count)
    return [frame.slice(start, size) for start in range(0, frame.height, size)] or [frame]


def score_frame_dask(frame: pl.DataFrame, model, top: int, client,
                     partition_count: int | None = None) -> pl.DataFrame:
    """`detector.scoring.score_frame`, with the model layers applied per partition."""
    from detector.models.ensemble import FallbackModel
    from detector.scoring import rank_with_reasons
    from features.registry import model_feature_names

    if model.fallback:  # fitted on the whole batch, like the local path, then shipped
        scorer = FallbackModel(model_feature_names()).fit(frame)
    else:
        scorer = model.bundle.model
    workers = max(1, len(client.scheduler_info()["workers"]))
    parts = partitions(frame, partition_count or 2 * workers)
    scorer_future = client.scatter(scorer, broadcast=True)
    futures = client.map(layer_partition, parts, scorer=scorer_future, pure=False)
    layered = pl.concat(client.gather(futures), how="vertical_relaxed")
    return rank_with_reasons(layered, scorer, model, top)


def score_batch_dask(batch, model, top: int = 1000, *, scheduler: str | None = None,
                     partition_count: int | None = None,
                     log: Callable[[str], None] = lambda _: None):
    """`detector.scoring.score_batch` on a Dask cluster: same inputs, same output."""
    from detector.batch import feature_frame
    from detector.scoring import Scored

    stats = None
    if not model.fallback:
        from features.stats import FeatureStats

        stats = FeatureStats.from_dict(model.bundle.feature_stats)
    frame = feature_frame(batch, stats)  # once, with every record as context
    with dask_client(scheduler, log) as client:
        scored = score_frame_dask(frame, model, top, client, partition_count)
    return Scored(scored, model, batch)

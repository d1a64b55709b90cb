"""Scoring and training beyond one machine, on a dask.distributed cluster.

Why the work is split this way: features that look across records (behaviour windows,
re-export links, shared addresses, name resolution against the whole party registry)
depend on every record, so the feature frame is built once, with full context; the
model layers (rules, unsupervised detectors, LightGBM) are per-row functions of that
frame plus the loaded bundle, so they run per partition (`detector.engine.layer`) and give
the same scores however the frame is cut. Ranking and reasons need every risk score
and run once on the driver, for the top N only. The scoring engine (detector.engine)
does all of that; this module only hands it a mapper that runs on a cluster.

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


def partitions(frame: pl.DataFrame, count: int) -> list[pl.DataFrame]:
    """``frame`` cut into ``count`` contiguous slices (at least one row each)."""
    count = max(1, min(count, frame.height))
    size = -(-frame.height // count)
    return [frame.slice(start, size) for start in range(0, frame.height, size)] or [frame]


def dask_mapper(client, partition_count: int | None = None):
    """The engine's mapper on a cluster: each part cut into ``partition_count`` slices
    (default two per worker), the per-part step run on them there, the slices gathered
    back in order. The fitted scorer is sent to every worker once."""
    workers = max(1, len(client.scheduler_info()["workers"]))
    count = partition_count or 2 * workers

    def mapper(step, frames, scorer):
        scorer_future = client.scatter(scorer, broadcast=True)
        for frame in frames:
            futures = client.map(step, partitions(frame, count), scorer=scorer_future,
                                 pure=False)
            yield pl.concat(client.gather(futures), how="vertical_relaxed")

    return mapper


def score_frame_dask(frame: pl.DataFrame, model, top: int, client,
                     partition_count: int | None = None) -> pl.DataFrame:
    """`detector.scoring.score_frame` (one feature frame), with the model layers applied
    per partition on the cluster."""
    from detector import engine

    return engine.score_parts([frame], model, top, keep=engine.keep_all,
                              mapper=dask_mapper(client, partition_count)).kept

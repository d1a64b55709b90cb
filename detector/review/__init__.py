"""`detector review`: the local review page (queue, case pages, decisions).

`session` holds what the page shows and does (no web framework); `app` is the thin
Starlette layer over it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def serve(dataset_dir: str | Path, *, scores_path=None, history_dirs=(), model_uri=None,
          host: str = "127.0.0.1", port: int = 8765, analyst: str | None = None,
          capacity: str = "1%", explore: float = 0.1, screening_list=None,
          log: Callable[[str], None] = lambda _: None) -> None:
    """Load the batch, then serve the review page until interrupted."""
    from detector.decisions import default_analyst, store_path
    from detector.review.app import run
    from detector.review.session import open_review

    session = open_review(dataset_dir, scores_path=scores_path, history_dirs=history_dirs,
                          model_uri=model_uri, capacity=capacity, explore=explore,
                          screening_list=screening_list,
                          analyst=analyst or default_analyst(), log=log)
    shown = f"[{host}]" if ":" in host else host
    log(f"review page: http://{shown}:{port}/ ({session.records} records; decisions stored "
        f"in {store_path()}); Ctrl-C stops it")
    session.prepare_in_background()
    run(session, host, port)

"""Settings that more than one module reads: names, places and environment variables.

Training settings live in detector.config (one validated object loaded from a file);
this module holds the rest, once.
"""

from __future__ import annotations

import os
from pathlib import Path

# Environment variables the detector reads.
HOME_ENV = "DETECTOR_HOME"  # the embedded tracking store and artifacts (default ./.detector)
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"  # a tracking server instead of the embedded store
SCREENING_LIST_ENV = "DETECTOR_SCREENING_LIST"  # screening list used when none is given

DEFAULT_HOME = ".detector"
DEFAULT_MODEL_NAME = "chip-diversion"  # registered model name and MLflow experiment
DEFAULT_EXPERIMENT = DEFAULT_MODEL_NAME
CHAMPION = "champion"
DEFAULT_MODEL_URI = f"models:/{DEFAULT_MODEL_NAME}@{CHAMPION}"

# Shipments whose features are built and scored at once by `detector score`. A batch of
# up to this many shipments is one part (the whole feature frame in memory); a larger
# one is cut into parts of this size, so memory follows the part, not the batch
# (docs/scale.md: about 4 GiB for one part of 1M).
DEFAULT_CHUNK_ROWS = 1_000_000


def detector_home() -> Path:
    """``$DETECTOR_HOME`` (default ./.detector) as an absolute path."""
    return Path(os.environ.get(HOME_ENV, DEFAULT_HOME)).expanduser().resolve()

"""The supervised layer trained with `lightgbm.dask` on a dask.distributed cluster.

Same inputs, parameters, class weighting and Platt calibration as
`SupervisedModel.fit`; the result is an ordinary fitted `SupervisedModel` (one booster),
so saving, scoring and explaining do not know how it was trained. `lightgbm.dask` has no
early stopping, so all ``num_boost_round`` trees are grown and the best iteration is
chosen afterwards on the later (validation) slice by average precision, checked every
``EVALUATE_EVERY`` trees.

LightGBM's network layer is per process: the workers must be separate processes
(a LocalCluster with ``processes=True``).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from detector.models.base import feature_matrix
from detector.models.supervised import SupervisedModel

EVALUATE_EVERY = 10


def fit_supervised_dask(model: SupervisedModel, frame: pl.DataFrame, labels: np.ndarray,
                        client, *, valid_frame: pl.DataFrame | None = None,
                        valid_labels: np.ndarray | None = None,
                        sample_weight: np.ndarray | None = None) -> SupervisedModel:
    """Fit ``model`` (an unfitted SupervisedModel) on the cluster behind ``client``."""
    import dask.array as da
    import lightgbm as lgb

    from detector.evaluation import average_precision

    if labels is None or len(np.unique(labels)) < 2:
        raise ValueError("the supervised model needs labels 0 and 1 in its training slice")
    y = np.asarray(labels, dtype=np.float64)
    params = model.training_params(y)
    workers = max(1, len(client.scheduler_info()["workers"]))
    params["num_threads"] = 1  # one thread per worker; the workers are the parallelism
    x = feature_matrix(frame, model.features)
    chunk = -(-len(y) // workers)
    estimator = lgb.DaskLGBMClassifier(client=client, n_estimators=model.num_boost_round,
                                       **params)
    weight = None if sample_weight is None else da.from_array(
        np.asarray(sample_weight, np.float64), chunks=chunk)
    estimator.fit(da.from_array(x, chunks=(chunk, x.shape[1])), da.from_array(y, chunks=chunk),
                  sample_weight=weight, feature_name=model.features)
    model.booster_ = estimator.booster_
    total = model.booster_.current_iteration()
    model.best_iteration_ = total
    model.calibration_ = (1.0, 0.0)
    model.calibrated_ = False
    if valid_frame is not None and valid_labels is not None \
            and len(np.unique(valid_labels)) == 2:
        xv = feature_matrix(valid_frame, model.features)
        yv = np.asarray(valid_labels)
        candidates = sorted({*range(EVALUATE_EVERY, total + 1, EVALUATE_EVERY), total})
        quality = [average_precision(yv, model.booster_.predict(xv, raw_score=True,
                                                                num_iteration=k))
                   for k in candidates]
        model.best_iteration_ = int(candidates[int(np.argmax(quality))])
        model.calibrate(valid_frame, yv)
    return model

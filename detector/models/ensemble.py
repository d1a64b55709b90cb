"""The three layers combined, and the model bundle that carries them.

``DiversionModel``: rules + unsupervised + LightGBM (trained on labelled rows).
``FallbackModel``: rules + unsupervised only, used when no trained model exists; its
score is a ranking in 0..1, not a probability, and the output says so.
``ModelBundle``: a fitted DiversionModel plus everything needed to score with it
elsewhere — feature list, learned feature statistics, reference-data version,
parameters — saved to a directory and refused when the features differ.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from detector.config import TrainingConfig
from detector.errors import InputError
from detector.models.base import RiskModel
from detector.models.rules import RuleModel
from detector.models.scheme import SchemeModel
from detector.models.supervised import SupervisedModel
from detector.models.unsupervised import UnsupervisedEnsemble
from features.registry import unsupervised_feature_names

_DEFAULTS = TrainingConfig()  # training defaults live in detector.config, once

# 2: no pickle (booster text, NPZ arrays, skops detectors; see ModelBundle)
BUNDLE_FORMAT = 2


def layer_columns(detectors: tuple[str, ...]) -> list[str]:
    """The columns the rule and unsupervised layers add to the feature frame."""
    return ["rule_points", "unsupervised_score", *[f"unsupervised_{d}" for d in detectors]]


def _with_layers(frame: pl.DataFrame, rules: RuleModel,
                 unsupervised: UnsupervisedEnsemble) -> pl.DataFrame:
    """``frame`` plus the rule and unsupervised scores (and the rule hits), same row order."""
    hits = rules.hits(frame)
    per_detector = unsupervised.detector_scores(frame)
    columns = {f"unsupervised_{k}": v for k, v in per_detector.items()}
    mean = (np.mean(np.vstack(list(per_detector.values())), axis=0)
            if frame.height else np.zeros(0))
    return frame.with_columns(
        rule_points=hits["rule_points"],
        rule_hits=hits["rule_hits"],
        unsupervised_score=pl.Series(mean, dtype=pl.Float64),
        **{k: pl.Series(v, dtype=pl.Float64) for k, v in columns.items()},
    )


class FallbackModel(RiskModel):
    """Rules + unsupervised detectors fitted on the batch itself.

    risk = 0.75 * (1 - exp(-rule_points / 4)) + 0.25 * unsupervised percentile: the red
    flags lead, the unsupervised score orders records with similar flags.
    """

    def __init__(self, features: list[str], random_state: int = 0):
        self.features = features
        self.random_state = random_state

    def fit(self, frame: pl.DataFrame, labels: np.ndarray | None = None):
        self.rules_ = RuleModel().fit(frame)
        self.unsupervised_ = UnsupervisedEnsemble(unsupervised_feature_names(self.features),
                                                  random_state=self.random_state).fit(frame)
        return self

    def layers(self, frame: pl.DataFrame) -> pl.DataFrame:
        return _with_layers(frame, self.rules_, self.unsupervised_)

    def risk(self, layered: pl.DataFrame) -> np.ndarray:
        points = layered["rule_points"].to_numpy().astype(np.float64)
        unsup = layered["unsupervised_score"].to_numpy()
        return 0.75 * (1.0 - np.exp(-points / 4.0)) + 0.25 * unsup

    def decision_function(self, frame: pl.DataFrame) -> np.ndarray:
        return self.risk(self.layers(frame))


class DiversionModel(RiskModel):
    """Rules and unsupervised scores feed a calibrated LightGBM model."""

    def __init__(self, features: list[str], lightgbm_params: dict | None = None,
                 num_boost_round: int = _DEFAULTS.lightgbm.num_boost_round,
                 early_stopping_rounds: int = _DEFAULTS.lightgbm.early_stopping_rounds,
                 unsupervised_detectors: tuple[str, ...] = _DEFAULTS.unsupervised.detectors,
                 max_fit_rows: int = _DEFAULTS.unsupervised.max_fit_rows,
                 random_state: int = _DEFAULTS.seed):
        self.features = features
        self.lightgbm_params = lightgbm_params
        self.num_boost_round = num_boost_round
        self.early_stopping_rounds = early_stopping_rounds
        self.unsupervised_detectors = unsupervised_detectors
        self.max_fit_rows = max_fit_rows
        self.random_state = random_state

    @property
    def model_inputs(self) -> list[str]:
        return [*self.features, *layer_columns(tuple(self.unsupervised_detectors))]

    def fit(self, frame: pl.DataFrame, labels: np.ndarray | None = None, *,
            unlabelled: pl.DataFrame | None = None, valid_frame: pl.DataFrame | None = None,
            valid_labels: np.ndarray | None = None, dask_client=None,
            sample_weight: np.ndarray | None = None):
        """Fit on ``frame`` (labelled rows); ``unlabelled`` rows of the same period also
        shape the unsupervised layer; ``valid_*`` is the later slice for early stopping
        and calibration; ``sample_weight`` weighs the rows of ``frame`` in the LightGBM
        layer (detector.models.supervised.scheme_weights). With ``dask_client`` the
        LightGBM layer trains with lightgbm.dask on that cluster
        (detector.models.dask_supervised)."""
        self.rules_ = RuleModel().fit(frame)
        population = frame if unlabelled is None else pl.concat([frame, unlabelled],
                                                               how="diagonal_relaxed")
        self.unsupervised_ = UnsupervisedEnsemble(
            unsupervised_feature_names(self.features), self.unsupervised_detectors,
            self.max_fit_rows, random_state=self.random_state).fit(population)
        supervised = SupervisedModel(
            self.model_inputs, self.lightgbm_params, self.num_boost_round,
            self.early_stopping_rounds)
        valid_layered = None if valid_frame is None else self.layers(valid_frame)
        if dask_client is None:
            self.supervised_ = supervised.fit(self.layers(frame), labels,
                                              valid_frame=valid_layered,
                                              valid_labels=valid_labels,
                                              sample_weight=sample_weight)
        else:
            from detector.models.dask_supervised import fit_supervised_dask

            self.supervised_ = fit_supervised_dask(supervised, self.layers(frame), labels,
                                                   dask_client, valid_frame=valid_layered,
                                                   valid_labels=valid_labels,
                                                   sample_weight=sample_weight)
        return self

    def layers(self, frame: pl.DataFrame) -> pl.DataFrame:
        return _with_layers(frame, self.rules_, self.unsupervised_)

    def risk(self, layered: pl.DataFrame) -> np.ndarray:
        return self.supervised_.decision_function(layered)

    def decision_function(self, frame: pl.DataFrame) -> np.ndarray:
        return self.risk(self.layers(frame))

    def contributions(self, layered: pl.DataFrame) -> np.ndarray:
        return self.supervised_.contributions(layered)


@dataclass
class ModelBundle:
    """A fitted model with its features, learned statistics and provenance.

    On disk (format 2) a bundle holds no pickle and nothing that runs code when read:
    ``bundle.json`` (parameters, features, statistics, provenance; an extensible JSON
    document), ``booster.txt`` (LightGBM's own text model), ``unsupervised.npz`` (the
    scaling arrays and training-score references, read with ``allow_pickle=False``) and
    ``detectors.skops`` (the fitted pyod detectors in skops' data-only format, loaded
    with an explicit list of the few classes it may build), and with a scheme model
    ``scheme_booster.txt`` (its LightGBM text; classes in ``bundle.json``). A ``.pkl`` file in the
    directory is never opened. ``bundle.json`` records each file's SHA-256, checked
    before anything is parsed, so a truncated or swapped file is refused.
    """

    model: DiversionModel
    feature_names: list[str]
    feature_stats: dict
    reference_version: str
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    scheme_model: SchemeModel | None = None  # None: likely schemes from the rule families

    def save(self, directory: str | Path) -> Path:
        import skops.io

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state, booster_text = self.model.supervised_.to_state()
        unsupervised = self.model.unsupervised_
        (directory / BOOSTER_FILE).write_text(booster_text)
        arrays = {"fill_values": unsupervised.fill_values_, "center": unsupervised.center_,
                  "scale": unsupervised.scale_,
                  **{f"train_scores_{k}": v for k, v in unsupervised.train_scores_.items()}}
        with open(directory / ARRAYS_FILE, "wb") as fh:
            np.savez(fh, **arrays)
        (directory / DETECTORS_FILE).write_bytes(skops.io.dumps(dict(unsupervised.detectors_)))
        params = {k: getattr(self.model, k) for k in (
            "features", "lightgbm_params", "num_boost_round", "early_stopping_rounds",
            "unsupervised_detectors", "max_fit_rows", "random_state")}
        params["unsupervised_detectors"] = list(params["unsupervised_detectors"])
        meta = {
            "bundle_format": BUNDLE_FORMAT,
            "feature_names": self.feature_names,
            "feature_stats": self.feature_stats,
            "reference_version": self.reference_version,
            "supervised": state,
            "layers": {"params": params, "rules": list(self.model.rules_.rule_names_),
                       "detectors": list(unsupervised.detectors_)},
            "files": {name: _sha256(directory / name)
                      for name in (BOOSTER_FILE, ARRAYS_FILE, DETECTORS_FILE)},
            "config": self.config,
            "metrics": self.metrics,
            "provenance": self.provenance,
        }
        if self.scheme_model is not None:
            meta["scheme"], scheme_text = self.scheme_model.to_state()
            (directory / SCHEME_FILE).write_text(scheme_text)
            meta["files"][SCHEME_FILE] = _sha256(directory / SCHEME_FILE)
        (directory / "bundle.json").write_text(json.dumps(meta, indent=2, default=str))
        return directory

    @classmethod
    def load(cls, directory: str | Path, expected_features: list[str] | None = None):
        """Load a bundle; refuse it when its features differ from ``expected_features``.

        Reading a bundle runs no code from it (see the class notes), so a directory from
        anywhere can be loaded safely; whether its model scores well is another matter.
        """
        directory = Path(directory)
        meta_path = directory / "bundle.json"
        if not meta_path.is_file():
            raise InputError(f"{directory}: not a detector model bundle (no bundle.json)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            raise InputError(f"{meta_path}: not a readable bundle description: {exc}") from None
        if not isinstance(meta, dict):
            raise InputError(f"{meta_path}: not a detector bundle description (not an object)")
        found = meta.get("bundle_format")
        if found != BUNDLE_FORMAT:
            hint = (" (format 1 stored its layers as a pickle, which this detector never "
                    "loads: retrain with `detector train`)" if found == 1 else "")
            raise InputError(f"{directory}: bundle format {found!r}, this detector reads "
                             f"format {BUNDLE_FORMAT}{hint}")
        names = meta["feature_names"]
        if expected_features is not None and names != expected_features:
            missing = [f for f in expected_features if f not in names]
            extra = [f for f in names if f not in expected_features]
            raise InputError(
                f"{directory}: the model was trained on different features than this detector "
                f"builds (model lacks {missing[:6]}, model has extra {extra[:6]}); retrain it "
                "with `detector train` or use the detector version it was trained with")
        try:
            model = _load_layers(directory, meta)
            scheme = None
            if meta.get("scheme") is not None:
                scheme = SchemeModel.from_state(meta["scheme"], _checked_bytes(
                    directory, SCHEME_FILE, meta.get("files") or {}).decode("utf-8"))
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged file: name the bundle, no traceback
            raise InputError(f"{directory}: the model bundle cannot be read: "
                             f"{type(exc).__name__}: {str(exc)[:300]}") from None
        return cls(model, names, meta["feature_stats"], meta["reference_version"],
                   meta.get("config", {}), meta.get("metrics", {}), meta.get("provenance", {}),
                   scheme)


def import_model_libraries() -> None:
    """Import what loading and running a bundle needs (skops, pyod's detectors, LightGBM
    and lignum, scikit-learn beneath them): seconds of work that `detector score` does on a side
    thread while it reads the batch."""
    import lightgbm  # noqa: F401
    import lignum  # noqa: F401
    import pyod.models.hbos  # noqa: F401
    import pyod.models.iforest  # noqa: F401
    import pyod.models.loda  # noqa: F401
    import skops.io  # noqa: F401


def load_bundle(directory: str | Path) -> ModelBundle:
    """The bundle in ``directory``, refused unless it has this detector's features."""
    from features.registry import model_feature_names

    return ModelBundle.load(directory, expected_features=model_feature_names())


BOOSTER_FILE = "booster.txt"
SCHEME_FILE = "scheme_booster.txt"  # the scheme model (detector.models.scheme), when trained
ARRAYS_FILE = "unsupervised.npz"
DETECTORS_FILE = "detectors.skops"

# The only classes a bundle's detectors.skops may build beyond skops' own defaults
# (numpy arrays, builtins, scikit-learn's estimators). Anything else is refused before
# any object is made.
TRUSTED_DETECTOR_TYPES = [
    "pyod.models.iforest.IForest",
    "pyod.models.hbos.HBOS",
    "pyod.models.loda.LODA",
    "sklearn.tree._tree.Tree",
]


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checked_bytes(directory: Path, name: str, expected: dict) -> bytes:
    path = directory / name
    if not path.is_file():
        raise InputError(f"{directory}: model bundle is missing {name}")
    data = path.read_bytes()
    import hashlib

    if expected.get(name) != hashlib.sha256(data).hexdigest():
        raise InputError(f"{path}: does not match the SHA-256 recorded in bundle.json "
                         "(damaged or replaced); refusing to load it")
    return data


def _load_layers(directory: Path, meta: dict) -> DiversionModel:
    import io

    import skops.io

    files = meta.get("files") or {}
    layers = meta["layers"]
    params = dict(layers["params"])
    params["unsupervised_detectors"] = tuple(params["unsupervised_detectors"])
    model = DiversionModel(**params)
    rules = RuleModel().fit(pl.DataFrame())  # nothing learned: the names are provenance
    model.rules_ = rules
    booster_text = _checked_bytes(directory, BOOSTER_FILE, files).decode("utf-8")
    with np.load(io.BytesIO(_checked_bytes(directory, ARRAYS_FILE, files)),
                 allow_pickle=False) as arrays:
        unsupervised = UnsupervisedEnsemble(unsupervised_feature_names(params["features"]), params["unsupervised_detectors"],
                                            params["max_fit_rows"], params["random_state"])
        unsupervised.fill_values_ = arrays["fill_values"]
        unsupervised.center_ = arrays["center"]
        unsupervised.scale_ = arrays["scale"]
        unsupervised.train_scores_ = {k: arrays[f"train_scores_{k}"] for k in layers["detectors"]}
    data = _checked_bytes(directory, DETECTORS_FILE, files)
    untrusted = [t for t in skops.io.get_untrusted_types(data=data)
                 if t not in TRUSTED_DETECTOR_TYPES]
    if untrusted:
        raise InputError(f"{directory / DETECTORS_FILE}: holds types a detector bundle never "
                         f"contains ({untrusted[:5]}); refusing to load it")
    detectors = skops.io.loads(data, trusted=TRUSTED_DETECTOR_TYPES)
    if not isinstance(detectors, dict) or list(detectors) != list(layers["detectors"]):
        raise InputError(f"{directory / DETECTORS_FILE}: does not hold the detectors "
                         f"bundle.json names ({layers['detectors']})")
    unsupervised.detectors_ = detectors
    model.unsupervised_ = unsupervised
    model.supervised_ = SupervisedModel.from_state(meta["supervised"], booster_text)
    return model

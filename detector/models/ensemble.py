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
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from detector.errors import InputError
from detector.models.base import RiskModel
from detector.models.rules import RuleModel
from detector.models.scheme import SchemeModel
from detector.models.supervised import SupervisedModel
from detector.models.unsupervised import DETECTORS, UnsupervisedEnsemble

BUNDLE_FORMAT = 1


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
        self.unsupervised_ = UnsupervisedEnsemble(self.features,
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
                 num_boost_round: int = 250, early_stopping_rounds: int = 30,
                 unsupervised_detectors: tuple[str, ...] = DETECTORS,
                 max_fit_rows: int = 200_000, random_state: int = 0):
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
            valid_labels: np.ndarray | None = None, dask_client=None):
        """Fit on ``frame`` (labelled rows); ``unlabelled`` rows of the same period also
        shape the unsupervised layer; ``valid_*`` is the later slice for early stopping
        and calibration. With ``dask_client`` the LightGBM layer trains with lightgbm.dask
        on that cluster (detector.models.dask_supervised)."""
        self.rules_ = RuleModel().fit(frame)
        population = frame if unlabelled is None else pl.concat([frame, unlabelled],
                                                               how="diagonal_relaxed")
        self.unsupervised_ = UnsupervisedEnsemble(
            self.features, self.unsupervised_detectors, self.max_fit_rows,
            random_state=self.random_state).fit(population)
        supervised = SupervisedModel(
            self.model_inputs, self.lightgbm_params, self.num_boost_round,
            self.early_stopping_rounds)
        valid_layered = None if valid_frame is None else self.layers(valid_frame)
        if dask_client is None:
            self.supervised_ = supervised.fit(self.layers(frame), labels,
                                              valid_frame=valid_layered,
                                              valid_labels=valid_labels)
        else:
            from detector.models.dask_supervised import fit_supervised_dask

            self.supervised_ = fit_supervised_dask(supervised, self.layers(frame), labels,
                                                   dask_client, valid_frame=valid_layered,
                                                   valid_labels=valid_labels)
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
    """A fitted model with its features, learned statistics and provenance."""

    model: DiversionModel
    feature_names: list[str]
    feature_stats: dict
    reference_version: str
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    scheme_model: SchemeModel | None = None  # None: likely schemes from the rule families

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state, booster_text = self.model.supervised_.to_state()
        (directory / "booster.txt").write_text(booster_text)
        with open(directory / "layers.pkl", "wb") as fh:
            pickle.dump({"rules": self.model.rules_, "unsupervised": self.model.unsupervised_,
                         "params": {k: getattr(self.model, k) for k in (
                             "features", "lightgbm_params", "num_boost_round",
                             "early_stopping_rounds", "unsupervised_detectors",
                             "max_fit_rows", "random_state")}}, fh)
        meta = {
            "bundle_format": BUNDLE_FORMAT,
            "feature_names": self.feature_names,
            "feature_stats": self.feature_stats,
            "reference_version": self.reference_version,
            "supervised": state,
            "config": self.config,
            "metrics": self.metrics,
            "provenance": self.provenance,
        }
        if self.scheme_model is not None:
            meta["scheme"], scheme_text = self.scheme_model.to_state()
            (directory / "scheme_booster.txt").write_text(scheme_text)
        (directory / "bundle.json").write_text(json.dumps(meta, indent=2, default=str))
        return directory

    @classmethod
    def load(cls, directory: str | Path, expected_features: list[str] | None = None):
        """Load a bundle; refuse it when its features differ from ``expected_features``.

        Only load bundles from the project's own registry or directories: the layers
        are pickled.
        """
        directory = Path(directory)
        meta_path = directory / "bundle.json"
        if not meta_path.exists():
            raise InputError(f"{directory}: not a detector model bundle (no bundle.json)")
        meta = json.loads(meta_path.read_text())
        if meta.get("bundle_format") != BUNDLE_FORMAT:
            raise InputError(f"{directory}: bundle format {meta.get('bundle_format')!r}, "
                             f"this detector reads format {BUNDLE_FORMAT}")
        names = meta["feature_names"]
        if expected_features is not None and names != expected_features:
            missing = [f for f in expected_features if f not in names]
            extra = [f for f in names if f not in expected_features]
            raise InputError(
                f"{directory}: the model was trained on different features than this detector "
                f"builds (model lacks {missing[:6]}, model has extra {extra[:6]}); retrain it "
                "with `detector train` or use the detector version it was trained with")
        with open(directory / "layers.pkl", "rb") as fh:
            layers = pickle.load(fh)
        model = DiversionModel(**layers["params"])
        model.rules_ = layers["rules"]
        model.unsupervised_ = layers["unsupervised"]
        model.supervised_ = SupervisedModel.from_state(meta["supervised"],
                                                       (directory / "booster.txt").read_text())
        scheme = None
        if meta.get("scheme") is not None:
            scheme = SchemeModel.from_state(meta["scheme"],
                                            (directory / "scheme_booster.txt").read_text())
        return cls(model, names, meta["feature_stats"], meta["reference_version"],
                   meta.get("config", {}), meta.get("metrics", {}), meta.get("provenance", {}),
                   scheme)

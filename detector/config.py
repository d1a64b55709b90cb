"""Training settings: a validated object loaded from a TOML file (experiments/*.toml)."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from detector.errors import InputError

KNOWN_DETECTORS = ("iforest", "hbos", "loda")
EARLY_STOPPING_METRICS = ("average_precision", "binary_logloss", "auc")


@dataclass(frozen=True)
class SplitSettings:
    fit: float = 0.6  # oldest labelled share: fit the model
    calibrate: float = 0.2  # next share: early stopping and calibration; the rest: metrics


@dataclass(frozen=True)
class UnsupervisedSettings:
    detectors: tuple[str, ...] = KNOWN_DETECTORS
    max_fit_rows: int = 200_000


@dataclass(frozen=True)
class LightGBMSettings:
    learning_rate: float = 0.1
    num_leaves: int = 15
    min_data_in_leaf: int = 10
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    # weight of a positive row; 0 = automatic (negatives / positives, at most 50), for
    # labels where confirmed cases are rare
    scale_pos_weight: float = 0.0
    num_boost_round: int = 250
    early_stopping_rounds: int = 30
    # what early stopping watches on the later slice: average_precision (ranking of the
    # few confirmed cases), binary_logloss (smoother on a small slice; see README
    # "Inspection budget") or auc
    metric: str = "average_precision"
    # weights that balance the schemes among the confirmed diversions of the fit slice
    # (detector.models.supervised.scheme_weights): 0 none, 1 every scheme the same total
    # weight; so that the first confirmed cases of a new scheme count (README "Inspection
    # budget")
    balance_schemes: float = 0.0


@dataclass(frozen=True)
class InputSettings:
    # shipment columns (extra columns of an imported export, or contract columns) taken
    # as model inputs: categorical ones coded by the values seen in training (unseen =
    # missing), numeric ones cast to float (text that is no number = missing)
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    # feature families left out (features.registry.FAMILIES), e.g. for an ablation
    without: tuple[str, ...] = ()


@dataclass(frozen=True)
class DriftSettings:
    """When a scored batch differs enough from the training data to say so (detector.drift).

    Stored with the model, so `score`, `report` and `drift` use the thresholds the model
    was trained with.
    """

    # Population stability index per model input. Credit-scoring rule of thumb: below 0.1
    # stable, 0.1-0.25 moderate, above 0.25 a major shift worth a look.
    psi: float = 0.25
    # PSI of the risk score itself: the same scale; a shifted score distribution moves the
    # review threshold and the queue.
    risk_psi: float = 0.25
    # Share of records to a destination country the training data never held. A new hub is
    # the typical first sign of a new route; a few such records in a batch are already news.
    unseen_destination: float = 0.02
    # Share of shipments under an HS code (6 digits) never seen: misdeclaration moves goods
    # to new headings; some churn is normal.
    unseen_hs_code: float = 0.05
    # Share of shipments whose description names no catalogue chip in a wording never seen:
    # a new chip name or a new way of filing one, which the catalogue must learn.
    unseen_description: float = 0.05
    # Share of records whose consignee or lessee was never seen: new buyers arrive every
    # month (about 10-20% in the simulated world); a jump beyond this is a new population.
    unseen_party: float = 0.35
    # Fewer records than this: figures are shown but raise no alert (too noisy).
    min_records: int = 200


EXPLORE_ORDERS = ("lists", "value")


@dataclass(frozen=True)
class QueueSettings:
    """How the review queue's explore slots are chosen for this model's scores
    (detector.queue; README "Inspection budget"). Stored with the model, so `score`,
    `review` and `report` explore as the model was trained to."""

    # lists: the new-to-the-model and least-sure lists in turn (the default); value: one
    # list by risk x unusualness / familiarity ** 0.25 (diversions likely found where the
    # model learned least; with balance_schemes, experiments/explore_value.toml)
    explore_order: str = "lists"


@dataclass(frozen=True)
class TrainingConfig:
    name: str = "baseline"
    description: str = "default settings"
    seed: int = 0
    split: SplitSettings = field(default_factory=SplitSettings)
    unsupervised: UnsupervisedSettings = field(default_factory=UnsupervisedSettings)
    lightgbm: LightGBMSettings = field(default_factory=LightGBMSettings)
    inputs: InputSettings = field(default_factory=InputSettings)
    drift: DriftSettings = field(default_factory=DriftSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    source: str = "built-in defaults"

    def as_params(self) -> dict:
        """Flat parameters for MLflow (``split.fit``, ``lightgbm.num_leaves``, ...)."""
        flat = {}
        for key, value in asdict(self).items():
            if isinstance(value, dict):
                flat.update({f"{key}.{k}": (",".join(v) if isinstance(v, tuple) else v)
                             for k, v in value.items()})
            else:
                flat[key] = value
        return flat

    def lightgbm_params(self) -> dict:
        lgb = asdict(self.lightgbm)
        lgb.pop("num_boost_round")
        lgb.pop("early_stopping_rounds")
        lgb.pop("balance_schemes")  # row weights, not a LightGBM parameter
        if lgb["scale_pos_weight"] <= 0:  # automatic: SupervisedModel.training_params
            lgb.pop("scale_pos_weight")
        return {**lgb, "seed": self.seed}


_SECTIONS = {"split": SplitSettings, "unsupervised": UnsupervisedSettings,
             "lightgbm": LightGBMSettings, "inputs": InputSettings,
             "drift": DriftSettings, "queue": QueueSettings}


def _build(cls, values: dict, where: str):
    allowed = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise InputError(f"{where}: unknown setting(s) {unknown}; expected {sorted(allowed)}")
    kwargs = {}
    for key, value in values.items():
        default = getattr(cls(), key)
        if isinstance(default, tuple):
            if not isinstance(value, list) or (cls is InputSettings and not all(
                    isinstance(v, str) for v in value)):
                raise InputError(f"{where}.{key}: expected a list"
                                 + (" of column names" if cls is InputSettings else "")
                                 + f", got {value!r}")
            value = tuple(value)
        # bool is an int to Python, not to a reader of the config: `num_leaves = true` is wrong
        elif isinstance(value, bool) != isinstance(default, bool) or not isinstance(
                value, type(default)) and not (isinstance(default, float)
                                               and isinstance(value, int)):
            raise InputError(f"{where}.{key}: expected {type(default).__name__}, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


def read_toml(path: Path, what: str) -> dict:
    """A TOML settings file (``what``: "config file", "mapping file"), or one clear error."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid TOML: {exc}") from None


def load_config(path: str | Path | None) -> TrainingConfig:
    """Read and validate a training config; None gives the built-in defaults."""
    if path is None:
        return TrainingConfig()
    path = Path(path)
    raw = read_toml(path, "config file")
    top = {k: v for k, v in raw.items() if k not in _SECTIONS}
    allowed_top = {"name", "description", "seed"}
    unknown = sorted(set(top) - allowed_top)
    if unknown:
        raise InputError(f"{path}: unknown setting(s) {unknown}; expected sections "
                         f"{sorted(_SECTIONS)} and keys {sorted(allowed_top)}")
    not_tables = [k for k in _SECTIONS if not isinstance(raw.get(k, {}), dict)]
    if not_tables:
        raise InputError(f"{path}: {not_tables} must be table(s) such as [{not_tables[0]}], "
                         f"got {raw[not_tables[0]]!r}")
    sections = {k: _build(cls, raw.get(k, {}), f"{path} [{k}]") for k, cls in _SECTIONS.items()}
    config = _build(TrainingConfig, top, str(path))
    config = TrainingConfig(**{**asdict(config), **sections, "source": str(path)})
    if config.lightgbm.metric not in EARLY_STOPPING_METRICS:
        raise InputError(f"{path} [lightgbm].metric: expected one of "
                         f"{list(EARLY_STOPPING_METRICS)}, got {config.lightgbm.metric!r}")
    if not 0 <= config.lightgbm.balance_schemes <= 1:
        raise InputError(f"{path} [lightgbm].balance_schemes: expected a number from 0 "
                         f"to 1, got {config.lightgbm.balance_schemes!r}")
    if config.queue.explore_order not in EXPLORE_ORDERS:
        raise InputError(f"{path} [queue].explore_order: expected one of "
                         f"{list(EXPLORE_ORDERS)}, got {config.queue.explore_order!r}")
    bad = [d for d in config.unsupervised.detectors if d not in KNOWN_DETECTORS]
    if bad:
        raise InputError(f"{path} [unsupervised].detectors: unknown {bad}; "
                         f"expected some of {list(KNOWN_DETECTORS)}")
    from features.registry import FAMILIES

    bad = [f for f in config.inputs.without if f not in FAMILIES]
    if bad:
        raise InputError(f"{path} [inputs].without: unknown feature families {bad}; expected "
                         f"some of {sorted(FAMILIES)}")
    both = sorted(set(config.inputs.categorical) & set(config.inputs.numeric))
    if both:
        raise InputError(f"{path} [inputs]: {both} named both categorical and numeric")
    if not (0 < config.split.fit < 1 and 0 < config.split.calibrate < 1
            and config.split.fit + config.split.calibrate < 1):
        raise InputError(f"{path} [split]: fit and calibrate must be shares in (0, 1) that "
                         f"leave a test slice; got fit={config.split.fit}, "
                         f"calibrate={config.split.calibrate}")
    return config


def drift_settings(model_config: dict) -> DriftSettings:
    """The drift thresholds a model was trained with (its flat ``drift.*`` parameters);
    the defaults for a model trained before they existed."""
    values = {f.name: model_config[f"drift.{f.name}"] for f in fields(DriftSettings)
              if f"drift.{f.name}" in model_config}
    return DriftSettings(**{k: type(getattr(DriftSettings(), k))(v) for k, v in values.items()})


def explore_order(model_config: dict) -> str:
    """The queue's explore order a model was trained with (its flat ``queue.explore_order``
    parameter); the default for a model trained before it existed."""
    return str(model_config.get("queue.explore_order", QueueSettings().explore_order))

"""Experiment tracking and the model registry (the only module that imports mlflow).

Embedded default: a SQLite store and an artifact folder under ``$DETECTOR_HOME``
(default ``./.detector``), addressed by absolute path so the working directory does
not matter. ``MLFLOW_TRACKING_URI`` (e.g. an ``mlflow server`` with PostgreSQL behind
it) takes precedence.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import polars as pl
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from detector.contract import write_table
from detector.errors import EnvironmentFailure, InputError

DEFAULT_MODEL_NAME = "chip-diversion"
DEFAULT_MODEL_URI = f"models:/{DEFAULT_MODEL_NAME}@champion"
CHAMPION = "champion"
MODEL_ARTIFACT = "model"
BUNDLE_ARTIFACT = "bundle"


def detector_home() -> Path:
    return Path(os.environ.get("DETECTOR_HOME", ".detector")).expanduser().resolve()


# mlflow.set_tracking_uri() also exports MLFLOW_TRACKING_URI; remember what we set so
# that our own export is not mistaken for the user's choice.
_uri_set_by_us: str | None = None


def _user_uri() -> str | None:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri if uri and uri != _uri_set_by_us else None


def tracking_uri() -> str:
    return _user_uri() or f"sqlite:///{detector_home() / 'mlflow.db'}"


def _embedded() -> bool:
    return _user_uri() is None


def _client() -> MlflowClient:
    uri = tracking_uri()
    try:
        if _embedded():
            detector_home().mkdir(parents=True, exist_ok=True)
        global _uri_set_by_us
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        _uri_set_by_us = uri
        client = MlflowClient(uri, uri)
        client.search_experiments(max_results=1)  # reach the store now, not mid-run
        return client
    except MlflowException as exc:
        raise EnvironmentFailure(f"tracking store {uri} unusable: {_short(exc)}") from exc
    except OSError as exc:
        raise EnvironmentFailure(f"tracking store {uri} unusable: {exc}") from exc


_METRIC_UNSAFE = re.compile(r"[^A-Za-z0-9_.\- ]+")
_METRIC_MAX = 200  # MLflow allows 250 characters


def metric_key(name: str) -> str:
    """``name`` as an MLflow metric name: characters MLflow refuses (any non-ASCII, ``+``,
    ``/``, ``:`` ...) become ``_``, and a name that had to change (or was too long) ends in
    a short hash of the original, so two typologies never share a metric."""
    safe = _METRIC_UNSAFE.sub("_", name).strip()
    if safe == name and len(name) <= _METRIC_MAX:
        return name
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]
    return f"{safe[:_METRIC_MAX - 9]}-{digest}"


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _experiment_id(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = (detector_home() / "artifacts" / name).as_uri() if _embedded() else None
    return client.create_experiment(name, artifact_location=location)


class DiversionPyfunc(mlflow.pyfunc.PythonModel):
    """The whole pipeline as one MLflow model: shipments in, scores out.

    ``mlflow.pyfunc.load_model("models:/chip-diversion@champion").predict(shipments)``
    takes a pandas frame of contract shipment columns and returns the
    contract's scores table (parties resolved by name only; the shipped screening
    list unless the bundle's directory holds another).
    """

    def load_context(self, context):
        from detector.scoring import load_bundle_dir

        self.bundle = load_bundle_dir(Path(context.artifacts[BUNDLE_ARTIFACT]))
        # The version number does not exist yet when the model is logged: name the run.
        config = context.model_config or {}
        self.label = f"{config.get('model_name', 'model')} (run {config.get('run_id', '?')})"

    def predict(self, context, model_input: pd.DataFrame, params=None):
        from detector.scoring import score_shipments_frame

        frame = pl.from_pandas(model_input)
        return score_shipments_frame(frame, self.bundle, self.label).to_pandas()


@dataclass
class RegisteredRun:
    run_id: str
    name: str
    version: int
    champion: bool
    experiment: str


def log_training_run(*, experiment: str, model_name: str, bundle_dir: Path, params: dict,
                     metrics: dict, tags: dict, artifacts: dict[str, Path],
                     tables: dict[str, pl.DataFrame]) -> RegisteredRun:
    """Log one training run, register a model version, make the first one champion."""
    client = _client()
    exp_id = _experiment_id(client, experiment)
    try:
        with mlflow.start_run(experiment_id=exp_id) as run:
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            mlflow.log_metrics({metric_key(k): float(v) for k, v in metrics.items()
                                if v is not None and v == v})
            mlflow.set_tags(tags)
            for path in artifacts.values():
                mlflow.log_artifact(str(path), artifact_path="evaluation")
            with tempfile.TemporaryDirectory() as tmp:
                for name, table in tables.items():
                    p = Path(tmp) / f"{name}.csv"
                    write_table(table, p)  # formula-safe, like every CSV we write
                    mlflow.log_artifact(str(p), artifact_path="evaluation")
            logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)  # the pickling notice
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT,
                python_model=DiversionPyfunc(),
                artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
                model_config={"model_name": model_name, "run_id": run.info.run_id},
                pip_requirements=["detector"],
            )
            version = mlflow.register_model(info.model_uri, model_name)
        number = int(version.version)
        champion = False
        try:
            client.get_model_version_by_alias(model_name, CHAMPION)
        except MlflowException:
            client.set_registered_model_alias(model_name, CHAMPION, str(number))
            champion = True
        return RegisteredRun(run.info.run_id, model_name, number, champion, experiment)
    except MlflowException as exc:
        raise EnvironmentFailure(f"tracking store {tracking_uri()}: {_short(exc)}") from exc


@dataclass
class ResolvedModel:
    bundle_dir: Path
    label: str  # NAME/VERSION, or the directory for a local bundle
    name: str | None = None
    version: int | None = None
    run_id: str | None = None


def _bundle_in(path: Path) -> Path | None:
    for candidate in (path, path / "artifacts" / BUNDLE_ARTIFACT):
        if (candidate / "bundle.json").exists():
            return candidate
    return None


def resolve_model(uri: str | None) -> ResolvedModel | None:
    """Where the bundle for ``uri`` is; None when the default alias does not exist yet.

    An explicit URI that cannot be loaded is an error, never a silent fallback.
    """
    explicit = uri is not None
    uri = uri or DEFAULT_MODEL_URI
    local = Path(uri)
    if not uri.startswith(("models:/", "runs:/")):
        found = _bundle_in(local) if local.exists() else None
        if found is None:
            raise InputError(f"--model {uri}: not a model URI (models:/NAME@ALIAS, "
                             "models:/NAME/VERSION, runs:/RUN_ID/PATH) nor a directory "
                             "holding a detector model bundle")
        return ResolvedModel(found, str(local))
    client = _client()
    name = version = run_id = None
    try:
        if uri.startswith("models:/"):
            rest = uri[len("models:/"):]
            if "@" in rest:
                name, alias = rest.split("@", 1)
                mv = client.get_model_version_by_alias(name, alias)
            else:
                name, _, number = rest.partition("/")
                mv = client.get_model_version(name, number)
            version, run_id = int(mv.version), mv.run_id
        local_path = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri
                          if not uri.startswith("models:/") else f"models:/{name}/{version}"))
    except MlflowException as exc:
        if not explicit and ("RESOURCE_DOES_NOT_EXIST" in str(exc.error_code)
                             or "not found" in str(exc).lower()
                             or "does not exist" in str(exc).lower()):
            return None
        raise InputError(f"--model {uri}: cannot be loaded from {tracking_uri()}: "
                         f"{_short(exc)}") from exc
    found = _bundle_in(local_path)
    if found is None:
        raise InputError(f"--model {uri}: holds no detector model bundle")
    label = f"{name}/{version}" if name else uri
    return ResolvedModel(found, label, name, version, run_id)


def model_versions(name: str = DEFAULT_MODEL_NAME) -> list[dict]:
    """Registered versions with their run's key metrics, newest first."""
    client = _client()
    try:
        versions = client.search_model_versions(f"name='{name}'")
        try:
            champion = int(client.get_model_version_by_alias(name, CHAMPION).version)
        except MlflowException:
            champion = None
        rows = []
        for mv in versions:
            run = client.get_run(mv.run_id) if mv.run_id else None
            rows.append({
                "version": int(mv.version),
                "champion": int(mv.version) == champion,
                "run_id": mv.run_id,
                "created": mv.creation_timestamp,
                "metrics": dict(run.data.metrics) if run else {},
                "tags": dict(run.data.tags) if run else {},
            })
    except MlflowException as exc:
        raise EnvironmentFailure(f"tracking store {tracking_uri()}: {_short(exc)}") from exc
    return sorted(rows, key=lambda r: -r["version"])


def promote(name: str, version: int | None = None, run_id: str | None = None) -> int:
    """Point the champion alias at a version (given directly or by its run)."""
    client = _client()
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException as exc:
        raise EnvironmentFailure(f"tracking store {tracking_uri()}: {_short(exc)}") from exc
    if not versions:
        raise InputError(f"no registered model named {name!r} in {tracking_uri()}")
    if run_id is not None:
        match = [mv for mv in versions if mv.run_id == run_id]
        if not match:
            raise InputError(f"run {run_id} registered no version of {name!r}")
        version = int(match[0].version)
    if version not in {int(mv.version) for mv in versions}:
        known = sorted(int(mv.version) for mv in versions)
        raise InputError(f"{name!r} has no version {version}; versions: {known}")
    client.set_registered_model_alias(name, CHAMPION, str(version))
    return version


def run_info(run_id: str) -> dict:
    """Metrics and tags of one run (for reports)."""
    client = _client()
    run = client.get_run(run_id)
    return {"metrics": dict(run.data.metrics), "tags": dict(run.data.tags),
            "params": dict(run.data.params)}

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

from detector.errors import EnvironmentFailure, InputError
from detector.files import checkpoint
from detector.modelref import BUNDLE_ARTIFACT, bundle_in, is_registry_uri, local_bundle
from detector.settings import (
    CHAMPION,
    DEFAULT_MODEL_NAME,
    DEFAULT_MODEL_URI,
    TRACKING_URI_ENV,
    detector_home,
)
from detector.tables import write_table

MODEL_ARTIFACT = "model"


# mlflow.set_tracking_uri() also exports MLFLOW_TRACKING_URI; remember what we set so
# that our own export is not mistaken for the user's choice.
_uri_set_by_us: str | None = None


def _user_uri() -> str | None:
    uri = os.environ.get(TRACKING_URI_ENV)
    return uri if uri and uri != _uri_set_by_us else None


def tracking_uri() -> str:
    return _user_uri() or f"sqlite:///{detector_home() / 'mlflow.db'}"


def _embedded() -> bool:
    return _user_uri() is None


# How long a command waits for another process that is creating or migrating the
# embedded store before it gives up with "locked" (exit 3).
STORE_LOCK_TIMEOUT_S = 300


def _store_lock():
    """A file lock beside the embedded store: its first use (MLflow creates and migrates
    the schema then) is one process at a time; a shared server needs none."""
    from contextlib import nullcontext

    from filelock import FileLock

    if not _embedded():
        return nullcontext()
    return FileLock(str(detector_home() / ".store.lock"), timeout=STORE_LOCK_TIMEOUT_S)


# A tracking server that cannot be reached must fail a command within seconds, not after
# MLflow's defaults (7 retries with exponential backoff, 120 s per request: minutes). Set
# for the command unless the user set them: one retry, 1 s backoff (0.5 s jitter), 10 s
# per request. The first request (the reachability check) retries once at once and waits
# 3 s per try: a refused connection fails in well under a second and a silent server in
# about 6 s, plus the start-up of the command.
HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
PROBE_SETTINGS = {"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
                  "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}


def _apply_http_settings() -> None:
    for key, value in HTTP_SETTINGS.items():
        os.environ.setdefault(key, value)


def _client() -> MlflowClient:
    from filelock import Timeout

    uri = tracking_uri()
    try:
        if _embedded():
            detector_home().mkdir(parents=True, exist_ok=True)
        elif uri.startswith(("http://", "https://")):
            _apply_http_settings()
        global _uri_set_by_us
        embedded = _embedded()
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        # only the embedded store's URI is ours: the user's own URI, re-exported by
        # mlflow, must still read as the user's on the next call (or it would fall back
        # to the embedded store)
        _uri_set_by_us = uri if embedded else None
        with _store_lock():
            client = MlflowClient(uri, uri)
            _probe(client, uri)  # reach the store now, not mid-run
        return client
    except Timeout:
        raise EnvironmentFailure(f"tracking store {uri} is locked: another detector process "
                                 f"has held {detector_home() / '.store.lock'} for "
                                 f"{STORE_LOCK_TIMEOUT_S} s") from None
    except MlflowException as exc:
        raise EnvironmentFailure(f"tracking store {uri} unusable: {_short(exc)}") from exc
    except OSError as exc:
        raise EnvironmentFailure(f"tracking store {uri} unusable: {exc}") from exc


def _probe(client: MlflowClient, uri: str) -> None:
    """One cheap request; against a server, with the short PROBE_SETTINGS where the
    settings are ours (restored afterwards)."""
    ours = {}
    if uri.startswith(("http://", "https://")):
        ours = {k: v for k, v in PROBE_SETTINGS.items() if os.environ.get(k) == HTTP_SETTINGS[k]}
    os.environ.update(ours)
    try:
        client.search_experiments(max_results=1)
    finally:
        os.environ.update({k: HTTP_SETTINGS[k] for k in ours})


def use_store() -> str:
    """Point MLflow at the store every detector command uses and return its URI.

    ``MLFLOW_TRACKING_URI`` when set, else the embedded SQLite store under
    ``$DETECTOR_HOME`` (default ``./.detector``). Call it before
    ``mlflow.pyfunc.load_model("models:/...")`` in your own code: MLflow's own default
    is ``./mlflow.db`` in the working directory, which it would create empty.
    """
    _client()
    return tracking_uri()


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
        from detector.engine import LoadedModel
        from detector.models.ensemble import load_bundle
        from detector.reference import (
            default_screening_list_path,
            load_reference,
            read_screening_list,
        )

        bundle = load_bundle(Path(context.artifacts[BUNDLE_ARTIFACT]))
        # The version number does not exist yet when the model is logged: the registry
        # it was loaded from names it (NAME/VERSION, as `detector score` writes), else
        # the run does.
        config = context.model_config or {}
        name, run_id = config.get("model_name", "model"), config.get("run_id")
        label = _registered_label(name, run_id) if run_id else None
        self.model = LoadedModel(bundle, label or f"{name} (run {run_id or '?'})")
        self.screening_list = read_screening_list(default_screening_list_path())
        self.reference = load_reference()

    def predict(self, context, model_input: pd.DataFrame, params=None):
        from detector.engine import score_shipments

        frame = pl.from_pandas(model_input)
        return score_shipments(frame, self.model, self.screening_list,
                               self.reference).to_pandas()


def _registered_label(model_name: str, run_id: str) -> str | None:
    """``NAME/VERSION`` of the registered version that ``run_id`` logged, from the
    registry MLflow is pointed at (`use_store`); ``model_name``'s version first when the
    run was registered under several names. None when there is none or no registry to
    ask: an embedded store that does not exist is not created (MLflow would create it
    empty, in the working directory by default), and a failing registry is no reason
    to refuse to score."""
    uri = mlflow.get_registry_uri()
    if uri.startswith("sqlite:///"):
        if not Path(uri.removeprefix("sqlite:///")).is_file():
            return None
    elif not uri.startswith(("http://", "https://")):
        return None
    try:
        versions = MlflowClient(mlflow.get_tracking_uri(), uri).search_model_versions(
            f"run_id = '{run_id}'")
    except Exception:  # noqa: BLE001 - the label falls back to the run
        return None
    found = sorted((mv.name != model_name, mv.name, int(mv.version)) for mv in versions)
    return f"{found[0][1]}/{found[0][2]}" if found else None


@dataclass
class RegisteredRun:
    run_id: str
    name: str
    version: int
    champion: bool
    experiment: str


def log_training_run(*, experiment: str, model_name: str, bundle_dir: Path, params: dict,
                     metrics: dict, tags: dict, artifacts: dict[str, Path],
                     tables: dict[str, pl.DataFrame], summary: str = "") -> RegisteredRun:
    """Log one training run, register a model version, make the first one champion.

    Each step can be interrupted (a killed process) without leaving the registry wrong:
    a run left RUNNING is closed as FAILED by the next training (and shown as failed by
    `detector models`); the version is registered only after its run finished; and a
    name whose versions have no champion (the alias step never ran) gets its first
    version as champion here, as if that step had finished.
    """
    from filelock import Timeout

    client = _client()
    try:
        with _store_lock():  # two first trainings must not both create the experiment
            exp_id = _experiment_id(client, experiment)
        close_interrupted_runs(client)
        with mlflow.start_run(experiment_id=exp_id, tags=_process_tags()) as run:
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
            checkpoint("train:logged")
        with _store_lock():  # versions and the alias: one process at a time
            version = mlflow.register_model(info.model_uri, model_name)
            number = int(version.version)
            client.update_model_version(model_name, str(number),
                                        description=f"{model_name} version {number}: {summary}")
            checkpoint("train:registered")
            champion = _ensure_champion(client, model_name) == number
        return RegisteredRun(run.info.run_id, model_name, number, champion, experiment)
    except Timeout:
        raise EnvironmentFailure(f"tracking store {tracking_uri()} is locked by another "
                                 "detector process") from None
    except MlflowException as exc:
        raise EnvironmentFailure(f"tracking store {tracking_uri()}: {_short(exc)}") from exc


def _ensure_champion(client: MlflowClient, name: str) -> int:
    """The champion version of ``name``; where none is set, its first version becomes it."""
    try:
        return int(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        first = min(int(mv.version) for mv in client.search_model_versions(f"name='{name}'"))
        client.set_registered_model_alias(name, CHAMPION, str(first))
        return first


_PID_TAG = "detector.pid"
_HOST_TAG = "detector.host"


def _process_tags() -> dict[str, str]:
    import socket

    return {_PID_TAG: str(os.getpid()), _HOST_TAG: socket.gethostname()}


def _process_gone(run) -> bool:
    """A RUNNING run started by a detector process on this machine that no longer exists."""
    import socket

    from detector.files import pid_alive

    tags = run.data.tags
    if tags.get(_HOST_TAG) != socket.gethostname() or not tags.get(_PID_TAG, "").isdigit():
        return False
    return not pid_alive(int(tags[_PID_TAG]))


def interrupted_runs(client: MlflowClient | None = None) -> list:
    """Runs still RUNNING whose detector process is gone (killed): failed in fact."""
    client = client or _client()
    try:
        experiments = [e.experiment_id for e in client.search_experiments()]
        if not experiments:
            return []
        running = client.search_runs(experiments, "attributes.status = 'RUNNING'",
                                     max_results=1000)
    except MlflowException as exc:
        raise EnvironmentFailure(f"tracking store {tracking_uri()}: {_short(exc)}") from exc
    return [r for r in running if _process_gone(r)]


def interrupted_run_rows() -> list[dict]:
    """`interrupted_runs` as rows for `detector models`: run id and start time (UTC)."""
    from datetime import datetime, timezone

    return [{"run_id": r.info.run_id,
             "started": datetime.fromtimestamp(r.info.start_time / 1000, timezone.utc)
             .strftime("%Y-%m-%d %H:%M:%S UTC")} for r in interrupted_runs()]


def close_interrupted_runs(client: MlflowClient) -> list[str]:
    """Mark runs of killed processes FAILED (they never finished); their ids."""
    closed = []
    for run in interrupted_runs(client):
        try:
            client.set_tag(run.info.run_id, "detector.interrupted", "process gone; closed as "
                           "FAILED by a later training")
            client.set_terminated(run.info.run_id, "FAILED")
            closed.append(run.info.run_id)
        except MlflowException:
            pass  # another process closed it first
    return closed


@dataclass
class ResolvedModel:
    bundle_dir: Path
    label: str  # NAME/VERSION, or the directory for a local bundle
    name: str | None = None
    version: int | None = None
    run_id: str | None = None


def resolve_model(uri: str | None) -> ResolvedModel | None:
    """Where the bundle for ``uri`` is; None when the default alias does not exist yet.

    An explicit URI that cannot be loaded is an error, never a silent fallback.
    """
    explicit = uri is not None
    uri = uri or DEFAULT_MODEL_URI
    if not is_registry_uri(uri):
        return ResolvedModel(local_bundle(uri), str(Path(uri)))
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
    found = bundle_in(local_path)
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


def find_version(name: str, version: int | None = None, run_id: str | None = None) -> int:
    """The registered version number given directly or by the run that registered it."""
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
    return version


def champion_version(name: str) -> int | None:
    """The version the champion alias points at; None when there is none."""
    client = _client()
    try:
        return int(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


CHAMPION_HISTORY_TAG = "champion_history"  # registered-model tag: JSON list, oldest first


def champion_history(name: str) -> list[int]:
    """Versions that were champion, oldest first (the current one last)."""
    import json

    client = _client()
    try:
        tags = client.get_registered_model(name).tags
    except MlflowException as exc:
        raise InputError(f"no registered model named {name!r} in {tracking_uri()}") from exc
    history = json.loads(tags.get(CHAMPION_HISTORY_TAG, "[]"))
    current = champion_version(name)
    if current is not None and (not history or history[-1] != current):
        history.append(current)  # a champion set before the history was kept
    return history


def promote(name: str, version: int | None = None, run_id: str | None = None, *,
            record: dict | None = None) -> int:
    """Point the champion alias at a version (given directly or by its run).

    ``record`` (how it was decided: compared, forced, rolled back, by whom and why) is
    kept as tags on the version and as a run in the experiment ``NAME-promotions``.
    """
    import getpass
    import json
    from datetime import datetime, timezone

    version = find_version(name, version, run_id)
    client = _client()
    try:
        history = champion_history(name)
        previous = history[-1] if history else None
        client.set_registered_model_alias(name, CHAMPION, str(version))
        if previous != version:
            history.append(version)
        client.set_registered_model_tag(name, CHAMPION_HISTORY_TAG, json.dumps(history[-50:]))
        note = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "user": getpass.getuser(), "previous_champion": previous,
                **(record or {})}
        for key, value in note.items():
            client.set_model_version_tag(name, str(version), f"promotion.{key}", str(value)[:5000])
        exp_id = _experiment_id(client, f"{name}-promotions")
        run = client.create_run(exp_id, run_name=f"{name} v{version} champion",
                                tags={"model_name": name, "version": str(version),
                                      **{k: str(v)[:5000] for k, v in note.items()}})
        client.set_terminated(run.info.run_id)
    except MlflowException as exc:
        raise EnvironmentFailure(f"tracking store {tracking_uri()}: {_short(exc)}") from exc
    return version


def resolve_reference(ref: str, name: str = DEFAULT_MODEL_NAME) -> ResolvedModel:
    """A model named as a version number, an alias, a run id, a URI or a bundle directory."""
    import re

    if ref.startswith(("models:/", "runs:/")) or Path(ref).is_dir():
        return resolve_model(ref)
    if ref.isdigit():
        return resolve_model(f"models:/{name}/{int(ref)}")
    if re.fullmatch(r"[0-9a-f]{32}", ref):
        client = _client()
        try:
            match = client.search_model_versions(f"name='{name}' and run_id='{ref}'")
        except MlflowException:
            match = []
        if match:
            return resolve_model(f"models:/{name}/{match[0].version}")
        resolved = resolve_model(f"runs:/{ref}/{MODEL_ARTIFACT}")
        resolved.run_id = ref
        return resolved
    return resolve_model(f"models:/{name}@{ref}")


def log_comparison(*, experiment: str, params: dict, metrics: dict, tags: dict,
                   tables: dict[str, pl.DataFrame]) -> str:
    """One run holding a model comparison; its id."""
    client = _client()
    exp_id = _experiment_id(client, experiment)
    try:
        with mlflow.start_run(experiment_id=exp_id) as run:
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            mlflow.log_metrics({metric_key(k): float(v) for k, v in metrics.items()
                                if v is not None and v == v})
            mlflow.set_tags({k: str(v)[:5000] for k, v in tags.items()})
            with tempfile.TemporaryDirectory() as tmp:
                for name, table in tables.items():
                    path = Path(tmp) / f"{name}.csv"
                    table.write_csv(path)
                    mlflow.log_artifact(str(path), artifact_path="comparison")
        return run.info.run_id
    except MlflowException as exc:
        raise EnvironmentFailure(f"tracking store {tracking_uri()}: {_short(exc)}") from exc


def log_figures(*, experiment: str, run_name: str, metrics: dict, tags: dict) -> str:
    """A small run holding figures (drift checks); its id."""
    client = _client()
    exp_id = _experiment_id(client, experiment)
    try:
        run = client.create_run(exp_id, run_name=run_name,
                                tags={k: str(v)[:5000] for k, v in tags.items()})
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(metric_key(key), float(v), now, 0) for key, v in metrics.items()
                 if v is not None and v == v]
        for start in range(0, len(batch), 900):  # the store takes up to 1000 per call
            client.log_batch(run.info.run_id, metrics=batch[start:start + 900])
        client.set_terminated(run.info.run_id)
        return run.info.run_id
    except MlflowException as exc:
        raise EnvironmentFailure(f"tracking store {tracking_uri()}: {_short(exc)}") from exc


def run_info(run_id: str) -> dict:
    """Metrics and tags of one run (for reports)."""
    client = _client()
    run = client.get_run(run_id)
    return {"metrics": dict(run.data.metrics), "tags": dict(run.data.tags),
            "params": dict(run.data.params)}

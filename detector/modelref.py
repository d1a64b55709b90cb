"""What a ``--model`` reference points at, for the references that need no tracking
store: a local directory written by the project. Kept apart from detector.tracking so
that scoring with a local bundle does not import mlflow (seconds at every start)."""

from __future__ import annotations

from pathlib import Path

from detector.errors import InputError

BUNDLE_ARTIFACT = "bundle"  # the bundle's folder inside a logged MLflow model
REGISTRY_SCHEMES = ("models:/", "runs:/")


def is_registry_uri(uri: str) -> bool:
    return uri.startswith(REGISTRY_SCHEMES)


def bundle_in(path: Path) -> Path | None:
    """The bundle directory at ``path``: itself, or inside a downloaded MLflow model."""
    for candidate in (path, path / "artifacts" / BUNDLE_ARTIFACT):
        if (candidate / "bundle.json").exists():
            return candidate
    return None


def local_bundle(uri: str) -> Path:
    """The bundle directory a local ``--model`` names; an error when there is none."""
    local = Path(uri)
    found = bundle_in(local) if local.exists() else None
    if found is None:
        raise InputError(f"--model {uri}: not a model URI (models:/NAME@ALIAS, "
                         "models:/NAME/VERSION, runs:/RUN_ID/PATH) nor a directory "
                         "holding a detector model bundle")
    return found

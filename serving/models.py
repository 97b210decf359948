"""The models the service answers with, loaded by MLflow alias, with a local fallback copy.

MLflow is used only here, to resolve an alias to a version and fetch that version's files; the
request path then works on the plain arrays (a generic pyfunc call costs about ten times a
direct lookup). Every successful load is copied to ``<data_dir>/serving-cache/`` with a small
manifest, so that a service started while the registry is unreachable still comes up — on the
last models it loaded, and saying so.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from features.settings import Settings
from training.artifacts import IDS_FILE, PROPENSITY_FILE, RECOMMENDER_FILE
from training.propensity.model import PropensityModel
from training.tracking import Bundle, configure, load_bundle

log = logging.getLogger("nextbest.serving")


class RegistryUnavailable(RuntimeError):
    """The registry could not be read, and there is no cached copy to fall back on."""


@dataclass(frozen=True)
class LoadedModels:
    """One consistent set of models; replaced whole, never mutated, so requests never mix."""

    recommender: Bundle
    versions: dict[str, str]
    propensity: PropensityModel | None = None
    source: str = "registry"
    """'registry', or 'cache' when the registry was unreachable at load time."""
    detail: str = ""
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    offer: PropensityModel | None = None
    """The offer-response model (P(redeem | shown)), when one is registered under the alias."""


def offer_model_name(settings: Settings) -> str:
    return f"{settings.propensity_name}-offer"


def resolve_versions(settings: Settings, alias: str) -> dict[str, str]:
    """The version each registered model's alias points at now (models without it are left out)."""
    client = MlflowClient()
    versions = {}
    for name in (settings.recommender_name, settings.propensity_name, offer_model_name(settings)):
        try:
            versions[name] = str(client.get_model_version_by_alias(name, alias).version)
        except MlflowException as error:
            if error.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
    return versions


def load_models(settings: Settings, alias: str = "champion") -> LoadedModels:
    """Load the aliased versions from the registry, or the cached copy if it is unreachable."""
    _fail_fast_when_unreachable()
    cache = settings.data_dir / "serving-cache"
    try:
        configure(settings)
        versions = resolve_versions(settings, alias)
        if settings.recommender_name not in versions:
            raise RegistryUnavailable(
                f"registered model '{settings.recommender_name}' has no '{alias}' version; train "
                "one with 'nextbest train recommender'")
        for name, version in versions.items():
            _fetch(name, version, alias, cache)
        _write_manifest(cache, versions)
        return _read(settings, cache, versions, "registry", "")
    except (MlflowException, OSError) as error:
        manifest = cache / "manifest.json"
        if not manifest.exists():
            raise RegistryUnavailable(
                f"the model registry at {settings.resolved_tracking_uri()} is unreachable "
                f"({type(error).__name__}: {error}) and no cached models exist in {cache}") from None
        versions = json.loads(manifest.read_text())["versions"]
        detail = (f"registry unreachable ({type(error).__name__}); serving cached versions "
                  f"{versions}")
        log.warning(detail)
        return _read(settings, cache, versions, "cache", detail)


def _fetch(name: str, version: str, alias: str, cache: Path) -> Path:
    target = cache / name / version
    if target.exists():
        return target
    downloaded = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}"))
    staging = cache / name / f".{version}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(downloaded / "artifacts", staging)
    os.replace(staging, target)  # a half-copied version is never visible
    return target


def _write_manifest(cache: Path, versions: dict[str, str]) -> None:
    temporary = cache / ".manifest.json.partial"
    temporary.write_text(json.dumps({"versions": versions,
                                     "written_at": datetime.now(UTC).isoformat()}))
    os.replace(temporary, cache / "manifest.json")


def _read(settings: Settings, cache: Path, versions: dict[str, str], source: str,
          detail: str) -> LoadedModels:
    recommender_dir = cache / settings.recommender_name / versions[settings.recommender_name]
    bundle = load_bundle(recommender_dir / RECOMMENDER_FILE, recommender_dir / IDS_FILE,
                         recommender_dir)
    propensity, offer = None, None
    if settings.propensity_name in versions:
        path = cache / settings.propensity_name / versions[settings.propensity_name]
        propensity = PropensityModel.load(path / PROPENSITY_FILE)
    if offer_model_name(settings) in versions:
        path = cache / offer_model_name(settings) / versions[offer_model_name(settings)]
        offer = PropensityModel.load(path / PROPENSITY_FILE)
    return LoadedModels(bundle, dict(versions), propensity, source, detail, offer=offer)


def _fail_fast_when_unreachable() -> None:
    """MLflow retries an unreachable server for minutes by default; a service should not."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")

"""The models the service answers with, loaded by MLflow alias, with a local copy to fall back on.

MLflow is used only here, to resolve an alias to a version and fetch that version's files; the
request path then works on the plain arrays (a generic pyfunc call costs about ten times a
direct lookup).

The local copy (``<data_dir>/serving-cache/``, :class:`ModelCache`) is what a service starts
from when the registry is unreachable, so it must never hold anything but models that worked:

* each version is downloaded aside, with the recommender's arrays unpacked one per file for
  the workers to map (``training.artifacts.MAPPED_DIR``) and a checksum of every file, and
  renamed into place whole; a cached version whose files no longer match their checksums is
  fetched again;
* the manifest names the *last good* set of versions, and is written only after those versions
  loaded and answered the smoke check (``remember_good``);
* a set that fails to load or to answer is remembered as refused, with the reason
  (``refuse``): start-up and the alias poller do not try it again — they serve the last good
  set and say why — until a person asks (``admin_reload``), e.g. after repairing the artifact.

Before, the manifest named a new version as soon as its files were copied, and any directory
that existed was trusted: one corrupt version made every later start crash-loop, with or
without the registry, though the good previous version was still in the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from features.settings import Settings
from training.artifacts import (
    IDS_FILE,
    MAPPED_DIR,
    PROPENSITY_FILE,
    RECOMMENDER_FILE,
    unpack_arrays,
)
from training.propensity.model import PropensityModel
from training.tracking import Bundle, configure, load_bundle

log = logging.getLogger("nextbest.serving")
CHECKSUMS = "checksums.json"


class RegistryUnavailable(RuntimeError):
    """The registry could not be read, and there is no good cached copy to fall back on."""


class VersionsRefused(RuntimeError):
    """The versions the alias names were refused (now or before); the message says why."""

    def __init__(self, versions: dict[str, str], reason: str) -> None:
        super().__init__(reason)
        self.versions = versions


@dataclass(frozen=True)
class LoadedModels:
    """One consistent set of models; replaced whole, never mutated, so requests never mix."""

    recommender: Bundle
    versions: dict[str, str]
    propensity: PropensityModel | None = None
    source: str = "registry"
    """'registry', or 'cache' when loaded from the last good copy."""
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


class ModelCache:
    """Verified copies of model versions, the last good set, and the sets refused."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.data_dir / "serving-cache"

    # ------------------------------------------------------------------ versions
    def fetch(self, name: str, version: str) -> Path:
        """The version's files, downloaded unless a verified copy is cached."""
        target = self.root / name / version
        if target.exists():
            if self.verified(target):
                return target
            log.warning("cached %s version %s does not match its checksums; fetching it again",
                        name, version)
            shutil.rmtree(target)
        downloaded = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}"))
        # Staged under a name of this process's own: API pods on a shared volume fetch the same
        # version at the same moment, and each must neither clear nor publish another's copy.
        staging = self.root / name / f".{version}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
        shutil.copytree(downloaded / "artifacts", staging)
        if (staging / RECOMMENDER_FILE).exists():  # mapped by every worker, not read by each
            try:
                unpack_arrays(staging / RECOMMENDER_FILE, staging / MAPPED_DIR)
            except Exception:  # noqa: BLE001 - a corrupt artifact: loading it (read) says so
                shutil.rmtree(staging / MAPPED_DIR, ignore_errors=True)  # and refuses it
        _write_json(staging / CHECKSUMS, _checksums(staging))
        try:
            os.rename(staging, target)  # a half-copied version is never visible
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not self.verified(target):  # not another process's complete copy: a real error
                raise
        return target

    def verified(self, directory: Path) -> bool:
        try:
            recorded = json.loads((directory / CHECKSUMS).read_text())
        except (OSError, ValueError):
            return False
        return recorded == _checksums(directory)

    def read(self, versions: dict[str, str], source: str, detail: str = "",
             verify: bool = True) -> LoadedModels:
        """Load the cached versions (each verified first, unless just fetched)."""
        for name, version in versions.items():
            if verify and not self.verified(self.root / name / version):
                raise VersionsRefused(versions, f"the cached copy of {name} version {version} is "
                                                "missing or does not match its checksums")
        settings = self.settings
        recommender_dir = self.root / settings.recommender_name / versions[settings.recommender_name]
        bundle = load_bundle(recommender_dir / RECOMMENDER_FILE, recommender_dir / IDS_FILE,
                             recommender_dir)
        propensity, offer = None, None
        if settings.propensity_name in versions:
            path = self.root / settings.propensity_name / versions[settings.propensity_name]
            propensity = PropensityModel.load(path / PROPENSITY_FILE)
        if offer_model_name(settings) in versions:
            path = self.root / offer_model_name(settings) / versions[offer_model_name(settings)]
            offer = PropensityModel.load(path / PROPENSITY_FILE)
        return LoadedModels(bundle, dict(versions), propensity, source, detail, offer=offer)

    # ------------------------------------------------------------------ good and refused sets
    def last_good(self) -> dict[str, str] | None:
        try:
            return json.loads((self.root / "manifest.json").read_text())["versions"]
        except (OSError, ValueError, KeyError):
            return None

    def remember_good(self, versions: dict[str, str]) -> None:
        """Name ``versions`` as the set to fall back on (they loaded and answered)."""
        _write_json(self.root / "manifest.json",
                    {"versions": versions, "written_at": datetime.now(UTC).isoformat()})

    def refused(self, versions: dict[str, str]) -> str | None:
        """Why this set was refused before, or None."""
        return self._refusals().get(_key(versions), {}).get("reason")

    def refuse(self, versions: dict[str, str], reason: str) -> None:
        refusals = self._refusals()
        refusals[_key(versions)] = {"versions": versions, "reason": reason,
                                    "at": datetime.now(UTC).isoformat(timespec="seconds")}
        _write_json(self.root / "refused.json", refusals)

    def forget_refusal(self, versions: dict[str, str]) -> None:
        """Try a refused set again: forget the refusal, and the cached copies of its versions
        that are not in the last good set, so they are fetched again (repaired, maybe)."""
        refusals = self._refusals()
        if refusals.pop(_key(versions), None) is None:
            return
        _write_json(self.root / "refused.json", refusals)
        good = self.last_good() or {}
        for name, version in versions.items():
            if good.get(name) != version:
                shutil.rmtree(self.root / name / version, ignore_errors=True)

    def _refusals(self) -> dict[str, dict]:
        try:
            return json.loads((self.root / "refused.json").read_text())
        except (OSError, ValueError):
            return {}


def load_models(settings: Settings, alias: str = "champion", retry_refused: bool = False
                ) -> LoadedModels:
    """Load the aliased versions from the registry (verified into the cache).

    Raises :class:`VersionsRefused` when they were refused before (unless ``retry_refused``) or
    fail to load now, and :class:`RegistryUnavailable` when the registry cannot be read; the
    caller falls back to :func:`load_last_good` on either."""
    _fail_fast_when_unreachable()
    cache = ModelCache(settings)
    try:
        configure(settings)
        versions = resolve_versions(settings, alias)
    except (MlflowException, OSError) as error:
        raise RegistryUnavailable(f"the model registry at {settings.resolved_tracking_uri()} is "
                                  f"unreachable ({type(error).__name__}: {error})") from None
    if settings.recommender_name not in versions:
        raise RegistryUnavailable(
            f"registered model '{settings.recommender_name}' has no '{alias}' version; train one "
            "with 'nextbest train recommender'")
    if retry_refused:
        cache.forget_refusal(versions)
    refused = cache.refused(versions)
    if refused is not None:
        raise VersionsRefused(versions, f"versions {versions} were refused before: {refused}")
    try:
        for name, version in versions.items():
            cache.fetch(name, version)
    except (MlflowException, OSError) as error:
        raise RegistryUnavailable(f"cannot fetch {versions} from the model registry at "
                                  f"{settings.resolved_tracking_uri()} ({type(error).__name__}: "
                                  f"{error})") from None
    try:
        return cache.read(versions, "registry", verify=False)  # fetch verified them
    except Exception as error:  # a corrupt or incompatible artifact: any error of any loader
        reason = f"versions {versions} do not load: {type(error).__name__}: {error}"
        cache.refuse(versions, reason)
        raise VersionsRefused(versions, reason) from None


def load_last_good(settings: Settings, why: str) -> LoadedModels:
    """The last set of versions that loaded and answered, from the cache; ``why`` says why it is
    used (kept in the models' ``detail`` and logged)."""
    cache = ModelCache(settings)
    versions = cache.last_good()
    if versions is None:
        raise RegistryUnavailable(f"{why}; and no models that worked are cached in {cache.root}")
    detail = f"{why}; serving the last good versions {versions} from {cache.root}"
    log.warning(detail)
    return cache.read(versions, "cache", detail)


def _checksums(directory: Path) -> dict[str, str]:
    sums = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != CHECKSUMS):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        sums[str(path.relative_to(directory))] = digest.hexdigest()
    return sums


def _key(versions: dict[str, str]) -> str:
    return json.dumps(versions, sort_keys=True)


def _write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")  # pods share the volume
    temporary.write_text(json.dumps(value, indent=1))
    os.replace(temporary, path)


def _fail_fast_when_unreachable() -> None:
    """MLflow retries an unreachable server for minutes by default; a service should not."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")

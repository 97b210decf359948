"""Where the service was started from, and which nextbest it is.

``bentoml serve nextbest:latest`` runs the service from inside the stored Bento (its workers'
working directory is the Bento's ``src``), so the default data directory, ``.nextbest``, was
resolved there: the service found no models and created an empty ``mlflow.db`` inside the Bento.
A relative data directory is therefore resolved against the directory the service was launched
from: the working directory, or, when that is inside a Bento, the directory of the shell that
ran ``bentoml serve`` (``PWD``, which BentoML's workers inherit). An absolute
``NEXTBEST_DATA_DIR`` is used as it is.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

from features.settings import Settings


def version() -> str:
    """The installed nextbest's version."""
    try:
        return metadata.version("nextbest")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def inside_a_bento(directory: Path) -> bool:
    """A Bento's source directory: ``<bento>/src``, next to ``<bento>/bento.yaml``."""
    return (directory.parent / "bento.yaml").exists()


def launch_directory(cwd: Path | None = None, pwd: str | None = None) -> Path:
    """The directory a relative data directory is relative to (see the module docstring)."""
    cwd = cwd or Path.cwd()
    if not inside_a_bento(cwd):
        return cwd
    pwd = pwd if pwd is not None else os.environ.get("PWD")
    if pwd and not inside_a_bento(Path(pwd)):
        return Path(pwd)
    raise ValueError(f"the service runs inside a Bento ({cwd.parent}) and cannot tell where it "
                     "was launched from; set NEXTBEST_DATA_DIR to the absolute path of the data "
                     "directory (the one 'nextbest demo' filled, e.g. /srv/shop/.nextbest)")


def with_data_dir_resolved(settings: Settings) -> Settings:
    """``settings`` with an absolute data directory."""
    if settings.data_dir.is_absolute():
        return settings
    return settings.model_copy(update={"data_dir": launch_directory() / settings.data_dir})

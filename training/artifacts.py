"""What a registered model version holds: its files, and the packages needed to load it.

The training jobs write these files, the service and the score export read them; the names are
declared here once so the writers and the readers cannot drift apart. The packages a logged
model asks MLflow to install are the project's own requirements (``pyproject.toml``), read from
the installed package's metadata, so a version pin is written in one place only.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import numpy as np

RECOMMENDER_FILE = "recommender.npz"
"""The recommender's arrays (``Recommender.save``)."""
IDS_FILE = "ids.npz"
"""Customer and item ids, training histories and popularity (``tracking.save_bundle``)."""
TOP_ITEMS_FILE, TOP_SCORES_FILE = "top_items.npy", "top_scores.npy"
"""Each fitted customer's best items and their scores."""
PROPENSITY_FILE = "propensity.npz"
"""A propensity model's booster, calibration map and feature options (``PropensityModel.save``)."""
MAPPED_DIR = "mapped"
"""The recommender's arrays unpacked one per ``.npy`` file (``unpack_arrays``), so that every
process serving the version maps them from one copy in the page cache instead of reading its
own: written once, by whoever caches the version for serving."""

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirements(*packages: str) -> list[str]:
    """The project's requirement string for each package named (``mlflow==3.17.2``)."""
    declared = {_normalized(_NAME.match(r).group(1)): r.split(";")[0].strip()
                for r in _project_requirements() if "extra ==" not in r}
    missing = [p for p in packages if _normalized(p) not in declared]
    if missing:
        raise ValueError(f"pyproject.toml does not require {', '.join(missing)}; add them to "
                         "[project].dependencies first")
    return [declared[_normalized(p)] for p in packages]


def _project_requirements() -> list[str]:
    """[project].dependencies: from the installed package, else from the checkout's pyproject."""
    try:
        return metadata.requires("nextbest") or []
    except metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        return tomllib.loads(pyproject.read_text())["project"]["dependencies"]


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def unpack_arrays(npz: Path, directory: Path) -> None:
    """Write each array of ``npz`` to ``directory/<name>.npy`` (see ``MAPPED_DIR``)."""
    directory.mkdir(parents=True, exist_ok=True)
    with np.load(npz, allow_pickle=False) as data:
        for name in data.files:
            np.save(directory / f"{name}.npy", data[name])


def mapped(path: Path) -> np.ndarray:
    """The ``.npy`` file's array, mapped rather than read: its pages are the page cache's, shared
    by every process that maps the file, and read from disk only when first touched.

    Mapped copy-on-write (``mmap_mode="c"``): the array is writable as far as numpy and numba
    can tell, so it has the type of the arrays a request builds, and the compiled ranking pass
    is compiled once for both (a read-only array is another type, compiled again); nothing
    writes to it, so no page is ever copied."""
    return np.asarray(np.load(path, mmap_mode="c", allow_pickle=False))

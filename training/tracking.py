"""MLflow plumbing: where runs go, and the recommender as an MLflow (pyfunc) model.

The logged model is a directory of plain arrays — the recommender's ``.npz``, the id maps, the
customers' training histories, the popularity fallback and each customer's top items — wrapped
as a pyfunc so that any MLflow tool can load it and call ``predict``. The service reads the same
arrays directly (:func:`load_bundle`), keeping MLflow out of its request path.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import scipy.sparse as sp
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from features.settings import Settings
from training.artifacts import (
    IDS_FILE,
    MAPPED_DIR,
    RECOMMENDER_FILE,
    TOP_ITEMS_FILE,
    TOP_SCORES_FILE,
    mapped,
    requirements,
)
from training.interactions import Interactions
from training.recommenders.base import Recommender, sparse_arrays, sparse_from

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "customer_id"), ColSpec("long", "n", required=False)]),
    outputs=Schema([ColSpec("string", "customer_id"), ColSpec("long", "rank"),
                    ColSpec("string", "item_id"), ColSpec("double", "score"),
                    ColSpec("string", "source")]),
)
"""Input: customers (and how many items each); output: one row per recommended item."""
TOP_ITEMS = 200
"""Best items kept per customer: the service blends this many as "recommended for you"."""


JOBS = ("recommender", "propensity")
"""Each job logs to an experiment of its own, so that runs side by side share their metrics."""


def experiment_name(settings: Settings, job: str) -> str:
    if job not in JOBS:
        raise ValueError(f"unknown job {job!r}; expected one of: {', '.join(JOBS)}")
    return f"{settings.experiment}-{job}"


def configure(settings: Settings, job: str | None = None) -> str:
    """Point MLflow at the configured store (and, for a job, at its experiment); return the
    tracking URI."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = settings.resolved_tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if job is None:
        return uri
    name = experiment_name(settings, job)
    if mlflow.get_experiment_by_name(name) is None:
        location = None
        if not uri.startswith(("http://", "https://")):
            location = (settings.data_dir / "mlartifacts" / name).resolve().as_uri()
        mlflow.create_experiment(name, artifact_location=location)
    mlflow.set_experiment(name)
    return uri


def code_version() -> str:
    """The git commit of the code that trained a model, or 'unknown' outside a checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@dataclass
class Bundle:
    """A recommender with everything needed to answer for a customer id."""

    model: Recommender
    interactions: Interactions
    popularity: np.ndarray
    top_items: tuple[np.ndarray, np.ndarray | None] | None = None
    """Each fitted customer's best ``TOP_ITEMS`` columns and scores (items they already have
    kept), from the training job, so that a known customer's candidates are a lookup instead of
    a pass over the catalog. For a model that scores by inner product the scores are left
    unread (None here): a fitted customer's are their vector times their 200 items' (the numbers
    the training job wrote, computed again per request), which spares every serving machine
    the table's second half (0.8 GB a million customers) in memory."""

    def __post_init__(self) -> None:
        if self.top_items is not None and self.model.inner_product_factors() is not None:
            self.top_items = (self.top_items[0], None)

    def top_items_for(self, row: int, n: int) -> tuple[np.ndarray, np.ndarray | None] | None:
        """The top-items table when it holds ``n`` best items for ``row`` (a row it fitted;
        all the catalog's when it has fewer), else None. Its rows are padded with -1 / -inf."""
        table = self.top_items
        if (table is None or not 0 <= row < len(table[0])
                or table[0].shape[1] < min(n, self.model.n_items_)):
            return None
        return table

    def precomputed(self, row: int, n: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The ``n`` best columns and scores the training job kept for a row it fitted (items
        the customer already has included), or None when there is no table, no such row, or
        the table keeps fewer than ``n`` (and fewer than the whole catalog)."""
        table = self.top_items_for(row, n)
        if table is None:
            return None
        columns = table[0][row, :n]
        if len(columns) and columns[-1] < 0:  # the padding of a customer with fewer items
            columns = columns[columns >= 0]
        if table[1] is not None:
            return columns, table[1][row, :len(columns)]
        users, items = self.model.inner_product_factors()
        return columns, (items[columns] @ users[row]).astype(np.float32)

    def recommend_ids(self, customer_id: str, n: int = 10) -> pd.DataFrame:
        """Ranked items for one customer: the model for known ones, popularity otherwise."""
        row = self.interactions.user_row(customer_id)
        if row >= 0:
            history = self.interactions.matrix[row]
            columns, scores = self.model.recommend(row, history, N=n)
            source = "model"
        else:
            columns = np.argsort(-self.popularity, kind="stable")[:n]
            scores = self.popularity[columns].astype(np.float32)
            source = "popular"
        return pd.DataFrame({"customer_id": customer_id, "rank": np.arange(1, len(columns) + 1),
                             "item_id": self.interactions.item_ids[columns],
                             "score": scores.astype(float), "source": source})


def save_bundle(model: Recommender, interactions: Interactions, directory: Path) -> dict[str, str]:
    """Write the arrays of a bundle, each customer's top items included (about 0.2 ms per
    customer at 100k items); returns the pyfunc artifacts mapping."""
    directory.mkdir(parents=True, exist_ok=True)
    model_path = model.save(directory / RECOMMENDER_FILE)
    np.savez(directory / IDS_FILE,
             user_ids=np.asarray(interactions.user_ids, dtype=str),
             item_ids=np.asarray(interactions.item_ids, dtype=str),
             popularity=interactions.popularity().astype(np.float32),
             **sparse_arrays("history", interactions.matrix))
    top_items, top_scores = model.recommend_all(interactions.matrix, N=TOP_ITEMS)
    np.save(directory / TOP_ITEMS_FILE, top_items)
    np.save(directory / TOP_SCORES_FILE, top_scores)
    return {"model": str(model_path), "ids": str(directory / IDS_FILE),
            "top_items": str(directory / TOP_ITEMS_FILE),
            "top_scores": str(directory / TOP_SCORES_FILE)}


def load_bundle(model_path: str | Path, ids_path: str | Path,
                top_items_dir: str | Path | None = None) -> Bundle:
    """Read the arrays written by :func:`save_bundle` (no pickle, no MLflow), with the top-items
    table when ``top_items_dir`` holds one, and the recommender's arrays from their unpacked copy
    there (``MAPPED_DIR``) when it has one.

    The large tables are mapped, not read (``training.artifacts.mapped``): every worker serving
    the version shares one copy through the page cache (the top-items table alone is 1.6 GB at
    a million customers), and a worker starts without reading it. A request touches one row of
    each; a page is read from the page cache the first time a worker touches it (a minor fault;
    docs/benchmarks.md has what that does to latency)."""
    directory = Path(top_items_dir) if top_items_dir is not None else None
    model = Recommender.load(model_path, directory / MAPPED_DIR if directory else None)
    with np.load(ids_path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    interactions = Interactions(sp.csr_matrix(sparse_from("history", arrays)),
                                arrays["user_ids"].astype(object), arrays["item_ids"].astype(object))
    top_items = None
    if directory is not None and (directory / TOP_ITEMS_FILE).exists():
        scores = (None if model.inner_product_factors() is not None  # see Bundle.top_items
                  else mapped(directory / TOP_SCORES_FILE))
        top_items = (mapped(directory / TOP_ITEMS_FILE), scores)
        if top_items[0].shape[0] != len(interactions.user_ids):
            raise ValueError(f"{top_items_dir}: the top-items table has {top_items[0].shape[0]} "
                             f"rows for {len(interactions.user_ids)} customers")
    return Bundle(model, interactions, arrays["popularity"], top_items)


class RecommenderModel(mlflow.pyfunc.PythonModel):
    """pyfunc: a DataFrame with ``customer_id`` (and optionally ``n``) in, ranked items out."""

    def load_context(self, context) -> None:
        self.bundle = load_bundle(context.artifacts["model"], context.artifacts["ids"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if "customer_id" not in model_input.columns:
            raise ValueError("model input needs a 'customer_id' column")
        default_n = int((params or {}).get("n", 10))
        frames = []
        for record in model_input.to_dict("records"):
            n = int(record.get("n") or default_n)
            frames.append(self.bundle.recommend_ids(str(record["customer_id"]), n))
        return pd.concat(frames, ignore_index=True)


def log_recommender(model: Recommender, interactions: Interactions, name: str = "model"):
    """Log the bundle as a pyfunc model of the active run; returns MLflow's ModelInfo."""
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = save_bundle(model, interactions, Path(tmp))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=RecommenderModel(),
            artifacts=artifacts,
            signature=SIGNATURE,
            input_example=pd.DataFrame({"customer_id": [str(interactions.user_ids[0])], "n": [3]}),
            pip_requirements=requirements("mlflow", "implicit", "scikit-learn", "numpy", "pandas",
                                          "scipy", "threadpoolctl", "pydantic"),
            code_paths=[str(Path(__file__).resolve().parents[1] / "training"),
                        str(Path(__file__).resolve().parents[1] / "features")],
        )


def params_json(model: Recommender) -> str:
    return json.dumps({"model": model.name, "params": model.get_params()}, sort_keys=True)

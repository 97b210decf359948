"""The one contract every recommender honours.

It follows implicit's API, which people in this field already know: ``fit(user_items)`` on a
customers × items CSR matrix, ``recommend(userid, user_items, N, filter_already_liked_items,
filter_items)`` returning ``(item_columns, scores)``, ``similar_items(itemid, N)``, and
``save``/``load`` as plain arrays (``np.savez``, read back with ``allow_pickle=False``).

Hyperparameters are scikit-learn style: keyword arguments of the constructor only, validated
against the model's typed ``Config`` (a pydantic model, so the CLI, MLflow and the docs read the
same definition), and never changed by ``fit``. Learned state ends in ``_``.

Subclasses implement ``_fit``, ``_score(user_rows)`` (dense scores for a batch of history rows)
and ``_item_vectors`` (for similar items), plus ``_arrays``/``_restore`` for persistence.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, ValidationError
from threadpoolctl import threadpool_limits

from training.artifacts import mapped


class NotFittedError(RuntimeError):
    """Raised when a model is used before ``fit``."""


class RecommenderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Recommender(ABC):
    """Base class of all recommenders; see the module docstring for the contract."""

    name: ClassVar[str]
    Config: ClassVar[type[RecommenderConfig]]
    needs_item_info: ClassVar[bool] = False
    """True for models that learn from item text (they take ``item_info`` in ``fit``)."""

    def __init__(self, **params: Any) -> None:
        try:
            self.config = self.Config(**params)
        except ValidationError as error:
            raise ValueError(_explain(type(self).__name__, self.Config, error)) from None

    def get_params(self) -> dict[str, Any]:
        return self.config.model_dump()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ training
    def fit(self, user_items: sp.csr_matrix, item_info: pd.DataFrame | None = None) -> Self:
        """Learn from a customers × items matrix of interaction weights; returns ``self``."""
        if not sp.issparse(user_items):
            raise TypeError(f"user_items must be a scipy sparse matrix, got {type(user_items).__name__}")
        user_items = sp.csr_matrix(user_items, dtype=np.float32)
        if self.needs_item_info and (item_info is None or len(item_info) != user_items.shape[1]):
            raise ValueError(f"{type(self).__name__} needs item_info with one row per item column "
                             f"({user_items.shape[1]}), got "
                             f"{'none' if item_info is None else len(item_info)}")
        self.n_items_ = user_items.shape[1]
        self._unit_vectors = None
        self._fit(user_items, item_info)
        return self

    @abstractmethod
    def _fit(self, user_items: sp.csr_matrix, item_info: pd.DataFrame | None) -> None: ...

    # ------------------------------------------------------------------ scoring
    @abstractmethod
    def _score(self, userids: np.ndarray, user_items: sp.csr_matrix,
               recalculate_user: bool = False) -> np.ndarray:
        """Dense scores (len(userids) × n_items) from each customer's history row.

        Models with stored customer vectors use them for known rows unless
        ``recalculate_user``; models that score from history alone ignore the flag.
        """

    def recommend(
        self,
        userid: int | np.ndarray,
        user_items: sp.csr_matrix,
        N: int = 10,
        filter_already_liked_items: bool = True,
        filter_items: np.ndarray | None = None,
        recalculate_user: bool = False,
        items: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``N`` item columns and scores for one customer row (or an array of rows).

        ``user_items`` holds the history of exactly the customers asked for, one row each (as in
        implicit): it may be fresher than what the model was fitted on. ``filter_items`` are
        columns never to return; ``items`` restricts the answer to these columns;
        ``recalculate_user`` recomputes a factor model's customer vector from ``user_items``
        (needed for customers the model was not fitted on, who have userid -1).
        """
        self._check_fitted()
        single = np.isscalar(userid)
        userids = np.atleast_1d(np.asarray(userid))
        history = sp.csr_matrix(user_items, dtype=np.float32)
        if history.shape != (len(userids), self.n_items_):
            raise ValueError(f"user_items must have one row per customer asked for and "
                             f"{self.n_items_} columns, got shape {history.shape}")
        if not isinstance(N, int | np.integer) or N < 1:
            raise ValueError(f"N must be a positive whole number, got {N!r}")
        scores = self._score(userids, history, recalculate_user).astype(np.float32, copy=False)
        if filter_already_liked_items:
            rows, cols = history.nonzero()
            scores[rows, cols] = -np.inf
        if filter_items is not None and len(filter_items):
            scores[:, np.asarray(filter_items)] = -np.inf
        if items is not None:
            allowed = np.zeros(self.n_items_, dtype=bool)
            allowed[np.asarray(items)] = True
            scores[:, ~allowed] = -np.inf
        ids, top = _top_n(scores, N)
        return (ids[0], top[0]) if single else (ids, top)

    def inner_product_factors(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(customer vectors, item vectors) whose inner products are this model's scores for
        the rows it was fitted on, for models that score so; None for the others. A service
        scores a fitted customer's candidates from these instead of storing the scores."""
        return None

    def recommend_all(self, user_items: sp.csr_matrix, N: int = 200, batch: int = 512,
                      threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``recommend`` for every row of ``user_items`` at once, already-liked items kept:
        (n_rows × N columns, n_rows × N scores), padded with -1 / -inf where a row has fewer.

        Exact, in blocks of ``batch`` rows (one matrix product each, then the single-row
        selection per row, on ``threads`` threads, BLAS held to one thread each so that the two
        do not fight over the cores). A service answers the customers the model was fitted on
        from this table with a lookup; scoring the catalog per request is most of a request's
        cost (about 1 ms at 100k items, 64 factors).
        """
        self._check_fitted()
        user_items = sp.csr_matrix(user_items, dtype=np.float32)
        n_rows, n = user_items.shape[0], min(N, self.n_items_)
        ids = np.full((n_rows, n), -1, dtype=np.int32)
        scores = np.full((n_rows, n), -np.inf, dtype=np.float32)

        def block(start: int) -> None:
            rows = np.arange(start, min(start + batch, n_rows))
            dense = self._score(rows, user_items[rows]).astype(np.float32, copy=False)
            for k, row in enumerate(rows):
                columns, top = _top_n(dense[k:k + 1], n)
                ids[row, :columns.shape[1]], scores[row, :top.shape[1]] = columns[0], top[0]

        with threadpool_limits(1, "blas"), ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
            list(pool.map(block, range(0, n_rows, batch)))
        return ids, scores

    def similar_items(self, itemid: int, N: int = 10,
                      filter_items: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``N`` items most similar to column ``itemid`` (itself excluded), by cosine."""
        self._check_fitted()
        if not 0 <= int(itemid) < self.n_items_:
            raise ValueError(f"itemid must be a column in [0, {self.n_items_}), got {itemid}")
        unit = self._unit_item_vectors()
        query = unit[int(itemid)]
        if sp.issparse(unit):
            scores = np.asarray((unit @ query.T).todense()).ravel().astype(np.float32)
        else:
            scores = (unit @ query).astype(np.float32)
        scores[int(itemid)] = -np.inf
        if filter_items is not None and len(filter_items):
            scores[np.asarray(filter_items)] = -np.inf
        ids, top = _top_n(scores[None, :], N)
        return ids[0], top[0]

    def item_neighbours(self, N: int = 30, batch: int = 1024,
                        threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``similar_items`` for every item at once: (n_items × N columns, n_items × N scores).

        Exact, in blocks of ``batch`` items (one matrix product and one partial sort each, on
        ``threads`` threads: numpy releases the GIL for both), so that a service can answer
        "similar to" with a lookup instead of scoring the catalog per request. Only for models
        with dense, low-dimensional item vectors (factor models); the cost is n_items² × factors.
        """
        self._check_fitted()
        unit = self._unit_item_vectors()
        if sp.issparse(unit) or unit.shape[1] > 1024:
            raise ValueError(f"{type(self).__name__} has {'sparse' if sp.issparse(unit) else 'wide'} "
                             "item vectors; a neighbour table is for factor models")
        n = min(N, self.n_items_ - 1)
        ids = np.empty((self.n_items_, n), dtype=np.int32)
        scores = np.empty((self.n_items_, n), dtype=np.float32)

        def block(start: int) -> None:
            similarity = unit[start:start + batch] @ unit.T
            rows = np.arange(similarity.shape[0])
            similarity[rows, rows + start] = -np.inf  # an item is not its own neighbour
            ids[start:start + batch], scores[start:start + batch] = _top_n(similarity, n)

        with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
            list(pool.map(block, range(0, self.n_items_, batch)))
        return ids, scores

    def _unit_item_vectors(self) -> np.ndarray | sp.csr_matrix:
        """Item vectors scaled to length 1, computed once per fitted model (serving calls
        ``similar_items`` on every request)."""
        cached = getattr(self, "_unit_vectors", None)
        if cached is None:
            vectors = self._item_vectors()
            norms = _row_norms(vectors)
            inverse = np.divide(1.0, norms, out=np.zeros_like(norms, dtype=np.float64),
                                where=norms > 0)
            if sp.issparse(vectors):
                cached = sp.csr_matrix(sp.diags(inverse) @ vectors, dtype=np.float32)
            else:
                cached = (vectors * inverse[:, None]).astype(np.float32)
            self._unit_vectors = cached
        return cached

    @abstractmethod
    def _item_vectors(self) -> np.ndarray | sp.csr_matrix:
        """One row per item, compared by cosine in ``similar_items``."""

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the model as plain arrays (``.npz``) and return the path written."""
        self._check_fitted()
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        header = json.dumps({"model": self.name, "params": self.get_params(),
                             "n_items": self.n_items_})
        np.savez(path, __header__=np.array(header), **self._arrays())
        return path

    @classmethod
    def load(cls, path: str | Path, unpacked: Path | None = None) -> Recommender:
        """Read a model written by ``save``; the file says which class it is. With ``unpacked``,
        a directory holding its arrays one per file (``training.artifacts.unpack_arrays``),
        they are mapped from there instead of read into this process's memory."""
        from training.recommenders import recommender_class

        with np.load(Path(path), allow_pickle=False) as data:
            header = json.loads(str(data["__header__"]))
            if unpacked is not None and unpacked.is_dir():
                arrays = {k: mapped(unpacked / f"{k}.npy") for k in data.files
                          if k != "__header__"}
            else:
                arrays = {k: data[k] for k in data.files if k != "__header__"}
        model_class = recommender_class(header["model"])
        if cls is not Recommender and not issubclass(model_class, cls):
            raise TypeError(f"{path} holds a {model_class.__name__}, not a {cls.__name__}")
        model = model_class(**header["params"])
        model.n_items_ = header["n_items"]
        model._restore(arrays)
        return model

    @abstractmethod
    def _arrays(self) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def _restore(self, arrays: dict[str, np.ndarray]) -> None: ...

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_items_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call "
                                 f"fit(user_items) first")


def _top_n(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns and scores of the ``n`` best finite scores per row, best first."""
    n = min(n, scores.shape[1])
    if scores.shape[0] == 1:
        kept = _preselect(scores[0], n)
        if kept is not None:  # the same answer from a few hundred columns instead of all
            ids, top = _partial_sort(scores[:, kept], n)
            return kept[ids], top
    return _partial_sort(scores, n)


def _partial_sort(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    ids = np.take_along_axis(part, order, axis=1)
    top = np.take_along_axis(part_scores, order, axis=1)
    finite = np.isfinite(top)
    if finite.all():
        return ids, top
    # Rows with fewer than n allowed items: keep only the finite ones (ragged -> object rows).
    if ids.shape[0] == 1:
        return ids[:, finite[0]], top[:, finite[0]]
    return ids, np.where(finite, top, -np.inf)


SAMPLE_STEP = 16


def _preselect(row: np.ndarray, n: int) -> np.ndarray | None:
    """Columns that surely hold the row's ``n`` best: all at or above a threshold read off a
    1-in-16 sample, set so that about 2n pass. Exact: whenever at least ``n`` pass, the n-th
    best is at or above the threshold, so none of the best is left out; otherwise (None) the
    caller partitions the whole row. A full partial sort of 100k scores costs ~1 ms, this ~0.1."""
    if len(row) < 64 * n:
        return None
    sample = row[::SAMPLE_STEP]
    rank = len(sample) - (2 * n // SAMPLE_STEP + 8)
    threshold = np.partition(sample, rank)[rank]
    if not np.isfinite(threshold):
        return None
    kept = np.flatnonzero(row >= threshold)
    return kept if len(kept) >= n else None


def _row_norms(matrix) -> np.ndarray:
    if sp.issparse(matrix):
        return np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    return np.linalg.norm(matrix, axis=1)


def sparse_arrays(prefix: str, matrix: sp.csr_matrix) -> dict[str, np.ndarray]:
    """A CSR matrix as four plain arrays, for ``np.savez``."""
    matrix = sp.csr_matrix(matrix)
    return {f"{prefix}_data": matrix.data, f"{prefix}_indices": matrix.indices,
            f"{prefix}_indptr": matrix.indptr, f"{prefix}_shape": np.array(matrix.shape)}


def sparse_from(prefix: str, arrays: dict[str, np.ndarray]) -> sp.csr_matrix:
    return sp.csr_matrix((arrays[f"{prefix}_data"], arrays[f"{prefix}_indices"],
                          arrays[f"{prefix}_indptr"]), shape=tuple(arrays[f"{prefix}_shape"]))


def _explain(owner: str, config: type[BaseModel], error: ValidationError) -> str:
    """scikit-learn style: the parameter, the owner, what is allowed, what was given."""
    parts = []
    for problem in error.errors():
        name = ".".join(str(p) for p in problem["loc"])
        if problem["type"] == "extra_forbidden":
            parts.append(f"{owner} has no parameter '{name}'; its parameters are: "
                         f"{', '.join(config.model_fields)}")
        else:
            field = config.model_fields.get(name)
            hint = f" ({field.description})" if field is not None and field.description else ""
            parts.append(f"The '{name}' parameter of {owner} {problem['msg'].lower()}{hint}. "
                         f"Got {problem.get('input')!r} instead.")
    return "; ".join(parts)

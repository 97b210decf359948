"""Item-item nearest neighbours (implicit's cosine and BM25 similarities)."""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from implicit.nearest_neighbours import BM25Recommender, CosineRecommender
from implicit.utils import ParameterWarning
from pydantic import Field

from training.recommenders.base import Recommender, RecommenderConfig, sparse_arrays, sparse_from


class ItemKNNConfig(RecommenderConfig):
    similarity: Literal["cosine", "bm25"] = Field("bm25", description="How items are compared.")
    neighbors: int = Field(100, ge=1, le=5000, description="Neighbours kept per item (K).")
    k1: float = Field(1.2, gt=0, description="BM25 term saturation.")
    b: float = Field(0.75, ge=0, le=1, description="BM25 length normalization.")


class ItemKNNRecommender(Recommender):
    """Scores an item by the similarity of the customer's items to it."""

    name = "itemknn"
    Config = ItemKNNConfig

    def _fit(self, user_items: sp.csr_matrix, item_info: pd.DataFrame | None) -> None:
        c = self.config
        if c.similarity == "bm25":
            model = BM25Recommender(K=c.neighbors, K1=c.k1, B=c.b, num_threads=1)
        else:
            model = CosineRecommender(K=c.neighbors, num_threads=1)
        with warnings.catch_warnings():
            # implicit's own bm25_weight hands its kNN a COO matrix and then warns about it.
            warnings.simplefilter("ignore", ParameterWarning)
            model.fit(user_items, show_progress=False)
        self.similarity_ = sp.csr_matrix(model.similarity, dtype=np.float32)

    def _score(self, userids: np.ndarray, user_items: sp.csr_matrix,
               recalculate_user: bool = False) -> np.ndarray:
        return np.asarray((user_items @ self.similarity_).todense())

    def _item_vectors(self) -> sp.csr_matrix:
        return self.similarity_

    def _arrays(self) -> dict[str, np.ndarray]:
        return sparse_arrays("similarity", self.similarity_)

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.similarity_ = sparse_from("similarity", arrays)

"""EASE: an item-item model with a closed-form solution (Steck, WWW 2019).

B = I - P / diag(P) with P = (XᵀX + λI)⁻¹ and a zero diagonal. One dense n_items² solve, so it
suits catalogs up to a few tens of thousands of items, where it is often the strongest model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import Field
from threadpoolctl import threadpool_limits

from training.recommenders.base import Recommender, RecommenderConfig

MAX_ITEMS = 40_000


class EASEConfig(RecommenderConfig):
    l2: float = Field(250.0, gt=0, description="L2 penalty λ on the item weights.")
    binarize: bool = Field(True, description="Fit on 0/1 interactions instead of weights.")


class EASERecommender(Recommender):
    """Embarrassingly Shallow AutoEncoder."""

    name = "ease"
    Config = EASEConfig

    def _fit(self, user_items: sp.csr_matrix, item_info: pd.DataFrame | None) -> None:
        n_items = user_items.shape[1]
        if n_items > MAX_ITEMS:
            raise ValueError(f"EASE solves a dense {n_items} x {n_items} system; above {MAX_ITEMS:,} "
                             "items use als or itemknn instead")
        x = (user_items > 0).astype(np.float64) if self.config.binarize else user_items
        gram = np.asarray((x.T @ x).todense(), dtype=np.float64)
        gram[np.diag_indices(n_items)] += self.config.l2
        with threadpool_limits(2, "blas"):
            p = np.linalg.inv(gram)
        weights = -p / np.diag(p)
        weights[np.diag_indices(n_items)] = 0.0
        self.weights_ = weights.astype(np.float32)

    def _score(self, userids: np.ndarray, user_items: sp.csr_matrix,
               recalculate_user: bool = False) -> np.ndarray:
        x = (user_items > 0).astype(np.float32) if self.config.binarize else user_items
        return np.asarray(x @ self.weights_)

    def _item_vectors(self) -> np.ndarray:
        return self.weights_.T

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights_}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.weights_ = arrays["weights"]

"""Popularity and trending: the baselines every model must beat, and the cold-start fallback."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import Field

from training.recommenders.base import Recommender, RecommenderConfig


class PopularityConfig(RecommenderConfig):
    count: Literal["customers", "weight"] = Field(
        "customers", description="Rank by distinct customers, or by summed interaction weight.")


class PopularityRecommender(Recommender):
    """The same ranking for everyone: the most popular items they have not interacted with."""

    name = "popularity"
    Config = PopularityConfig

    def _fit(self, user_items: sp.csr_matrix, item_info: pd.DataFrame | None) -> None:
        if self.config.count == "customers":
            counts = np.diff(user_items.tocsc().indptr)
        else:
            counts = np.asarray(user_items.sum(axis=0)).ravel()
        self.popularity_ = counts.astype(np.float32)

    def _score(self, userids: np.ndarray, user_items: sp.csr_matrix,
               recalculate_user: bool = False) -> np.ndarray:
        return np.broadcast_to(self.popularity_, (len(userids), self.n_items_)).copy()

    def _item_vectors(self) -> np.ndarray:
        # Popularity has no notion of similarity; "similar" means "also popular".
        return self.popularity_[:, None]

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"popularity": self.popularity_}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.popularity_ = arrays["popularity"]


class TrendingConfig(PopularityConfig):
    count: Literal["customers", "weight"] = Field(
        "weight", description="Trending ranks by summed, time-decayed interaction weight.")
    half_life_days: float = Field(
        7.0, gt=0, description="Half-life of the decay the training job applies to the matrix.")


class TrendingRecommender(PopularityRecommender):
    """Popularity of recent behaviour: fit it on a matrix built with ``half_life_days`` decay."""

    name = "trending"
    Config = TrendingConfig

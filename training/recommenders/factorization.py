"""Matrix factorization with implicit: ALS (implicit feedback) and BPR (pairwise ranking).

implicit's native code runs its own threads; OpenBLAS underneath must be held to one thread or
the two fight over the cores (implicit warns about this), hence ``threadpool_limits`` around
fitting and building implicit's models, which happen once, and never around scoring, which
happens per request.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from implicit.cpu.bpr import BayesianPersonalizedRanking
from pydantic import Field
from threadpoolctl import threadpool_limits

from training.recommenders.base import Recommender, RecommenderConfig


class ALSConfig(RecommenderConfig):
    factors: int = Field(64, ge=1, le=1024, description="Size of the latent vectors.")
    regularization: float = Field(0.05, ge=0, description="L2 penalty on the factors.")
    alpha: float = Field(2.0, gt=0, description="Confidence scale: confidence = alpha x weight.")
    iterations: int = Field(15, ge=1, le=500, description="ALS sweeps.")
    random_state: int = Field(42, description="Seed of the initial factors.")


SCORING_THREADS = 1
"""implicit's threads for re-deriving customers' vectors once fitted: the service does it for one
customer per request, and implicit's OpenMP threads, left spinning after each solve, fought
OpenBLAS's over the cores: 12 ms a request with every core, 0.6 ms with one (fitting still uses
every core)."""


class ALSRecommender(Recommender):
    """Implicit-feedback ALS (Hu, Koren & Volinsky 2008) via implicit's CPU solver."""

    name = "als"
    Config = ALSConfig

    def _fit(self, user_items: sp.csr_matrix, item_info: pd.DataFrame | None) -> None:
        with threadpool_limits(1, "blas"):
            self.model_ = self._implicit_model()
            self.model_.fit(user_items, show_progress=False)
        self.model_.num_threads = SCORING_THREADS

    def _implicit_model(self) -> AlternatingLeastSquares:
        """implicit checks the BLAS threadpool here, so call it within ``threadpool_limits``."""
        c = self.config
        return AlternatingLeastSquares(factors=c.factors, regularization=c.regularization,
                                       alpha=c.alpha, iterations=c.iterations,
                                       random_state=c.random_state)

    def _score(self, userids: np.ndarray, user_items: sp.csr_matrix,
               recalculate_user: bool = False) -> np.ndarray:
        return self.user_vectors(userids, user_items, recalculate_user) @ self.model_.item_factors.T

    def user_vectors(self, userids: np.ndarray, user_items: sp.csr_matrix,
                     recalculate_user: bool = False) -> np.ndarray:
        """Stored factors of known rows; recomputed from ``user_items`` when asked or unknown."""
        n_users = self.model_.user_factors.shape[0]
        known = (userids >= 0) & (userids < n_users)
        if not recalculate_user and not known.all():
            bad = userids[~known][0]
            raise ValueError(f"userid {bad} is not a row this model was fitted on (0..{n_users - 1});"
                             " pass recalculate_user=True to score from user_items")
        if not recalculate_user:
            return self.model_.user_factors[userids]
        # No threadpool_limits here: this runs per request in the service, and each call
        # rescanned the loaded libraries and rebuilt OpenBLAS's threads (about 10 ms, against
        # 60 us for the solve itself, which calls no threaded BLAS).
        return np.asarray(self.model_.recalculate_user(np.arange(len(userids)), user_items))

    def _item_vectors(self) -> np.ndarray:
        return self.model_.item_factors

    def inner_product_factors(self) -> tuple[np.ndarray, np.ndarray]:
        return self.model_.user_factors, self.model_.item_factors

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"user_factors": self.model_.user_factors, "item_factors": self.model_.item_factors}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        with threadpool_limits(1, "blas"):
            self.model_ = self._implicit_model()
        self.model_.user_factors = arrays["user_factors"]
        self.model_.item_factors = arrays["item_factors"]
        self.model_.num_threads = SCORING_THREADS


class BPRConfig(RecommenderConfig):
    factors: int = Field(64, ge=1, le=1024, description="Size of the latent vectors.")
    learning_rate: float = Field(0.05, gt=0, description="SGD step size.")
    regularization: float = Field(0.01, ge=0, description="L2 penalty on the factors.")
    iterations: int = Field(100, ge=1, le=5000, description="Epochs of sampled pairs.")
    random_state: int = Field(42, description="Seed of sampling and initial factors.")


class BPRRecommender(Recommender):
    """Bayesian Personalized Ranking (Rendle et al. 2009) via implicit's CPU solver."""

    name = "bpr"
    Config = BPRConfig

    def _fit(self, user_items: sp.csr_matrix, item_info: pd.DataFrame | None) -> None:
        c = self.config
        with threadpool_limits(1, "blas"):
            model = BayesianPersonalizedRanking(
                factors=c.factors, learning_rate=c.learning_rate, regularization=c.regularization,
                iterations=c.iterations, random_state=c.random_state)
            model.fit(user_items, show_progress=False)
        self.user_factors_ = np.asarray(model.user_factors)
        self.item_factors_ = np.asarray(model.item_factors)

    def _score(self, userids: np.ndarray, user_items: sp.csr_matrix,
               recalculate_user: bool = False) -> np.ndarray:
        n_users = self.user_factors_.shape[0]
        known = (userids >= 0) & (userids < n_users)
        vectors = np.zeros((len(userids), self.user_factors_.shape[1]), dtype=np.float32)
        vectors[known] = self.user_factors_[userids[known]]
        fold_in = ~known | recalculate_user
        if fold_in.any():
            # No closed form for BPR: fold a customer in as the mean of their items' vectors
            # (the bias column stays 1, as implicit sets it for every user).
            rows = sp.csr_matrix(user_items[np.flatnonzero(fold_in)])
            counts = np.maximum(np.asarray(rows.sum(axis=1)).ravel(), 1e-9)[:, None]
            vectors[fold_in] = (rows @ self.item_factors_) / counts
            vectors[fold_in, -1] = 1.0
        return vectors @ self.item_factors_.T

    def _item_vectors(self) -> np.ndarray:
        return self.item_factors_[:, :-1]  # without the bias column

    def inner_product_factors(self) -> tuple[np.ndarray, np.ndarray]:
        return self.user_factors_, self.item_factors_  # the customers' bias column is 1

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"user_factors": self.user_factors_, "item_factors": self.item_factors_}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.user_factors_ = arrays["user_factors"]
        self.item_factors_ = arrays["item_factors"]

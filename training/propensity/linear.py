"""A logistic model on transformed recency, frequency and money: what wins on small shops.

Counts, money and day spans are heavy-tailed, so each non-negative column enters as
``log1p``; a recency that is missing (never bought) enters as ten years; other gaps take the
training median. Columns are then standardized, and an L2-penalized logistic regression is fitted.
Its log-odds are a sum of per-feature terms, ``coef x (z - 0)`` around the average customer, so
its reasons are exact the way LightGBM's SHAP values are.

Kept as arrays (no pickle): which columns are logged, fill values, centre, scale, coefficients
and intercept.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

NEVER_DAYS = 3650.0
"""A recency that never happened: ten years ago."""


class LinearScorer:
    def __init__(self, C: float = 1.0) -> None:
        self.C = C

    def fit(self, rows: np.ndarray, y: np.ndarray, columns: list[str],
            sample_weight: np.ndarray | None = None) -> LinearScorer:
        self.logged_ = np.array([_nonnegative(rows[:, j]) for j in range(rows.shape[1])])
        self.fill_ = np.array([NEVER_DAYS if c.startswith("days_since") else
                               _median(rows[:, j]) for j, c in enumerate(columns)])
        z = self._transformed(rows)
        self.center_ = z.mean(axis=0)
        scale = z.std(axis=0)
        self.scale_ = np.where(scale > 0, scale, 1.0)
        fitted = LogisticRegression(C=self.C, max_iter=2000).fit(
            self._standardized(z), y, sample_weight=sample_weight)
        self.coef_, self.intercept_ = fitted.coef_[0], float(fitted.intercept_[0])
        return self

    def _transformed(self, rows: np.ndarray) -> np.ndarray:
        filled = np.where(np.isnan(rows), self.fill_, rows)
        return np.where(self.logged_, np.log1p(np.maximum(filled, 0.0)), filled)

    def _standardized(self, z: np.ndarray) -> np.ndarray:
        return (z - self.center_) / self.scale_

    def terms(self, rows: np.ndarray) -> np.ndarray:
        """Each feature's term of the log-odds; with ``intercept_`` they sum to ``raw_score``."""
        return self._standardized(self._transformed(rows)) * self.coef_

    def raw_score(self, rows: np.ndarray) -> np.ndarray:
        return self.terms(rows).sum(axis=1) + self.intercept_

    def to_arrays(self) -> np.ndarray:
        """One (6, n) float array: logged, fill, center, scale, coef, and the intercept in a row."""
        n = len(self.coef_)
        return np.vstack([self.logged_.astype(float), self.fill_, self.center_, self.scale_,
                          self.coef_, np.full(n, self.intercept_)])

    @classmethod
    def from_arrays(cls, values: np.ndarray) -> LinearScorer:
        scorer = cls()
        scorer.logged_ = values[0].astype(bool)
        scorer.fill_, scorer.center_, scorer.scale_, scorer.coef_ = values[1:5]
        scorer.intercept_ = float(values[5, 0]) if values.shape[1] else 0.0
        return scorer


def _nonnegative(column: np.ndarray) -> bool:
    finite = column[np.isfinite(column)]
    return bool(finite.size) and bool((finite >= 0).all())


def _median(column: np.ndarray) -> float:
    finite = column[np.isfinite(column)]
    return float(np.median(finite)) if finite.size else 0.0

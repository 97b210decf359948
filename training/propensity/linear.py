"""A logistic model on transformed recency, frequency and money: what wins on small shops.

It reads the RFM columns only (``RFM_PREFIXES``: days since, purchase and order counts, money,
tenure, BG/NBD's features), as the classic model does; with few customers, a coefficient on
every category affinity and channel share would fit noise. (A table with none of them, such as
the offer-response snapshots, uses all its columns.) Counts, money and day spans are
heavy-tailed, so each non-negative column enters as
``log1p``; a recency that is missing (never bought) enters as ten years; other gaps take the
training median, and each is held within the range training saw: a linear term extrapolates
without bound, and a later snapshot (customers a month older than any in training) must not
be ranked by the line's continuation. Columns are then standardized, and an L2-penalized
logistic regression is fitted.
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
RFM_PREFIXES = ("days_since_", "purchases_", "orders_", "revenue_", "tenure_days",
                "avg_order_value", "bgnbd_")


class LinearScorer:
    def __init__(self, C: float = 1.0) -> None:
        self.C = C

    def fit(self, rows: np.ndarray, y: np.ndarray, columns: list[str],
            sample_weight: np.ndarray | None = None) -> LinearScorer:
        self.logged_ = np.array([_nonnegative(rows[:, j]) for j in range(rows.shape[1])])
        self.fill_ = np.array([NEVER_DAYS if c.startswith("days_since") else
                               _median(rows[:, j]) for j, c in enumerate(columns)])
        used = np.array([c.startswith(RFM_PREFIXES) for c in columns], dtype=bool)
        self.used_ = used if used.any() else np.ones(len(columns), dtype=bool)
        z = np.where(np.isnan(rows), self.fill_, rows)
        z = np.where(self.logged_, np.log1p(np.maximum(z, 0.0)), z)
        self.low_, self.high_ = z.min(axis=0), z.max(axis=0)
        self.center_ = z.mean(axis=0)
        scale = z.std(axis=0)
        self.scale_ = np.where(scale > 0, scale, 1.0)
        fitted = LogisticRegression(C=self.C, max_iter=2000).fit(
            self._standardized(z)[:, self.used_], y, sample_weight=sample_weight)
        self.coef_ = np.zeros(len(columns))
        self.coef_[self.used_] = fitted.coef_[0]
        self.intercept_ = float(fitted.intercept_[0])
        return self

    def _transformed(self, rows: np.ndarray) -> np.ndarray:
        filled = np.where(np.isnan(rows), self.fill_, rows)
        logged = np.where(self.logged_, np.log1p(np.maximum(filled, 0.0)), filled)
        return np.clip(logged, self.low_, self.high_)

    def _standardized(self, z: np.ndarray) -> np.ndarray:
        return (z - self.center_) / self.scale_

    def terms(self, rows: np.ndarray) -> np.ndarray:
        """Each feature's term of the log-odds; with ``intercept_`` they sum to ``raw_score``."""
        return self._standardized(self._transformed(rows)) * self.coef_

    def raw_score(self, rows: np.ndarray) -> np.ndarray:
        return self.terms(rows).sum(axis=1) + self.intercept_

    def to_arrays(self) -> np.ndarray:
        """One (9, n) float array: logged, fill, center, scale, coef, the intercept in a row,
        which columns are used, and the range training saw (low, high)."""
        n = len(self.coef_)
        return np.vstack([self.logged_.astype(float), self.fill_, self.center_, self.scale_,
                          self.coef_, np.full(n, self.intercept_), self.used_.astype(float),
                          self.low_, self.high_])

    @classmethod
    def from_arrays(cls, values: np.ndarray) -> LinearScorer:
        scorer = cls()
        scorer.logged_ = values[0].astype(bool)
        scorer.fill_, scorer.center_, scorer.scale_, scorer.coef_ = values[1:5]
        scorer.intercept_ = float(values[5, 0]) if values.shape[1] else 0.0
        scorer.used_ = values[6].astype(bool)
        scorer.low_, scorer.high_ = values[7], values[8]
        return scorer


def _nonnegative(column: np.ndarray) -> bool:
    finite = column[np.isfinite(column)]
    return bool(finite.size) and bool((finite >= 0).all())


def _median(column: np.ndarray) -> float:
    finite = column[np.isfinite(column)]
    return float(np.median(finite)) if finite.size else 0.0

"""BG/NBD's view of each customer as two features: the chance they are still active, and how
many purchases they are expected to make in the next 30 days.

BG/NBD (``training.propensity.bgnbd``) is fitted, unsupervised, on the training rows' purchase
history: repeat orders in the last year (``orders_365d - 1``), the age of that history (the
customer's tenure, at most a year) and the time from its start to the last purchase. The
point-in-time features carry no lifetime first-purchase date, so the history is the last year's,
as a year is what the features look back on. The fitted parameters are four numbers saved with
the model, so scoring computes the same features from the same columns.
"""

from __future__ import annotations

import numpy as np

from training.propensity.bgnbd import BGNBD, BGNBDParams

NEEDS = ("orders_365d", "tenure_days", "days_since_last_purchase")
"""The feature columns BG/NBD's inputs are made from."""
NAMES = ("bgnbd_p_alive", "bgnbd_expected_purchases_30d")
HISTORY_DAYS = 365.0
WEEK = 7.0


def usable(columns: list[str]) -> bool:
    """Whether the features hold what BG/NBD needs (purchase propensity's do; offers' do not)."""
    return all(c in columns for c in NEEDS)


def _history(rows: np.ndarray, columns: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, t_x, T) in weeks from the feature columns of ``rows``."""
    orders, tenure, since_last = (rows[:, columns.index(c)] for c in NEEDS)
    T = np.clip(np.nan_to_num(tenure, nan=0.0), 0.0, HISTORY_DAYS)
    bought = np.isfinite(since_last) & (np.nan_to_num(orders) > 0) & (since_last <= T)
    x = np.where(bought, np.maximum(np.nan_to_num(orders) - 1, 0), 0.0)
    t_x = np.where(bought & (x > 0), T - np.nan_to_num(since_last), 0.0)
    # to the day, as purchase histories are kept: customers with the same history then share
    # one likelihood term when BG/NBD is fitted
    return x, np.round(np.clip(t_x, 0.0, T)) / WEEK, np.round(T) / WEEK


class BGNBDFeatures:
    """``fit`` on training rows, then ``transform`` any rows with the same columns."""

    def fit(self, rows: np.ndarray, columns: list[str]) -> BGNBDFeatures:
        x, t_x, T = _history(rows, columns)
        keep = T > 0
        self.model_ = BGNBD(penalizer=0.001).fit(x[keep], t_x[keep], T[keep])
        return self

    @classmethod
    def from_params(cls, values: np.ndarray) -> BGNBDFeatures:
        features = cls()
        features.model_ = BGNBD()
        features.model_.params_ = BGNBDParams(*map(float, values))
        return features

    @property
    def params(self) -> np.ndarray:
        p = self.model_.params_
        return np.array([p.r, p.alpha, p.a, p.b])

    def transform(self, rows: np.ndarray, columns: list[str]) -> np.ndarray:
        """Two columns, ``NAMES``: P(alive) and expected purchases in 30 days."""
        x, t_x, T = _history(rows, columns)
        T = np.maximum(T, 1e-6)  # a customer first seen at the cutoff: a moment of history
        alive = self.model_.probability_alive(x, t_x, T)
        expected = self.model_.expected_purchases(30.0 / WEEK, x, t_x, T)
        return np.column_stack([alive, np.nan_to_num(expected, nan=0.0, posinf=0.0)])


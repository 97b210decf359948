"""The simple models a propensity model has to beat: recency alone, and logistic RFM."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

RECENCY = ["days_since_last_event", "days_since_last_purchase"]
RFM = [*RECENCY, "purchases_90d", "purchases_365d", "revenue_365d", "orders_365d", "tenure_days"]


class FeatureLogistic:
    """Logistic regression on a few named features (missing recency = never: a large value)."""

    def __init__(self, features: list[str]) -> None:
        self.features = features

    def _matrix(self, X: pd.DataFrame) -> pd.DataFrame:
        present = [f for f in self.features if f in X.columns]
        return X[present].fillna({f: 10_000.0 for f in RECENCY if f in present})

    def fit(self, X: pd.DataFrame, y) -> FeatureLogistic:
        self.pipeline_ = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(),
                                       LogisticRegression(max_iter=1000))
        self.pipeline_.fit(self._matrix(X), np.asarray(y))
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.pipeline_.predict_proba(self._matrix(X))


BASELINES = {"recency": RECENCY, "rfm_logistic": RFM}

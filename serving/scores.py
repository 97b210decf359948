"""Purchase-propensity scores for the service: computed for every customer at load time.

Scoring everyone once (a vectorized pass) gives deciles over the whole customer base and turns a
request into a lookup; only the reasons, which need per-row SHAP values, are computed for the
customers asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from features.point_in_time import compute_customer_features
from features.warehouse import Warehouse
from training.propensity.datasets import numeric_features
from training.propensity.evaluate import deciles
from training.propensity.model import PropensityModel
from training.propensity.scoring import reason_columns


@dataclass(frozen=True)
class PropensityScores:
    model: PropensityModel
    version: str
    features: pd.DataFrame
    scores: pd.Series
    deciles: pd.Series
    as_of: pd.Timestamp

    @classmethod
    def build(cls, model: PropensityModel, version: str, warehouse: Warehouse) -> PropensityScores:
        events = warehouse.events()
        as_of = events["timestamp"].max() + pd.Timedelta(microseconds=1)
        features = numeric_features(compute_customer_features(events, as_of, warehouse.items()))
        features = features.astype(float)
        scores = pd.Series(model.predict_proba(features)[:, 1], index=features.index)
        return cls(model, version, features, scores,
                   pd.Series(deciles(scores.to_numpy()), index=features.index), as_of)

    def answer(self, customer_ids: list[str]) -> dict:
        known = [c for c in dict.fromkeys(customer_ids) if c in self.scores.index]
        reasons = reason_columns(self.model, self.features.loc[known]) if known else None
        return {
            "model_version": self.version,
            "scored_as_of": self.as_of.isoformat(),
            "scores": [{"customer_id": c, "score": round(float(self.scores[c]), 6),
                        "decile": int(self.deciles[c]),
                        "reasons": [r for r in reasons.loc[c].tolist() if r]} for c in known],
            "unknown": [c for c in dict.fromkeys(customer_ids) if c not in self.scores.index],
        }

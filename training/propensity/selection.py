"""Choosing the propensity model's family on a validation snapshot.

Small shops (a few thousand customers, purchases only) and big ones (millions, full behaviour)
want different models: on the first, a logistic model on transformed RFM or a heavily
constrained LightGBM validates best; on the second, a free LightGBM does. So the job fits every
candidate on the training snapshots and keeps the one with the best ROC-AUC on the validation
snapshot, the one after them. That snapshot also calibrates the candidates, which cannot bias
the choice: calibration is strictly rising, so it leaves ROC-AUC as it was. The test snapshot,
later than both, is only ever reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from training.propensity.model import PropensityModel

SMALL_DATA = {"monotone": True, "num_leaves": 7, "min_child_samples": 50, "reg_lambda": 10.0,
              "learning_rate": 0.03}
"""LightGBM for a few thousand customers: monotone, few leaves, strong regularization."""


def candidates(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The families compared, each with its parameters; ``params`` (the user's) apply to the
    free LightGBM and, where they do not conflict, to the others. Naming ``family`` in
    ``params`` asks for that family alone."""
    if "family" in params:
        return {str(params["family"]): params}
    shared = {k: v for k, v in params.items() if k in ("bgnbd", "calibration", "random_state",
                                                       "calibration_fraction")}
    return {"lightgbm": params,
            "lightgbm_small": {**shared, **SMALL_DATA},
            "logistic": {**shared, "family": "logistic"},
            "blend": {**shared, **SMALL_DATA, "family": "blend"}}


@dataclass(frozen=True)
class Choice:
    name: str
    params: dict[str, Any]
    model: PropensityModel
    validation: dict[str, float]
    """Each candidate's ROC-AUC on the validation snapshot."""
    candidates: dict[str, PropensityModel]
    """Every candidate fitted, the chosen one among them (to report, never to choose again)."""


def choose(fitted: dict[str, tuple[dict[str, Any], PropensityModel]], X_validation, y_validation
           ) -> Choice:
    """The candidate whose scores rank the validation snapshot best (ties: the first listed)."""
    y = np.asarray(y_validation)
    scores = {name: float(roc_auc_score(y, model.raw_score(X_validation)))
              for name, (_, model) in fitted.items()}
    best = max(scores, key=lambda name: scores[name])
    params, model = fitted[best]
    return Choice(best, params, model, scores, {name: m for name, (_, m) in fitted.items()})

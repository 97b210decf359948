"""Random hyperparameter search within a time budget, each trial a nested MLflow run.

Trials are scored on a validation split carved out of the *training* data (the last days of
it for a time split), so the holdout that decides promotion never influences the choice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import mlflow
import numpy as np

from training.progress import JobProgress
from training.recommenders import make_recommender

Sampler = Callable[[np.random.Generator], Any]

SEARCH_SPACES: dict[str, dict[str, Sampler]] = {
    "als": {
        "factors": lambda r: int(r.choice([16, 32, 64, 128])),
        "regularization": lambda r: float(10 ** r.uniform(-3, 0.5)),
        "alpha": lambda r: float(10 ** r.uniform(-1, 1.3)),
        "iterations": lambda r: int(r.choice([10, 15, 25])),
    },
    "bpr": {
        "factors": lambda r: int(r.choice([32, 64, 128])),
        "learning_rate": lambda r: float(10 ** r.uniform(-2.5, -0.7)),
        "regularization": lambda r: float(10 ** r.uniform(-4, -1)),
        "iterations": lambda r: int(r.choice([50, 100, 200])),
    },
    "itemknn": {
        "similarity": lambda r: str(r.choice(["cosine", "bm25"])),
        "neighbors": lambda r: int(r.choice([20, 50, 100, 200, 400])),
    },
    "ease": {"l2": lambda r: float(10 ** r.uniform(0.5, 3.5))},
    "content": {"ngram_max": lambda r: int(r.choice([1, 2]))},
}


def sample(model: str, rng: np.random.Generator) -> dict[str, Any]:
    if model not in SEARCH_SPACES:
        raise ValueError(f"model '{model}' has no search space; searchable: "
                         f"{', '.join(SEARCH_SPACES)}")
    return {name: draw(rng) for name, draw in SEARCH_SPACES[model].items()}


def random_search(
    model: str,
    base_params: dict[str, Any],
    score: Callable[[Any], float],
    budget_seconds: float,
    max_trials: int = 50,
    seed: int = 42,
    metric: str = "validation_score",
    progress: JobProgress | None = None,
) -> tuple[dict[str, Any], float, int]:
    """Try configurations until the budget or ``max_trials`` runs out; return the best.

    ``score(recommender)`` fits and scores one unfitted recommender (higher is better). The
    given ``base_params`` are always the first trial, so search never does worse than them.
    """
    if budget_seconds <= 0:
        raise ValueError(f"the search budget must be positive seconds, got {budget_seconds}")
    progress = progress or JobProgress()
    rng = np.random.default_rng(seed)
    started = time.monotonic()
    deadline = started + budget_seconds
    best_params, best_score, trials = dict(base_params), float("-inf"), 0
    while trials < max_trials and (trials == 0 or time.monotonic() < deadline):
        params = dict(base_params) if trials == 0 else {**base_params, **sample(model, rng)}
        with mlflow.start_run(run_name=f"{model} trial {trials}", nested=True):
            mlflow.log_params(params)
            value = score(make_recommender(model, **params))
            mlflow.log_metric(metric, value)
        trials += 1
        if value > best_score:
            best_params, best_score = params, value
        progress.trial(trials, time.monotonic() - started, budget_seconds, value, best_score)
    return best_params, best_score, trials

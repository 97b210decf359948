"""Turn a propensity model and customer features into scores people can act on.

One function, :func:`score_table`, serves both the marketers' export and the service: score,
decile, segment, the three features that moved the score most (in plain words, with the
direction), the model version and when it was scored.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from training.propensity.evaluate import deciles
from training.propensity.model import PropensityModel

_WINDOW = re.compile(r"^(.*)_(\d+)d$")


def feature_phrase(name: str) -> str:
    """``purchases_30d`` -> 'purchases in the last 30 days'; ``affinity_home`` -> 'interest in home'."""
    if name.startswith("affinity_"):
        return f"interest in {name.removeprefix('affinity_')}"
    if name.startswith("channel_share_"):
        return f"share of activity on {name.removeprefix('channel_share_')}"
    if name == "category_affinity":
        return "interest in this category"
    match = _WINDOW.match(name)
    if match:
        return f"{match.group(1).replace('_', ' ')} in the last {match.group(2)} days"
    return name.replace("_", " ")


def reasons(model: PropensityModel, X: pd.DataFrame, top: int = 3) -> list[list[str]]:
    """For each row, the ``top`` features with the largest effect on its score, in words."""
    contributions = model.contributions(X).drop(columns=["bias"])
    values = contributions.to_numpy()
    order = np.argsort(-np.abs(values), axis=1)[:, :top]
    names = np.array(contributions.columns)
    raw = X[contributions.columns].to_numpy(dtype=float)
    phrases = {name: feature_phrase(name) for name in names}
    out = []
    for row, picks in enumerate(order):
        out.append([
            f"{phrases[names[j]]}: {_value(raw[row, j])} "
            f"({'raises' if values[row, j] > 0 else 'lowers'} the score)"
            for j in picks if values[row, j] != 0
        ])
    return out


def _value(value: float) -> str:
    if np.isnan(value):
        return "never"
    return f"{value:.0f}" if abs(value) >= 10 or float(value).is_integer() else f"{value:.2f}"


def reason_columns(model: PropensityModel, X: pd.DataFrame) -> pd.DataFrame:
    """``reason_1..3`` for each row of ``X`` (the costly part: per-row SHAP values)."""
    explained = reasons(model, X)
    return pd.DataFrame({f"reason_{i + 1}": [r[i] if len(r) > i else "" for r in explained]
                         for i in range(3)}, index=X.index)


def score_table(model: PropensityModel, X: pd.DataFrame, segments: pd.Series | None,
                version: str, scored_at: pd.Timestamp, with_reasons: bool = True) -> pd.DataFrame:
    """Scores, deciles (over everyone scored), segment, reasons, model version, scored-at."""
    scores = model.predict_proba(X)[:, 1]
    table = pd.DataFrame({"customer_id": X.index.astype(str), "score": scores,
                          "decile": deciles(scores)})
    table["segment"] = (segments.reindex(X.index).fillna("unknown").to_numpy()
                        if segments is not None else "unknown")
    if with_reasons:
        table = pd.concat([table, reason_columns(model, X).reset_index(drop=True)], axis=1)
    table["model_version"] = version
    table["scored_at"] = scored_at
    return table

"""How good a propensity score is: ranking, calibration, and what a campaign would gain.

* ranking: ROC-AUC, PR-AUC (average precision);
* probabilities: Brier score, log loss, expected calibration error (ECE: the mean gap between
  predicted and observed rates over 10 equal-width bins, weighted by how many scores fall in
  each) and the calibration curve;
* campaigns: lift and cumulative gain by decile (decile 1 = the 10% with the highest scores).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    roc_auc_score,
)


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    gap = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            gap += inside.mean() * abs(p[inside].mean() - y[inside].mean())
    return float(gap)


def deciles(scores: np.ndarray) -> np.ndarray:
    """1 for the top 10% of scores ... 10 for the bottom 10%. Equal scores share a decile (the
    best one among them): a customer's decile never depends on the order of the rows."""
    scores = np.asarray(scores, dtype=float)
    higher = len(scores) - np.searchsorted(np.sort(scores), scores, side="right")
    return (higher * 10 // max(len(scores), 1)) + 1


def lift_table(y: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    """Per decile: customers, buyers, rate, lift over the base rate, cumulative gain."""
    table = pd.DataFrame({"decile": deciles(p), "y": y, "p": p}).groupby("decile").agg(
        customers=("y", "size"), buyers=("y", "sum"), mean_score=("p", "mean"))
    base = y.mean() if len(y) else np.nan
    table["rate"] = table["buyers"] / table["customers"]
    table["lift"] = table["rate"] / base if base else np.nan
    table["cumulative_gain"] = table["buyers"].cumsum() / max(table["buyers"].sum(), 1)
    return table


def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    y = np.asarray(y).astype(int)
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    if len(np.unique(y)) < 2:
        raise ValueError("the evaluation labels have a single class; AUC is undefined — use a "
                         "longer horizon or a later test cutoff")
    lift = lift_table(y, p)
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "brier": float(brier_score_loss(y, p)),
        "log_loss": float(log_loss(y, p)),
        "ece": expected_calibration_error(y, p),
        "base_rate": float(y.mean()),
        "mean_score": float(p.mean()),
        "lift_top_decile": float(lift["lift"].iloc[0]),
        "gain_top_3_deciles": float(lift["cumulative_gain"].iloc[min(2, len(lift) - 1)]),
    }


def plot_propensity(y: np.ndarray, scores: dict[str, np.ndarray], title: str, path: Path) -> Path:
    """Calibration curves and cumulative gain, one line per model."""
    figure = Figure(figsize=(11, 4.5))
    calibration, gain = figure.subplots(1, 2)
    calibration.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    edges = np.linspace(0, 1, 11)
    for name, p in scores.items():
        which = np.clip(np.digitize(p, edges[1:-1]), 0, 9)
        frame = pd.DataFrame({"bin": which, "p": p, "y": y}).groupby("bin").mean()
        calibration.plot(frame["p"], frame["y"], marker="o", label=name)
        lift = lift_table(np.asarray(y), p)
        gain.plot(np.r_[0, lift.index * 10], np.r_[0, lift["cumulative_gain"] * 100],
                  marker="o", label=name)
    gain.plot([0, 100], [0, 100], color="grey", linestyle=":", label="random")
    calibration.set(xlabel="predicted probability", ylabel="observed rate",
                    title="calibration")
    gain.set(xlabel="% of customers contacted (by score)", ylabel="% of buyers reached",
             title="cumulative gain")
    for axis in (calibration, gain):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path

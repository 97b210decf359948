"""Evaluation plots logged with every run (PNG), for people comparing runs in MLflow.

Drawn on a ``matplotlib.figure.Figure`` of their own, not through pyplot: saving one needs no
backend, so library code never chooses one (a notebook keeps its inline charts) and never leaves
a figure open.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

from matplotlib.figure import Figure

from training.evaluate import Evaluation


def plot_evaluation(evaluation: Evaluation, title: str, path: Path) -> Path:
    """Recall at 1..k, and nDCG@k by customer activity, side by side."""
    figure = Figure(figsize=(10, 4))
    curve, buckets = figure.subplots(1, 2)
    ks = range(1, len(evaluation.recall_curve) + 1)
    curve.plot(list(ks), evaluation.recall_curve, marker="o")
    curve.set(xlabel="k", ylabel="recall@k", title="recall by list length")
    curve.grid(alpha=0.3)
    by_bucket = evaluation.per_user.groupby("bucket", observed=True)["ndcg"].agg(["mean", "size"])
    bars = buckets.bar(by_bucket.index.astype(str), by_bucket["mean"], color="#4c72b0")
    for bar, size in zip(bars, by_bucket["size"], strict=True):
        buckets.annotate(f"n={size}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                         ha="center", va="bottom", fontsize=8)
    buckets.set(xlabel="customer activity (training interactions)",
                ylabel=f"nDCG@{evaluation.k}", title="by activity")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def png_base64(figure: Figure) -> str:
    """The figure as a base64 PNG, for an ``<img src="data:image/png;base64,...">`` in a page
    that opens without internet (the KPI and experiment reports)."""
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode()

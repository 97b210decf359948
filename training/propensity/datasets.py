"""Labeled snapshots for propensity models, built so that the future cannot leak in.

A snapshot at cutoff ``c`` has one row per customer known before ``c``: the point-in-time
features as of ``c`` (events strictly before it) and a label from the window ``[c, c + horizon)``
only. Training uses several past cutoffs (rolling snapshots) so there are enough examples and
the seasons are seen; :func:`plan_cutoffs` places them so that every training label window ends
before the cutoff of the snapshot the model is evaluated on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.contracts import EventType
from features.point_in_time import FeatureOptions, compute_customer_features

STRING_FEATURES = ("recent_items", "last_abandoned_cart_items")
DAY = pd.Timedelta(days=1)


def numeric_features(table: pd.DataFrame) -> pd.DataFrame:
    """The model inputs: every numeric feature (item lists stay out)."""
    return table.drop(columns=[c for c in STRING_FEATURES if c in table.columns])


@dataclass(frozen=True)
class CutoffPlan:
    """Where the snapshots go: fit on ``train``, calibrate on ``calibration``, test on ``test``."""

    train: tuple[pd.Timestamp, ...]
    calibration: pd.Timestamp
    test: pd.Timestamp
    horizon: pd.Timedelta

    def describe(self) -> dict[str, str]:
        return {"train_cutoffs": ",".join(f"{c:%Y-%m-%d}" for c in self.train),
                "calibration_cutoff": f"{self.calibration:%Y-%m-%d}",
                "test_cutoff": f"{self.test:%Y-%m-%d}", "horizon_days": str(self.horizon.days)}


def plan_cutoffs(first_event: pd.Timestamp, last_event: pd.Timestamp, horizon_days: float,
                 n_train: int = 4, step_days: float = 14.0) -> CutoffPlan:
    """Test at the latest cutoff whose label window is complete; earlier ones train.

    The calibration snapshot sits one horizon before the test cutoff, and the training
    snapshots ``step_days`` apart before that, so every training and calibration label is
    observed before the test snapshot begins (training windows may overlap each other: that is
    ordinary rolling snapshots, and no row of them is ever evaluated).
    """
    if horizon_days <= 0:
        raise ValueError(f"horizon must be a positive number of days, got {horizon_days}")
    if n_train < 1:
        raise ValueError(f"n_train must be at least 1, got {n_train}")
    if step_days <= 0:
        raise ValueError(f"step_days must be positive, got {step_days}")
    horizon, step = pd.Timedelta(days=horizon_days), pd.Timedelta(days=step_days)
    test = (last_event - horizon).floor("D")
    calibration = test - horizon
    train = tuple(calibration - step * (i + 1) for i in reversed(range(n_train)))
    if train[0] <= first_event + step:
        raise ValueError(
            f"{n_train} training snapshots {step_days:g} days apart, then a calibration and a "
            f"test snapshot with {horizon_days:g}-day label windows, need history from before "
            f"{train[0] - step:%Y-%m-%d}; the data starts {first_event:%Y-%m-%d}. Use fewer "
            "snapshots or a shorter horizon")
    return CutoffPlan(train, calibration, test, horizon)


def _window(events: pd.DataFrame, cutoff: pd.Timestamp, horizon: pd.Timedelta) -> pd.DataFrame:
    return events[(events["timestamp"] >= cutoff) & (events["timestamp"] < cutoff + horizon)]


def purchase_snapshot(events: pd.DataFrame, items: pd.DataFrame, cutoff: pd.Timestamp,
                      horizon: pd.Timedelta,
                      options: FeatureOptions | None = None) -> pd.DataFrame:
    """Features as of ``cutoff`` and ``label`` = any purchase in ``[cutoff, cutoff + horizon)``."""
    features = compute_customer_features(events, cutoff, items, options)
    window = _window(events, cutoff, horizon)
    buyers = set(window.loc[window["event_type"] == EventType.PURCHASE.value, "customer_id"])
    snapshot = features.assign(label=features.index.isin(buyers).astype(int), cutoff=cutoff)
    return snapshot


def category_snapshot(events: pd.DataFrame, items: pd.DataFrame, cutoff: pd.Timestamp,
                      horizon: pd.Timedelta,
                      options: FeatureOptions | None = None) -> pd.DataFrame:
    """One row per (customer, top-level category): will they buy in that category?"""
    features = compute_customer_features(events, cutoff, items, options)
    categories = [c.removeprefix("affinity_") for c in features.columns
                  if c.startswith("affinity_")]
    top = items.set_index("item_id")["category"].str.split("/").str[0]
    window = _window(events, cutoff, horizon)
    bought = window[window["event_type"] == EventType.PURCHASE.value]
    bought_pairs = set(zip(bought["customer_id"], bought["item_id"].map(top), strict=True))
    frames = []
    for code, category in enumerate(categories):
        frame = features.assign(category_code=code,
                                category_affinity=features[f"affinity_{category}"])
        frame["label"] = [(c, category) in bought_pairs for c in frame.index]
        frames.append(frame.assign(category=category))
    stacked = pd.concat(frames)
    stacked["label"] = stacked["label"].astype(int)
    return stacked.assign(cutoff=cutoff)


def offer_snapshot(events: pd.DataFrame, items: pd.DataFrame, cutoff: pd.Timestamp,
                   horizon: pd.Timedelta,
                   options: FeatureOptions | None = None) -> pd.DataFrame:
    """One row per offer shown in ``[cutoff, cutoff + horizon)``: redeemed within the window?

    Customer features are as of ``cutoff`` (before any of these showings), offer features
    come from the catalog, and the label is a redemption of that offer by that customer within
    the same window.
    """
    window = _window(events, cutoff, horizon)
    shown = window[window["event_type"] == EventType.OFFER_SHOWN.value]
    shown = shown.drop_duplicates(["customer_id", "item_id"])
    if shown.empty:
        return pd.DataFrame()
    features = compute_customer_features(events, cutoff, items, options)
    redeemed = window[window["event_type"] == EventType.OFFER_REDEEMED.value]
    pairs = set(zip(redeemed["customer_id"], redeemed["item_id"], strict=True))
    offers = items.set_index("item_id")
    rows = shown[["customer_id", "item_id", "timestamp"]].copy()
    rows["offer_value"] = rows["item_id"].map(offers["offer_value"]).to_numpy(dtype=float)
    rows["offer_min_basket"] = rows["item_id"].map(offers["min_basket"]).fillna(0).to_numpy(float)
    days_left = (rows["item_id"].map(offers["valid_to"]) - rows["timestamp"]) / DAY
    rows["offer_days_left"] = days_left.to_numpy(dtype=float)
    rows["label"] = [(c, o) in pairs for c, o in zip(rows["customer_id"], rows["item_id"],
                                                      strict=True)]
    joined = rows.join(features, on="customer_id", how="left")
    joined = joined.set_index("customer_id").drop(columns=["timestamp"])
    joined["label"] = joined["label"].astype(int)
    return joined.assign(cutoff=cutoff)


SNAPSHOTS = {"purchase": purchase_snapshot, "category": category_snapshot,
             "offer": offer_snapshot}


def model_inputs(snapshot: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """(X, y) of a snapshot: numeric features only; ids, cutoffs and labels removed."""
    drop = ["label", "cutoff", "category", "item_id"]
    X = numeric_features(snapshot.drop(columns=[c for c in drop if c in snapshot.columns]))
    return X.astype(float), snapshot["label"].to_numpy()

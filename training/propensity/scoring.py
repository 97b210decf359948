"""Turn a propensity model and customer features into scores people can act on.

:class:`ScoredCustomers` scores every customer once, as of the newest event, so that deciles
are over the whole customer base; reasons (the three features that moved a score most, in plain
words, with the direction) cost per-row SHAP values, so they are computed only for the customers
someone asks about. The marketers' export and the service's ``propensity`` endpoint both use it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.point_in_time import FeatureOptions, compute_customer_features
from training.propensity.datasets import numeric_features
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
    if name == "bgnbd_p_alive":
        return "chance of still being an active customer"
    if name == "bgnbd_expected_purchases_30d":
        return "expected purchases in the next 30 days"
    match = _WINDOW.match(name)
    if match:
        return f"{match.group(1).replace('_', ' ')} in the last {match.group(2)} days"
    return name.replace("_", " ")


def reasons(model: PropensityModel, X: pd.DataFrame, top: int = 3) -> list[list[str]]:
    """For each row, the ``top`` features with the largest effect on its score, in words."""
    table = reason_columns(model, X, top)
    return [[text for text in row if text] for row in table.itertuples(index=False)]


def reason_columns(model: PropensityModel, X: pd.DataFrame, top: int = 3) -> pd.DataFrame:
    """``reason_1..top`` for each row of ``X``: the inputs with the largest contributions, first
    the largest, as "phrase: value (raises|lowers the score)"; empty where fewer inputs moved
    the score. Built column by column over all rows (a million in seconds): each phrase and
    each distinct value is put in words once."""
    contributions, inputs = model.explain(X)
    names = list(inputs.columns)
    values = contributions[names].to_numpy()
    raw = inputs.to_numpy(dtype=float)
    strength = np.abs(values)
    k = min(top, len(names))
    picks = np.argpartition(-strength, k - 1, axis=1)[:, :k] if k else np.empty((len(X), 0), int)
    order = np.argsort(-np.take_along_axis(strength, picks, axis=1), axis=1, kind="stable")
    picks = np.take_along_axis(picks, order, axis=1)
    prefixes = np.array([f"{feature_phrase(n)}: " for n in names], dtype=object)
    effects = np.array([" (lowers the score)", " (raises the score)"], dtype=object)
    rows = np.arange(len(X))
    columns = {}
    for i in range(top):
        if i >= k:
            columns[f"reason_{i + 1}"] = np.full(len(X), "", dtype=object)
            continue
        j = picks[:, i]
        effect = values[rows, j]
        text = prefixes[j] + _values_in_words(raw[rows, j]) + effects[(effect > 0).astype(int)]
        text[effect == 0] = ""
        columns[f"reason_{i + 1}"] = text
    return pd.DataFrame(columns, index=X.index)


def _values_in_words(values: np.ndarray) -> np.ndarray:
    distinct, where = np.unique(values, return_inverse=True)
    return np.array([_value(v) for v in distinct], dtype=object)[where.ravel()]


def _value(value: float) -> str:
    if np.isnan(value):
        return "never"
    return f"{value:.0f}" if abs(value) >= 10 or float(value).is_integer() else f"{value:.2f}"


def scoring_time(events: pd.DataFrame, at: pd.Timestamp | None = None,
                 now: pd.Timestamp | None = None) -> pd.Timestamp:
    """The moment features are computed as of: ``at`` if given, else just after the newest
    event — but never after ``now`` (default: the clock). A time still to come would count
    every customer as inactive until then."""
    now = now if now is not None else pd.Timestamp.now(tz="UTC")
    if at is not None:
        return checked_as_of(at, now)
    if events.empty:
        return now
    return min(events["timestamp"].max() + pd.Timedelta(microseconds=1), now)


def checked_as_of(at: pd.Timestamp, now: pd.Timestamp | None = None) -> pd.Timestamp:
    """``at``, if it is a timezone-aware time that has come (else an error that says so)."""
    now = now if now is not None else pd.Timestamp.now(tz="UTC")
    at = pd.Timestamp(at)
    if at.tzinfo is None:
        raise ValueError(f"as-of time {at} has no timezone; use UTC, e.g. 2024-06-01T00:00:00Z")
    if at > now:
        raise ValueError(f"as-of time {at.isoformat()} is in the future (now "
                         f"{now.isoformat(timespec='seconds')}); scores are computed from what "
                         "customers have done")
    return at


def customer_features(events: pd.DataFrame, items: pd.DataFrame, at: pd.Timestamp | None = None,
                      options: FeatureOptions | None = None
                      ) -> tuple[pd.Timestamp, pd.DataFrame]:
    """Every customer's numeric model inputs as of ``scoring_time(events, at)``, with that
    moment: what the propensity and offer-response models score from. ``options`` are the
    model's (``PropensityModel.feature_options_``)."""
    as_of = scoring_time(events, at)
    table = compute_customer_features(events, as_of, items, options)
    return as_of, numeric_features(table).astype(float)


@dataclass(frozen=True)
class ScoredCustomers:
    """Every customer's score and decile as of ``as_of``, with the features behind them."""

    model: PropensityModel
    version: str
    features: pd.DataFrame
    scores: pd.Series
    deciles: pd.Series
    as_of: pd.Timestamp

    @classmethod
    def score(cls, model: PropensityModel, version: str, events: pd.DataFrame,
              items: pd.DataFrame, at: pd.Timestamp | None = None) -> ScoredCustomers:
        """Features as of ``scoring_time(events, at)``, computed as the model's were when it
        was trained, then one scoring pass."""
        as_of, features = customer_features(events, items, at, model.feature_options_)
        scores = pd.Series(model.predict_proba(features)[:, 1], index=features.index)
        return cls(model, version, features, scores,
                   pd.Series(deciles(scores.to_numpy()), index=features.index), as_of)

    def reasons(self, customer_ids: Sequence[str]) -> pd.DataFrame:
        """``reason_1..3`` for these (known) customers, indexed by customer id."""
        return reason_columns(self.model, self.features.loc[list(customer_ids)])

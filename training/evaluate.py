"""Honest offline evaluation of recommenders: splits that cannot leak, ranking metrics at k.

Splits
* :func:`time_split` — the default for shop data: everything before a global cutoff trains,
  the next ``test_days`` test. No event of the test period can reach training.
* :func:`stratified_split` — the Microsoft Recommenders protocol for MovieLens
  (``python_stratified_split``): each customer's interactions are shuffled with a fixed seed and
  75% go to training, so every tested customer is known to the model.
* :func:`leave_last_out` — each customer's last ``n`` relevant events (purchases) are the test,
  and only what they did before them trains: the "next purchase" protocol of session and
  sequential recommenders.

Metrics (binary relevance, ``k`` recommendations per customer, averaged over customers with at
least one relevant test item who are known to the model)
* precision@k, recall@k, hit rate@k;
* nDCG@k = DCG / ideal DCG over min(relevant, k) positions;
* MAP@k as Microsoft Recommenders computes it: the sum of precision at each hit's rank,
  divided by the number of relevant items (so it is comparable with their published tables);
* catalog coverage (share of items recommended to anyone) and popularity bias (mean popularity
  percentile of what is recommended: 1.0 means only the most popular item).
Each is also broken down by customer activity (cold / warm / heavy, by training interactions).

For shop data two views matter: "new items" (items the customer already interacted with are
neither recommended nor counted relevant: discovery) and "all items" (nothing filtered, repeat
purchases count: what a replenishment-heavy shop also wants).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.contracts import EventType
from training.interactions import Interactions
from training.recommenders.base import Recommender

ACTIVITY_BUCKETS = (("cold", 0, 5), ("warm", 6, 49), ("heavy", 50, np.inf))
"""(name, min, max) training interactions per customer, inclusive."""


@dataclass
class Split:
    """Training and test events, and how they were cut (logged with every run)."""

    train: pd.DataFrame
    test: pd.DataFrame
    description: dict[str, object]


def time_split(events: pd.DataFrame, cutoff: pd.Timestamp | None = None,
               test_days: float = 14.0) -> Split:
    """Train on events before ``cutoff``; test on the ``test_days`` after it.

    Without a cutoff, the last ``test_days`` of the data are the test period.
    """
    if test_days <= 0:
        raise ValueError(f"test_days must be positive, got {test_days}")
    if events.empty:
        raise ValueError("there are no events to split; load or generate data first")
    end = events["timestamp"].max()
    if cutoff is None:
        cutoff = end - pd.Timedelta(days=test_days)
    cutoff = pd.Timestamp(cutoff)
    if cutoff.tzinfo is None:
        raise ValueError(f"cutoff {cutoff} has no timezone; use UTC, e.g. 2024-06-01T00:00:00Z")
    horizon = cutoff + pd.Timedelta(days=test_days)
    train = events[events["timestamp"] < cutoff]
    test = events[(events["timestamp"] >= cutoff) & (events["timestamp"] < horizon)]
    if train.empty or test.empty:
        raise ValueError(f"cutoff {cutoff} leaves {len(train)} training and {len(test)} test events; "
                         f"the data runs from {events['timestamp'].min()} to {end}")
    return Split(train, test, {"split": "time", "cutoff": cutoff.isoformat(),
                               "test_days": test_days})


def stratified_split(events: pd.DataFrame, ratio: float = 0.75, seed: int = 42,
                     by: str = "customer_id") -> Split:
    """Per-customer random split (Microsoft Recommenders' ``python_stratified_split``)."""
    if not 0 < ratio < 1:
        raise ValueError(f"ratio must be between 0 and 1, got {ratio}")
    rng = np.random.default_rng(seed)
    shuffled = events.iloc[rng.permutation(len(events))]
    rank = shuffled.groupby(by, sort=False).cumcount().to_numpy()
    size = shuffled.groupby(by, sort=False)[by].transform("size").to_numpy()
    in_train = rank < np.round(size * ratio)
    return Split(shuffled[in_train].sort_index(), shuffled[~in_train].sort_index(),
                 {"split": "stratified", "ratio": ratio, "seed": seed, "by": by})


def leave_last_out(events: pd.DataFrame, n: int = 1,
                   relevant_types: tuple[str, ...] = (EventType.PURCHASE.value,)) -> Split:
    """Each customer's last ``n`` relevant events test; their events before the session of the
    first of them train (the views and cart that led to it would give it away); whatever else
    they did from then on is left out (it would tell the model the future). Customers with no
    relevant event only train."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if events.empty:
        raise ValueError("there are no events to split; load or generate data first")
    ordered = events.sort_values("timestamp", kind="stable")
    relevant = ordered[ordered["event_type"].isin(relevant_types)]
    if relevant.empty:
        raise ValueError(f"no {', '.join(relevant_types)} event to leave out; leave-last-out "
                         "tests on each customer's last ones")
    last = relevant.groupby("customer_id", sort=False).tail(n)
    held_from = _session_start(ordered, last).groupby(last["customer_id"]).min()
    cut = ordered["customer_id"].map(held_from)
    train = ordered[cut.isna() | (ordered["timestamp"] < cut)]
    return Split(train.sort_index(), last.sort_index(),
                 {"split": "leave_last_out", "n": n, "relevant": ",".join(relevant_types)})


def _session_start(events: pd.DataFrame, held: pd.DataFrame) -> pd.Series:
    """When the session of each held-out event began (its own time where it has no session):
    the views and cart that led to a purchase belong to the test, not to training."""
    if "session_id" not in events.columns:
        return held["timestamp"]
    starts = events.dropna(subset=["session_id"]).groupby(["customer_id", "session_id"])[
        "timestamp"].min()
    keys = pd.MultiIndex.from_frame(held[["customer_id", "session_id"]])
    begun = pd.Series(starts.reindex(keys).to_numpy(), index=held.index)
    return begun.where(begun.notna(), held["timestamp"])


PROTOCOLS = ("time", "stratified", "leave_last_out")
"""The splits ``nextbest evaluate`` runs, by name."""


@dataclass
class Evaluation:
    """Aggregate metrics (``name@k`` and ``name@k/bucket``) and the per-customer rows."""

    k: int
    metrics: dict[str, float]
    per_user: pd.DataFrame
    recall_curve: np.ndarray = field(default_factory=lambda: np.empty(0))
    """Mean recall at 1..k, for the plot."""


def evaluate(
    model: Recommender,
    train: Interactions,
    test: pd.DataFrame,
    k: int = 10,
    exclude_seen: bool = True,
    relevant_types: tuple[str, ...] = (EventType.PURCHASE.value,),
    batch_size: int = 2000,
) -> Evaluation:
    """Rank metrics of ``model`` (fitted on ``train.matrix``) against ``test`` events."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    relevant, unknown = _relevance(train, test, relevant_types, exclude_seen)
    per_customer = np.diff(relevant.indptr) + unknown
    users = np.flatnonzero(per_customer > 0)
    if users.size == 0:
        raise ValueError("no customer in the test period is known to the model and has a relevant "
                         f"({', '.join(relevant_types)}) event; widen the test window")
    hits = np.zeros((users.size, k), dtype=bool)
    recommended: list[np.ndarray] = []
    for lo in range(0, users.size, batch_size):
        rows = users[lo:lo + batch_size]
        ids, scores = model.recommend(rows, train.matrix[rows], N=k,
                                      filter_already_liked_items=exclude_seen)
        ids = np.where(np.isfinite(scores), ids, -1)
        width = ids.shape[1]
        valid = ids >= 0
        hit_block = np.zeros((rows.size, width), dtype=bool)
        if valid.any():
            r, c = np.nonzero(valid)
            hit_block[r, c] = np.asarray(relevant[rows[r], ids[r, c]]).ravel() > 0
        hits[lo:lo + rows.size, :width] = hit_block
        recommended.append(ids[valid])
    n_relevant = per_customer[users]
    per_user = _per_user_metrics(hits, n_relevant, k)
    n_train = np.diff(train.matrix.indptr)[users]
    per_user.insert(0, "customer_id", train.user_ids[users])
    per_user["n_train"] = n_train
    per_user["bucket"] = _bucket(n_train)
    metrics = {f"{name}@{k}": float(per_user[name].mean())
               for name in ("precision", "recall", "ndcg", "map", "hit_rate")}
    all_recommended = np.concatenate(recommended) if recommended else np.empty(0, dtype=int)
    metrics[f"coverage@{k}"] = float(np.unique(all_recommended).size / train.shape[1])
    metrics[f"popularity_bias@{k}"] = _popularity_bias(train, all_recommended)
    metrics["customers_evaluated"] = float(users.size)
    for bucket, group in per_user.groupby("bucket", observed=True):
        metrics[f"ndcg@{k}/{bucket}"] = float(group["ndcg"].mean())
        metrics[f"recall@{k}/{bucket}"] = float(group["recall"].mean())
        metrics[f"customers/{bucket}"] = float(len(group))
    curve = (np.cumsum(hits, axis=1) / n_relevant[:, None]).mean(axis=0)
    return Evaluation(k, metrics, per_user, curve)


def _relevance(train: Interactions, test: pd.DataFrame, relevant_types: tuple[str, ...],
               exclude_seen: bool) -> tuple[sp.csr_matrix, np.ndarray]:
    """What each known customer found relevant in the test: a customers × items 0/1 matrix over
    the items the model knows, and per customer the number of distinct relevant items it does
    not know. Those count against recall like any other (dropping them would flatter every
    model), but no model can recommend them, so they need no column."""
    wanted = test[test["event_type"].isin(relevant_types)]
    rows = train.user_rows(wanted["customer_id"].to_numpy())
    cols = train.item_columns(wanted["item_id"].to_numpy())
    known_user = rows >= 0
    known_item = known_user & (cols >= 0)
    matrix = sp.csr_matrix((np.ones(known_item.sum(), dtype=np.float32),
                            (rows[known_item], cols[known_item])), shape=train.shape)
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    if exclude_seen:
        seen = train.matrix.copy()
        seen.data[:] = 1.0
        matrix = matrix - matrix.multiply(seen)
        matrix.eliminate_zeros()
    new_items = known_user & (cols < 0)
    pairs = pd.DataFrame({"row": rows[new_items],
                          "item": wanted["item_id"].to_numpy()[new_items]}).drop_duplicates()
    unknown = np.bincount(pairs["row"].to_numpy(dtype=np.int64), minlength=train.shape[0])
    return sp.csr_matrix(matrix), unknown


def _per_user_metrics(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> pd.DataFrame:
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits * discounts).sum(axis=1)
    ideal = np.cumsum(discounts)[np.minimum(n_relevant, k) - 1]
    cumulative = np.cumsum(hits, axis=1)
    precision_at_hit = cumulative / np.arange(1, k + 1)
    n_hits = hits.sum(axis=1)
    return pd.DataFrame({
        "hits": n_hits,
        "n_relevant": n_relevant,
        "precision": n_hits / k,
        "recall": n_hits / n_relevant,
        "ndcg": dcg / ideal,
        "map": (precision_at_hit * hits).sum(axis=1) / n_relevant,
        "hit_rate": (n_hits > 0).astype(float),
    })


def _bucket(n_train: np.ndarray) -> pd.Categorical:
    names = [b[0] for b in ACTIVITY_BUCKETS]
    labels = np.empty(n_train.size, dtype=object)
    for name, low, high in ACTIVITY_BUCKETS:
        labels[(n_train >= low) & (n_train <= high)] = name
    return pd.Categorical(labels, categories=names)


def _popularity_bias(train: Interactions, recommended: np.ndarray) -> float:
    if recommended.size == 0:
        return float("nan")
    popularity = train.popularity()
    percentile = pd.Series(popularity).rank(pct=True).to_numpy()
    return float(percentile[recommended].mean())

"""Buy again: each customer's own items, ranked by how due they are to be bought again.

Retail customers rebuy: consumables, favourite lines, restocks. Collaborative filtering either
leaves out what a customer bought (discovery) or ranks it like any other item; neither knows
that this customer buys coffee every three weeks and last bought it twenty days ago.

For each item a customer bought (on distinct days, up to ``as_of``):

* **will they rebuy it at all**: ``(rebuys + k x r) / (purchases - 1 + k)``, the customer's own
  rebuys shrunk toward the item's repeat rate ``r`` (the share of its buyers who bought it on
  two days or more, itself shrunk toward the shop's) with ``prior_strength`` k;
* **is it due**: the days since the last purchase over the cycle, the customer's own median gap
  when they bought it at least twice, else the item's typical one (the median of its buyers'),
  else the shop's; due-ness is ``exp(-(ln ratio)^2 / (2 spread^2))``: 1 when a cycle has just
  passed, falling off before (just bought) and long after (they stopped). With
  ``horizon_days``, an item due at any time in the next so many days is due now (for a list
  read over the next weeks, as an email's is).

The score is the product, in [0, 1]. Items marked not ``repeatable`` in the catalog are never
proposed (where the catalog marks any item repeatable; otherwise the purchases decide). The
reason says the cycle: "you buy this about every 3 weeks", or "often bought again after about
a month".

It keeps implicit's ``recommend(userid, user_items, N, filter_already_liked_items, ...)`` so the
evaluation and the blend (``RankBlend``) treat it like any recommender; its scores are those at
``as_of`` (fitted), while :meth:`BuyAgain.due_for` scores a customer of the fitted history with
their purchases since (the service's buy-again shelf) and :meth:`BuyAgain.due` any purchase
history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from training.interactions import Interactions
from training.recommenders.base import NotFittedError, _explain

DAY = pd.Timedelta(days=1)


class BuyAgainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prior_strength: float = Field(2.0, gt=0, description="Purchases' worth of the item's repeat "
                                  "rate in each customer's own rate.")
    spread: float = Field(0.5, gt=0, le=5, description="Width of due-ness, in log cycles.")
    horizon_days: float = Field(0.0, ge=0, le=365, description="Due at any time in the next "
                                "this many days counts as due now (0: due today).")
    min_cycle_days: float = Field(1.0, gt=0, description="Shortest cycle believed.")
    min_score: float = Field(0.05, ge=0, le=1, description="The shelf (due_for) shows only "
                             "items at least this likely to be bought again now.")


@dataclass(frozen=True)
class ItemCycles:
    """Per item: repeat rate and typical cycle in days (NaN: none observed), and the shop's;
    also as dictionaries, for the one item at a time a request looks up (no pandas there)."""

    repeat_rate: pd.Series
    cycle_days: pd.Series
    shop_rate: float
    shop_cycle_days: float
    rates: dict[str, float]
    cycles: dict[str, float]
    """``cycle_days`` where observed."""


@dataclass(frozen=True)
class _History:
    """The fitted (customer, item) pairs as arrays grouped by customer, with a customer's
    slice found by one dictionary lookup."""

    where: dict[str, tuple[int, int]]
    items: np.ndarray
    purchases: np.ndarray
    last: np.ndarray
    """POSIX days of the last purchase."""
    own: np.ndarray
    rate: np.ndarray
    cycle: np.ndarray
    """The item's typical cycle (the shop's where it has none)."""
    allowed: np.ndarray

    @classmethod
    def of(cls, pairs: pd.DataFrame, rate: np.ndarray, cycle: np.ndarray,
           not_repeatable: set[str]) -> _History:
        customers = pairs["customer_id"].to_numpy()
        names, first, counts = np.unique(customers, return_index=True, return_counts=True)
        where = dict(zip(names.tolist(), zip((first).tolist(), (first + counts).tolist(),
                                             strict=True), strict=True))
        last = pairs["last"].to_numpy(dtype="datetime64[s]").astype(np.int64) / 86400.0
        return cls(where, pairs["item_id"].to_numpy(), pairs["purchases"].to_numpy(float), last,
                   pairs["own_cycle"].to_numpy(float), rate, cycle,
                   ~pairs["item_id"].isin(not_repeatable).to_numpy())


class BuyAgain:
    """scikit-learn style: hyperparameters in the constructor, ``fit`` returns ``self``."""

    def __init__(self, **params: Any) -> None:
        try:
            self.config = BuyAgainConfig(**params)
        except ValidationError as error:
            raise ValueError(_explain(type(self).__name__, BuyAgainConfig, error)) from None

    def get_params(self) -> dict[str, Any]:
        return self.config.model_dump()

    # ------------------------------------------------------------------ fit
    def fit(self, purchases: pd.DataFrame, interactions: Interactions | None,
            as_of: pd.Timestamp, items: pd.DataFrame | None = None) -> Self:
        """Learn cycles from ``purchases`` (customer_id, item_id, timestamp) before ``as_of``;
        with ``interactions``, also score every (customer, item) bought, as of then, on its
        rows and columns (for ``recommend``)."""
        history = _purchase_days(purchases[purchases["timestamp"] < as_of])
        if history.empty:
            raise ValueError(f"there are no purchases before {as_of}; buy again learns from "
                             "purchases")
        self.as_of_ = pd.Timestamp(as_of)
        self.not_repeatable_ = _not_repeatable(items)
        pairs = _pairs(history)
        self.cycles_ = _item_cycles(pairs, self.config.prior_strength)
        self.history_ = _History.of(pairs, *self._item_terms(pairs["item_id"]),
                                    self.not_repeatable_)
        if interactions is None:
            return self
        scored = self._score_pairs(pairs, self.as_of_)
        rows = interactions.user_rows(scored["customer_id"].to_numpy())
        cols = interactions.item_columns(scored["item_id"].to_numpy())
        known = (rows >= 0) & (cols >= 0) & (scored["score"].to_numpy() > 0)
        self.scores_ = sp.csr_matrix((scored["score"].to_numpy()[known],
                                      (rows[known], cols[known])), shape=interactions.shape)
        return self

    def _score_pairs(self, pairs: pd.DataFrame, now: pd.Timestamp) -> pd.DataFrame:
        """``pairs`` (customer_id, item_id, purchases, last, own_cycle) with ``score``,
        ``cycle_days`` and ``own`` (the cycle is the customer's own)."""
        rate, fallback = self._item_terms(pairs["item_id"])
        own = pairs["own_cycle"].to_numpy(dtype=float)
        since = (now - pairs["last"]).to_numpy() / DAY
        score, cycle = self._scores(pairs["purchases"].to_numpy(dtype=float), since, own, rate,
                                    fallback)
        score[pairs["item_id"].isin(self.not_repeatable_).to_numpy()] = 0.0
        return pairs.assign(score=score, cycle_days=cycle, own=np.isfinite(own))

    def _item_terms(self, item_ids: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """Each item's repeat rate and typical cycle (the shop's where it has none)."""
        cycles = self.cycles_
        rate = cycles.repeat_rate.reindex(item_ids).fillna(cycles.shop_rate).to_numpy()
        cycle = cycles.cycle_days.reindex(item_ids).fillna(cycles.shop_cycle_days).to_numpy()
        return rate, cycle

    def _scores(self, purchases: np.ndarray, since_days: np.ndarray, own_cycle: np.ndarray,
                rate: np.ndarray, item_cycle: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The module docstring's score, and the cycle it used, for arrays of pairs."""
        c = self.config
        cycle = np.maximum(np.where(np.isfinite(own_cycle), own_cycle, item_cycle),
                           c.min_cycle_days)
        rebuy = (purchases - 1 + c.prior_strength * rate) / (purchases - 1 + c.prior_strength)
        since = np.maximum(since_days, 0.0)
        # the point of the window [since, since + horizon] nearest the cycle
        nearest = np.clip(cycle, since, since + c.horizon_days)
        due = np.exp(-np.log(np.maximum(nearest, 1e-3) / cycle) ** 2 / (2 * c.spread**2))
        return rebuy * due, cycle

    # ------------------------------------------------------------------ recommend
    def recommend(self, userid, user_items: sp.csr_matrix | None = None, N: int = 10,
                  filter_already_liked_items: bool = False,
                  filter_items: np.ndarray | None = None, **_: Any
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``N`` item columns and scores as of ``as_of_`` for customer rows (implicit's
        shape: -1 and -inf pad a customer with fewer items due). Everything it proposes was
        bought before, so with ``filter_already_liked_items`` it proposes nothing."""
        if not hasattr(self, "scores_"):
            raise NotFittedError("this BuyAgain is not fitted yet; call fit(...) first")
        single = np.isscalar(userid)
        rows = np.atleast_1d(np.asarray(userid))
        ids = np.full((rows.size, N), -1, dtype=np.int64)
        scores = np.full((rows.size, N), -np.inf, dtype=np.float32)
        if not filter_already_liked_items:
            blocked = set(np.asarray(filter_items).tolist()) if filter_items is not None else set()
            for r, row in enumerate(rows):
                if row < 0:
                    continue
                start, end = self.scores_.indptr[row], self.scores_.indptr[row + 1]
                cols, values = self.scores_.indices[start:end], self.scores_.data[start:end]
                keep = [j for j in range(cols.size) if cols[j] not in blocked]
                cols, values = cols[keep], values[keep]
                top = np.argsort(-values, kind="stable")[:N]
                ids[r, :top.size], scores[r, :top.size] = cols[top], values[top]
        return (ids[0], scores[0]) if single else (ids, scores)

    def due(self, purchases: pd.DataFrame, now: pd.Timestamp, N: int = 10) -> pd.DataFrame:
        """One customer's items due now from their purchase history (item_id, timestamp):
        item_id, score and the reason, best first."""
        if not hasattr(self, "cycles_"):
            raise NotFittedError("this BuyAgain is not fitted yet; call fit(...) first")
        history = _purchase_days(purchases.assign(customer_id="_")[purchases["timestamp"] <= now])
        return self._due(_pairs(history), pd.Timestamp(now), N)

    def due_for(self, customer_id: str, now: pd.Timestamp, N: int = 10,
                fresh: dict[str, float] | None = None) -> list[tuple[str, float, str]]:
        """(item_id, score, reason), best first, for a customer of the fitted history, with
        ``fresh`` purchases since (item -> POSIX seconds, the online state's): what the
        service's buy-again shelf shows. Array lookups, no DataFrame: it runs per request."""
        if not hasattr(self, "history_"):
            raise NotFittedError("this BuyAgain is not fitted yet; call fit(...) first")
        h = self.history_
        start, end = h.where.get(customer_id, (0, 0))
        items, purchases, last = list(h.items[start:end]), h.purchases[start:end].copy(), \
            h.last[start:end].copy()
        own, rate, cycle = h.own[start:end].copy(), h.rate[start:end], h.cycle[start:end]
        allowed = h.allowed[start:end]
        since_snapshot = self.as_of_.timestamp() / 86400.0
        new = {i: w / 86400.0 for i, w in (fresh or {}).items() if w / 86400.0 > since_snapshot}
        for item, day in new.items():
            if item in items:
                j = items.index(item)
                own[j] = own[j] if np.isfinite(own[j]) else day - last[j]
                purchases[j] += 1
                last[j] = max(last[j], day)
        extra = [i for i in new if i not in items and i not in self.not_repeatable_]
        if extra:
            c = self.cycles_
            items += extra
            purchases = np.r_[purchases, np.ones(len(extra))]
            last, own = np.r_[last, [new[i] for i in extra]], np.r_[own, np.full(len(extra), np.nan)]
            rate = np.r_[rate, [c.rates.get(i, c.shop_rate) for i in extra]]
            cycle = np.r_[cycle, [c.cycles.get(i, c.shop_cycle_days) for i in extra]]
            allowed = np.r_[allowed, np.ones(len(extra), bool)]
        if not items:
            return []
        score, used = self._scores(purchases, now.timestamp() / 86400.0 - last, own, rate, cycle)
        score = np.where(allowed, score, 0.0)
        floor = max(self.config.min_score, np.finfo(float).tiny)
        best = [j for j in np.argsort(-score, kind="stable")[:N] if score[j] >= floor]
        return [(items[j], float(score[j]), reason(used[j], bool(np.isfinite(own[j]))))
                for j in best]

    def _due(self, pairs: pd.DataFrame, now: pd.Timestamp, N: int) -> pd.DataFrame:
        if pairs.empty:
            return pd.DataFrame({"item_id": [], "score": [], "reason": []})
        scored = self._score_pairs(pairs, now)
        scored = scored[scored["score"] > 0].nlargest(N, "score")
        return pd.DataFrame({"item_id": scored["item_id"].to_numpy(),
                             "score": scored["score"].to_numpy(),
                             "reason": [reason(d, o) for d, o in
                                        zip(scored["cycle_days"], scored["own"], strict=True)]})


def reason(cycle_days: float, own: bool) -> str:
    """"you buy this about every 3 weeks" (their own cycle) or "often bought again after about
    a month" (the item's)."""
    count, unit = _span(cycle_days)
    if own:
        return f"you buy this about every {unit if count == 1 else f'{count} {unit}s'}"
    return f"often bought again after about {f'a {unit}' if count == 1 else f'{count} {unit}s'}"


def _span(days: float) -> tuple[int, str]:
    if days < 6.5:
        return max(round(days), 1), "day"
    if days < 56:
        return round(days / 7), "week"
    return round(days / 30.4), "month"


# ---------------------------------------------------------------------- learning the cycles
def _purchase_days(purchases: pd.DataFrame) -> pd.DataFrame:
    """One row per customer, item and day bought (several lines on a day are one purchase)."""
    days = purchases[["customer_id", "item_id"]].assign(
        day=purchases["timestamp"].dt.floor("D"))
    return days.drop_duplicates()


def _pairs(history: pd.DataFrame) -> pd.DataFrame:
    """Per (customer, item): purchases (days), the last, and the median gap in days if two+."""
    ordered = history.sort_values(["customer_id", "item_id", "day"])
    gap = ordered.groupby(["customer_id", "item_id"], sort=False)["day"].diff() / DAY
    grouped = ordered.assign(gap=gap).groupby(["customer_id", "item_id"], sort=False)
    return pd.DataFrame({"purchases": grouped.size(), "last": grouped["day"].max(),
                         "own_cycle": grouped["gap"].median()}).reset_index()


def _item_cycles(pairs: pd.DataFrame, prior_strength: float) -> ItemCycles:
    repeated = pairs["purchases"] >= 2
    shop_rate = float(repeated.mean())
    shop_cycle = float(pairs.loc[repeated, "own_cycle"].median()) if repeated.any() else 30.0
    per_item = pairs.assign(repeated=repeated).groupby("item_id")
    buyers, repeaters = per_item.size(), per_item["repeated"].sum()
    rate = (repeaters + prior_strength * shop_rate) / (buyers + prior_strength)
    cycle = pairs[repeated].groupby("item_id")["own_cycle"].median()
    return ItemCycles(rate, cycle.reindex(rate.index), shop_rate,
                      shop_cycle if np.isfinite(shop_cycle) else 30.0, rate.to_dict(),
                      cycle.to_dict())


def _not_repeatable(items: pd.DataFrame | None) -> set[str]:
    """Items the catalog says are not bought again, where it says so of any item: a catalog
    that marks none repeatable (the column's default, and what imports write) has not said,
    and the purchases decide."""
    if items is None or "repeatable" not in items.columns or not items["repeatable"].any():
        return set()
    return set(items.loc[items["repeatable"].eq(False), "item_id"])


# ---------------------------------------------------------------------- blending
@dataclass
class RankBlend:
    """The all-items ranking: a collaborative recommender's (unfiltered: it also proposes what
    the customer looked at or bought) and buy again's, merged by how often each source's rank r
    turned out bought in a validation window, ``hit_rates[source][r]``. Two ranked lists of
    unlike scores are made comparable by what their ranks are worth, learned, not by a
    hand-set weight; an item both propose is worth ``1 - (1 - a)(1 - b)`` (either was right).
    In the new-items view there is nothing to buy again: it is ``discovery``'s (the recommender
    best at new items; default the collaborative one)."""

    collaborative: Any
    buy_again: BuyAgain
    hit_rates: dict[str, np.ndarray]
    """``collaborative`` and ``buy_again``: worth of ranks 1..N."""
    discovery: Any = None

    def recommend(self, userid, user_items: sp.csr_matrix, N: int = 10,
                  filter_already_liked_items: bool = False,
                  filter_items: np.ndarray | None = None, **options: Any
                  ) -> tuple[np.ndarray, np.ndarray]:
        if filter_already_liked_items:
            return (self.discovery or self.collaborative).recommend(
                userid, user_items, N=N, filter_already_liked_items=True,
                filter_items=filter_items, **options)
        single = np.isscalar(userid)
        rows = np.atleast_1d(np.asarray(userid))
        cf_ids, cf_scores = self.collaborative.recommend(rows, user_items, N=N,
                                                         filter_already_liked_items=False,
                                                         filter_items=filter_items, **options)
        ba_ids, ba_scores = self.buy_again.recommend(rows, N=N, filter_items=filter_items)
        ids = np.full((rows.size, N), -1, dtype=np.int64)
        scores = np.full((rows.size, N), -np.inf, dtype=np.float32)
        for r in range(rows.size):
            missed: dict[int, float] = {}  # chance that neither source's rank was right
            for item, worth in [*_worth(cf_ids[r], cf_scores[r], self.hit_rates["collaborative"]),
                                *_worth(ba_ids[r], ba_scores[r], self.hit_rates["buy_again"])]:
                missed[item] = missed.get(item, 1.0) * (1.0 - worth)
            ranked = sorted(missed.items(), key=lambda pair: pair[1])[:N]  # stable: ties keep
            for j, (item, miss) in enumerate(ranked):                      # collaborative first
                ids[r, j], scores[r, j] = item, 1.0 - miss
        return (ids[0], scores[0]) if single else (ids, scores)


def _worth(ids: np.ndarray, scores: np.ndarray, rates: np.ndarray) -> list[tuple[int, float]]:
    valid = np.flatnonzero((ids >= 0) & np.isfinite(scores))
    return [(int(ids[j]), float(rates[min(j, rates.size - 1)])) for j in valid]


def rank_hit_rates(model: Any, train: Interactions, validation: pd.DataFrame, N: int,
                   exclude_seen: bool) -> np.ndarray:
    """Share of customers (with a purchase in ``validation``) for whom ``model``'s item at rank
    r was bought there, r = 1..N, kept non-increasing (a lower rank is never worth more)."""
    bought = validation[validation["event_type"] == "purchase"]
    rows = train.user_rows(bought["customer_id"].to_numpy())
    cols = train.item_columns(bought["item_id"].to_numpy())
    known = (rows >= 0) & (cols >= 0)
    truth = sp.csr_matrix((np.ones(known.sum()), (rows[known], cols[known])), shape=train.shape)
    users = np.unique(rows[rows >= 0])
    if users.size == 0:
        raise ValueError("no known customer bought anything in the validation window; widen it")
    ids, scores = model.recommend(users, train.matrix[users], N=N,
                                  filter_already_liked_items=exclude_seen)
    hits = np.zeros(ids.shape)
    valid = (ids >= 0) & np.isfinite(scores)
    r, c = np.nonzero(valid)
    hits[r, c] = np.asarray(truth[users[r], ids[r, c]]).ravel() > 0
    return np.minimum.accumulate(hits.mean(axis=0))

"""What the service knows about the shop at serving time, precomputed once per load.

The catalog (kinds, categories, prices, stock, offer terms), each customer's segment, and their
recent behaviour — purchases, views, redemptions — read from the warehouse's latest events.
What a customer did since this snapshot comes from the online state (``features.online``) and
is merged in per request by the pipeline. Everything a request needs is a dictionary lookup
here, never a DataFrame operation.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from features.contracts import CONTACT_CHANNELS, LIST_SEPARATOR, EventType, ItemKind
from features.point_in_time import INTERACTION_WEIGHTS
from features.warehouse import Warehouse
from training.recommenders.buy_again import BuyAgain

POPULAR_KEEP = 300
NEW_ITEM_DAYS = 30


@dataclass(slots=True)
class Item:
    item_id: str
    kind: str
    title: str
    category: str
    top: str
    price: float | None
    in_stock: bool
    repeatable: bool
    created_at: pd.Timestamp | None
    offer_value: float | None = None
    valid_from: pd.Timestamp | None = None
    valid_to: pd.Timestamp | None = None
    segments: frozenset[str] = frozenset()
    channels: frozenset[str] = frozenset()
    min_basket: float = 0.0
    redemption_limit: int | None = None


@dataclass(slots=True)
class Behaviour:
    purchased: set[str] = field(default_factory=set)
    recent_views: list[str] = field(default_factory=list)  # newest first
    redemptions: Counter = field(default_factory=Counter)


@dataclass
class ShopView:
    items: dict[str, Item]
    segments: dict[str, str]
    behaviour: dict[str, Behaviour]
    popular: dict[tuple[str, str], list[tuple[str, float]]]
    """(segment or '*', channel or '*') -> products by recent popularity, best first."""
    popular_content: list[tuple[str, float]]
    offer_rate: dict[str, float]
    """Smoothed redemption rate of each offer when shown: the prior for its response."""
    new_products: list[str]
    as_of: pd.Timestamp
    consents: dict[str, frozenset[str]] = field(default_factory=dict)
    """Customer -> the contact channels they agreed to (email, sms, push)."""
    last_purchase: dict[str, float] = field(default_factory=dict)
    """Customer -> their latest purchase in the warehouse, epoch seconds (lapsing journeys)."""
    timezones: dict[str, str] = field(default_factory=dict)
    """Customer -> their IANA time zone, where the customers table has one."""
    segment_channels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Segment -> the contact channels its customers send events from (opened or clicked a
    message there), most engaged first: a journey's best channel for a customer who has not
    reacted on any yet."""
    buy_again: BuyAgain | None = None
    """Each customer's purchases by item and the items' cycles: the buy-again shelf."""

    def customer(self, customer_id: str) -> Behaviour:
        found = self.behaviour.get(customer_id)  # no default built for the customers we know
        return found if found is not None else Behaviour()

    @cached_property
    def offers(self) -> list[Item]:
        return [i for i in self.items.values() if i.kind == ItemKind.OFFER.value]

    @cached_property
    def content_by_top(self) -> dict[str, list[Item]]:
        grouped: dict[str, list[Item]] = defaultdict(list)
        for item in self.items.values():
            if item.kind == ItemKind.CONTENT.value:
                grouped[item.top].append(item)
        return dict(grouped)


def _split(value) -> frozenset[str]:
    if not isinstance(value, str) or not value:
        return frozenset()
    return frozenset(part for part in value.split(LIST_SEPARATOR) if part)


def _float(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def load_shop(warehouse: Warehouse, events: pd.DataFrame | None = None,
              items_frame: pd.DataFrame | None = None, window_days: int = 90) -> ShopView:
    """Build the serving view from the warehouse (recent ``window_days`` of behaviour).

    ``events`` and ``items_frame`` may be passed when the caller has read them already.
    """
    items_frame = warehouse.items() if items_frame is None else items_frame
    items = {}
    for row in items_frame.itertuples(index=False):
        limit = row.redemption_limit
        items[row.item_id] = Item(
            row.item_id, row.kind, row.title, row.category or "uncategorized",
            (row.category or "uncategorized").split("/")[0], _float(row.price),
            bool(row.in_stock), bool(row.repeatable),
            None if pd.isna(row.created_at) else row.created_at, _float(row.offer_value),
            None if pd.isna(row.valid_from) else row.valid_from,
            None if pd.isna(row.valid_to) else row.valid_to, _split(row.eligible_segments),
            _split(row.eligible_channels), _float(row.min_basket) or 0.0,
            None if limit is None or pd.isna(limit) else int(limit))
    customers = warehouse.customers()
    segments = dict(zip(customers["customer_id"], customers["segment"], strict=True))
    consents = _consents(customers)
    if events is None:
        events = warehouse.events(columns=["customer_id", "item_id", "event_type", "timestamp",
                                           "channel"])
    as_of = events["timestamp"].max() if len(events) else pd.Timestamp.now(tz="UTC")
    behaviour = _behaviour(events, as_of - pd.Timedelta(days=window_days))
    recent = events[events["timestamp"] >= as_of - pd.Timedelta(days=30)]
    return ShopView(items, segments, behaviour, _popular(recent, items, segments),
                    _popular_content(recent, items), _offer_rates(events),
                    _new_products(items, as_of), as_of, consents, _last_purchase(events),
                    _timezones(customers), _segment_channels(recent, segments),
                    _buy_again(events, items_frame, as_of))


def _buy_again(events: pd.DataFrame, items: pd.DataFrame, as_of: pd.Timestamp
               ) -> BuyAgain | None:
    purchases = events[events["event_type"] == EventType.PURCHASE.value]
    if purchases.empty:
        return None
    return BuyAgain().fit(purchases, None, as_of + pd.Timedelta(microseconds=1), items)


def _segment_channels(events: pd.DataFrame, segments: dict[str, str]
                      ) -> dict[str, tuple[str, ...]]:
    """Per segment, contact channels by the share of its customers with an event from them."""
    contact = [c.value for c in CONTACT_CHANNELS]
    reached = events[events["channel"].isin(contact)][["customer_id", "channel"]]
    reached = reached.drop_duplicates().assign(segment=lambda f: f["customer_id"].map(segments))
    sizes = pd.Series(segments).value_counts()
    rates = reached.groupby(["segment", "channel"]).size().div(sizes, level="segment")
    return {segment: tuple(group.droplevel("segment").sort_values(ascending=False).index)
            for segment, group in rates.groupby(level="segment")}


def _timezones(customers: pd.DataFrame) -> dict[str, str]:
    known = customers[customers["timezone"].notna()]
    return dict(zip(known["customer_id"], known["timezone"], strict=True))


def _last_purchase(events: pd.DataFrame) -> dict[str, float]:
    bought = events[events["event_type"] == EventType.PURCHASE.value]
    latest = bought.groupby("customer_id")["timestamp"].max()
    seconds = (latest - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return dict(zip(seconds.index, seconds.to_numpy(), strict=True))


def _consents(customers: pd.DataFrame) -> dict[str, frozenset[str]]:
    flags = {c.value: customers[f"consent_{c.value}"].fillna(False).to_numpy(dtype=bool)
             for c in CONTACT_CHANNELS}
    return {customer: frozenset(c for c, agreed in flags.items() if agreed[row])
            for row, customer in enumerate(customers["customer_id"])}


def _behaviour(events: pd.DataFrame, since: pd.Timestamp) -> dict[str, Behaviour]:
    out: dict[str, Behaviour] = defaultdict(Behaviour)
    bought = events[events["event_type"] == EventType.PURCHASE.value]
    for customer, group in bought.groupby("customer_id")["item_id"]:
        out[customer].purchased = set(group)
    views = events[(events["event_type"] == EventType.VIEW.value) & (events["timestamp"] >= since)]
    views = views.sort_values("timestamp", ascending=False).drop_duplicates(
        ["customer_id", "item_id"])
    for customer, group in views.groupby("customer_id", sort=False)["item_id"]:
        out[customer].recent_views = list(group.head(20))
    redeemed = events[events["event_type"] == EventType.OFFER_REDEEMED.value]
    for (customer, offer), count in redeemed.groupby(["customer_id", "item_id"]).size().items():
        out[customer].redemptions[offer] = int(count)
    return dict(out)


def _popular(recent: pd.DataFrame, items: dict[str, Item],
             segments: dict[str, str]) -> dict[tuple[str, str], list[tuple[str, float]]]:
    weights = INTERACTION_WEIGHTS
    frame = recent[recent["event_type"].isin(list(weights))].copy()
    frame = frame[frame["item_id"].map(lambda i: i in items and items[i].kind == "product")]
    frame["weight"] = frame["event_type"].map(weights)
    frame["segment"] = frame["customer_id"].map(segments).fillna("*")
    tables: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for keys in (["segment", "channel"], ["segment"], ["channel"], []):
        grouped = frame.groupby([*keys, "item_id"])["weight"].sum() if keys else \
            frame.groupby("item_id")["weight"].sum()
        if keys:
            for key, series in grouped.groupby(level=list(range(len(keys)))):
                key = key if isinstance(key, tuple) else (key,)
                named = dict(zip(keys, key, strict=True))
                top = series.droplevel(list(range(len(keys)))).nlargest(POPULAR_KEEP)
                tables[(named.get("segment", "*"), named.get("channel", "*"))] = list(top.items())
        else:
            tables[("*", "*")] = list(grouped.nlargest(POPULAR_KEEP).items())
    return tables


def _popular_content(recent: pd.DataFrame, items: dict[str, Item]) -> list[tuple[str, float]]:
    views = recent[(recent["event_type"] == EventType.VIEW.value)
                   & recent["item_id"].map(lambda i: i in items and items[i].kind == "content")]
    counts = views["item_id"].value_counts()
    ranked = list(counts.items())
    unseen = [(i, 0.0) for i, item in items.items() if item.kind == ItemKind.CONTENT.value
              and i not in counts.index]
    return (ranked + unseen)[:POPULAR_KEEP]  # walked on every request: keep it short


def _offer_rates(events: pd.DataFrame, prior_shown: float = 20.0,
                 prior_rate: float = 0.1) -> dict[str, float]:
    shown = events[events["event_type"] == EventType.OFFER_SHOWN.value]["item_id"].value_counts()
    redeemed = events[events["event_type"] == EventType.OFFER_REDEEMED.value][
        "item_id"].value_counts()
    offers = shown.index.union(redeemed.index)
    rates = ((redeemed.reindex(offers, fill_value=0) + prior_rate * prior_shown)
             / (shown.reindex(offers, fill_value=0) + prior_shown))
    return {offer: float(np.clip(rate, 0, 1)) for offer, rate in rates.items()}


def _new_products(items: dict[str, Item], as_of: pd.Timestamp) -> list[str]:
    since = as_of - pd.Timedelta(days=NEW_ITEM_DAYS)
    fresh = [i for i in items.values() if i.kind == "product" and i.created_at is not None
             and i.created_at >= since]
    return [i.item_id for i in sorted(fresh, key=lambda i: i.created_at, reverse=True)]

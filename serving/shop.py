"""What the service knows about the shop at serving time, precomputed once per load.

The catalog (kinds, categories, prices, stock, offer terms), each customer's segment, and their
recent behaviour — purchases, views, redemptions — read from the warehouse's latest events.
What a customer did since this snapshot comes from the online state (``features.online``) and
is merged in per request by the pipeline. Everything a request needs is a dictionary lookup
here, never a DataFrame operation.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from features.contracts import CONTACT_CHANNELS, LIST_SEPARATOR, EventType, ItemKind
from features.id_index import IdIndex
from features.point_in_time import INTERACTION_WEIGHTS
from features.warehouse import Warehouse
from serving.customers import Behaviour, Behaviours, Consents, Labels, Lists, Times
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


@dataclass
class ShopView:
    items: dict[str, Item]
    segments: Mapping[str, str]
    """Customer -> segment (``serving.customers``: columns over one sorted array of ids)."""
    behaviour: Mapping[str, Behaviour]
    popular: dict[tuple[str, str], list[tuple[str, float]]]
    """(segment or '*', channel or '*') -> products by recent popularity, best first."""
    popular_content: list[tuple[str, float]]
    offer_rate: dict[str, float]
    """Smoothed redemption rate of each offer when shown: the prior for its response."""
    new_products: list[str]
    as_of: pd.Timestamp
    consents: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Customer -> the contact channels they agreed to (email, sms, push)."""
    last_purchase: Mapping[str, float] = field(default_factory=dict)
    """Customer -> their latest purchase in the warehouse, epoch seconds (lapsing journeys)."""
    timezones: Mapping[str, str] = field(default_factory=dict)
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
    if events is None:
        events = warehouse.events(columns=["customer_id", "item_id", "event_type", "timestamp",
                                           "channel"])
    index = IdIndex.distinct(pd.concat([customers["customer_id"], events["customer_id"]]))
    ids = customers["customer_id"]
    segment_of = pd.Series(customers["segment"].to_numpy(), index=ids)  # for the groupings below
    as_of = events["timestamp"].max() if len(events) else pd.Timestamp.now(tz="UTC")
    behaviour = _behaviour(events, as_of - pd.Timedelta(days=window_days), index)
    recent = events[events["timestamp"] >= as_of - pd.Timedelta(days=30)]
    return ShopView(items, Labels(index, ids, customers["segment"]), behaviour,
                    _popular(recent, items, segment_of), _popular_content(recent, items),
                    _offer_rates(events), _new_products(items, as_of), as_of,
                    _consents(customers, index), _last_purchase(events, index),
                    Labels(index, ids, customers["timezone"]),
                    _segment_channels(recent, segment_of), _buy_again(events, items_frame, as_of))


def _buy_again(events: pd.DataFrame, items: pd.DataFrame, as_of: pd.Timestamp
               ) -> BuyAgain | None:
    purchases = events[events["event_type"] == EventType.PURCHASE.value]
    if purchases.empty:
        return None
    return BuyAgain().fit(purchases, None, as_of + pd.Timedelta(microseconds=1), items)


def _segment_channels(events: pd.DataFrame, segment_of: pd.Series) -> dict[str, tuple[str, ...]]:
    """Per segment, contact channels by the share of its customers with an event from them."""
    contact = [c.value for c in CONTACT_CHANNELS]
    reached = events[events["channel"].isin(contact)][["customer_id", "channel"]]
    reached = reached.drop_duplicates().assign(segment=lambda f: f["customer_id"].map(segment_of))
    sizes = segment_of.value_counts()
    rates = reached.groupby(["segment", "channel"]).size().div(sizes, level="segment")
    return {segment: tuple(group.droplevel("segment").sort_values(ascending=False).index)
            for segment, group in rates.groupby(level="segment")}


def _last_purchase(events: pd.DataFrame, index: IdIndex) -> Times:
    bought = events[events["event_type"] == EventType.PURCHASE.value]
    latest = bought.groupby("customer_id")["timestamp"].max()
    seconds = (latest - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return Times(index, latest.index.to_series(), seconds.to_numpy())


def _consents(customers: pd.DataFrame, index: IdIndex) -> Consents:
    return Consents(index, customers["customer_id"],
                    {c.value: customers[f"consent_{c.value}"].fillna(False).to_numpy(dtype=bool)
                     for c in CONTACT_CHANNELS})


def _behaviour(events: pd.DataFrame, since: pd.Timestamp, index: IdIndex) -> Behaviours:
    """Purchases (all), the 20 latest distinct views since ``since`` and offer redemptions."""
    bought = events[events["event_type"] == EventType.PURCHASE.value].drop_duplicates(
        ["customer_id", "item_id"])
    views = events[(events["event_type"] == EventType.VIEW.value) & (events["timestamp"] >= since)]
    views = views.sort_values("timestamp", ascending=False, kind="stable").drop_duplicates(
        ["customer_id", "item_id"])
    views = views[views.groupby("customer_id", sort=False).cumcount() < 20]
    redeemed = events[events["event_type"] == EventType.OFFER_REDEEMED.value].groupby(
        ["customer_id", "item_id"]).size().reset_index(name="count")
    items = pd.Index(pd.unique(pd.concat([bought["item_id"], views["item_id"],
                                          redeemed["item_id"]]).astype(str)))

    def lists(frame: pd.DataFrame, counts: np.ndarray | None = None) -> Lists:
        codes = items.get_indexer(frame["item_id"].astype(str))
        return Lists(index.positions(frame["customer_id"]), codes, len(index), counts)

    return Behaviours(index, items.to_numpy(dtype=object), lists(bought), lists(views),
                      lists(redeemed, redeemed["count"].to_numpy()))


def _popular(recent: pd.DataFrame, items: dict[str, Item],
             segment_of: pd.Series) -> dict[tuple[str, str], list[tuple[str, float]]]:
    weights = INTERACTION_WEIGHTS
    frame = recent[recent["event_type"].isin(list(weights))].copy()
    frame = frame[frame["item_id"].map(lambda i: i in items and items[i].kind == "product")]
    frame["weight"] = frame["event_type"].map(weights)
    frame["segment"] = frame["customer_id"].map(segment_of).fillna("*")
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

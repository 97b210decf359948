"""Point-in-time features of customers and items, declared once and computed one way.

A feature "as of" a cutoff only sees events strictly before the cutoff: the functions filter
on that themselves, so no caller can leak the future into a training row by passing too much.
The same function computes the offline table (many customers, several cutoffs, for training)
and the online row (one customer's events, now, for serving), so the two cannot drift apart.

Counting is done with ``np.bincount`` over integer codes rather than pandas group-bys: it keeps
a ten-million-event build within seconds per cutoff.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.contracts import Channel, EventType, ItemKind
from features.settings import Settings

DAY = pd.Timedelta(days=1)
COUNT_WINDOWS = (7, 30, 90, 365)
MONEY_WINDOWS = (30, 90, 365)
INTERACTION_WEIGHTS = {
    EventType.VIEW.value: 1.0,
    EventType.CLICK.value: 1.0,
    EventType.ADD_TO_CART.value: 3.0,
    EventType.PURCHASE.value: 5.0,
}
"""How much each kind of event says about a customer's interest in an item: the affinity
features, item popularity, the recommenders' default matrix weights and the service's popularity
lists all weigh events by this one table."""


@dataclass(frozen=True)
class FeatureOptions:
    """The settings that change what a feature means. A model records the ones it was trained
    with, and whoever scores it computes features with those, never with defaults of their own."""

    abandoned_cart_after_minutes: int = 30
    """A cart with no purchase this long after its session's last event counts as abandoned."""
    recent_items: int = 10
    """How many recently viewed items ``recent_items`` keeps."""

    @classmethod
    def from_settings(cls, settings: Settings) -> FeatureOptions:
        return cls(settings.abandoned_cart_after_minutes, settings.recent_items)

    @property
    def abandoned_after(self) -> pd.Timedelta:
        return pd.Timedelta(minutes=self.abandoned_cart_after_minutes)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Feature:
    """A feature's name, type and meaning. ``{x}`` in a name stands for a family member."""

    name: str
    type: str
    description: str


CUSTOMER_FEATURES: tuple[Feature, ...] = (
    Feature("days_since_last_event", "float", "Days from the customer's last event to the cutoff."),
    Feature("days_since_last_purchase", "float", "Days from the last purchase; empty if none."),
    Feature("tenure_days", "float", "Days from the customer's first event to the cutoff."),
    *(Feature(f"purchases_{w}d", "int", f"Purchase events in the {w} days before the cutoff.")
      for w in COUNT_WINDOWS),
    *(Feature(f"orders_{w}d", "int", f"Sessions with a purchase in the last {w} days.")
      for w in MONEY_WINDOWS),
    *(Feature(f"revenue_{w}d", "float", f"Money spent (price x quantity) in the last {w} days.")
      for w in MONEY_WINDOWS),
    Feature("avg_order_value_365d", "float", "revenue_365d / orders_365d; empty if no orders."),
    *(Feature(f"views_{w}d", "int", f"Product and content views in the last {w} days.")
      for w in (7, 30)),
    *(Feature(f"carts_{w}d", "int", f"Add-to-cart events in the last {w} days.") for w in (7, 30)),
    Feature("sessions_30d", "int", "Distinct sessions in the last 30 days."),
    Feature("abandoned_carts_90d", "int",
            "Sessions in the last 90 days with an add-to-cart, no purchase, and no activity for "
            "the abandonment delay before the cutoff."),
    Feature("days_since_last_abandoned_cart", "float", "Days since that last abandoned cart."),
    Feature("last_abandoned_cart_items", "string", "Items of the last abandoned cart, 'a|b'."),
    Feature("recent_items", "string", "Most recently viewed distinct items, newest first, 'a|b'."),
    Feature("offers_shown_90d", "int", "Offers shown in the last 90 days."),
    Feature("offers_redeemed_365d", "int", "Offers redeemed in the last 365 days."),
    Feature("channel_share_{channel}", "float",
            "Share of the customer's events in the last 90 days on this channel."),
    Feature("affinity_{category}", "float",
            "Share of the customer's weighted interactions (view 1, cart 3, purchase 5) in the "
            "last 365 days that fell in this top-level category."),
)

ITEM_FEATURES: tuple[Feature, ...] = (
    Feature("views_7d", "int", "Views of the item in the last 7 days."),
    Feature("purchases_7d", "int", "Purchases of the item in the last 7 days."),
    Feature("purchases_30d", "int", "Purchases of the item in the last 30 days."),
    Feature("buyers_30d", "int", "Distinct customers who bought it in the last 30 days."),
    Feature("popularity_30d", "float",
            "Weighted interactions (view 1, cart 3, purchase 5) in the last 30 days."),
    Feature("trend", "float",
            "Daily weighted interactions of the last 7 days over those of the last 28 days "
            "(1 = steady, > 1 = rising); 1 when the item has no history."),
)


def feature_categories(items: pd.DataFrame) -> list[str]:
    """The top-level categories that get an affinity column, from the catalog's products."""
    products = items.loc[items["kind"] == ItemKind.PRODUCT.value, "category"].dropna()
    return sorted(products.str.split("/").str[0].unique().tolist())


def customer_feature_names(categories: Sequence[str]) -> list[str]:
    names: list[str] = []
    for feature in CUSTOMER_FEATURES:
        if feature.name == "channel_share_{channel}":
            names += [f"channel_share_{c.value}" for c in Channel]
        elif feature.name == "affinity_{category}":
            names += [f"affinity_{c}" for c in categories]
        else:
            names.append(feature.name)
    return names


def compute_customer_features(
    events: pd.DataFrame,
    cutoff: pd.Timestamp,
    items: pd.DataFrame,
    options: FeatureOptions | None = None,
) -> pd.DataFrame:
    """Features as of ``cutoff`` for every customer with an event before it.

    Returns one row per customer, indexed by ``customer_id``, with the columns of
    :func:`customer_feature_names`. Events at or after the cutoff are ignored.
    """
    options = options or FeatureOptions()
    cutoff = _as_utc(cutoff)
    categories = feature_categories(items)
    seen = events[events["timestamp"] < cutoff]
    codes, customers = pd.factorize(seen["customer_id"], sort=True)
    n = len(customers)
    out: dict[str, np.ndarray] = {}
    age = _age_days(seen["timestamp"], cutoff)
    kind = _EventKinds(seen["event_type"])
    is_purchase = kind.of(EventType.PURCHASE)
    spend = (seen["price"].fillna(0).to_numpy(dtype=float)
             * seen["quantity"].fillna(1).to_numpy(dtype=float))

    def count(mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        w = None if weights is None else weights[mask]
        return np.bincount(codes[mask], weights=w, minlength=n)

    out["days_since_last_event"] = _group_min(codes, age, n)
    out["days_since_last_purchase"] = _group_min(codes[is_purchase], age[is_purchase], n)
    out["tenure_days"] = _group_max(codes, age, n)
    for w in COUNT_WINDOWS:
        out[f"purchases_{w}d"] = count(is_purchase & (age <= w)).astype(np.int64)
    sessions = pd.factorize(seen["session_id"])[0]
    for w in MONEY_WINDOWS:
        window = is_purchase & (age <= w)
        out[f"orders_{w}d"] = _distinct_per_group(codes[window], sessions[window], n)
        out[f"revenue_{w}d"] = count(window, spend)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["avg_order_value_365d"] = np.where(out["orders_365d"] > 0,
                                               out["revenue_365d"] / out["orders_365d"], np.nan)
    for w in (7, 30):
        out[f"views_{w}d"] = count(kind.of(EventType.VIEW) & (age <= w)).astype(np.int64)
        out[f"carts_{w}d"] = count(kind.of(EventType.ADD_TO_CART) & (age <= w)).astype(np.int64)
    recent = (age <= 30) & (sessions >= 0)
    out["sessions_30d"] = _distinct_per_group(codes[recent], sessions[recent], n)
    out.update(_abandoned_carts(seen, codes, sessions, kind, n, age, options.abandoned_after))
    out["recent_items"] = _recent_items(seen, codes, kind, n, age, options.recent_items)
    out["offers_shown_90d"] = count(kind.of(EventType.OFFER_SHOWN) & (age <= 90)).astype(np.int64)
    out["offers_redeemed_365d"] = count(
        kind.of(EventType.OFFER_REDEEMED) & (age <= 365)).astype(np.int64)
    out.update(_channel_shares(seen, codes, n, age))
    out.update(_affinities(seen, codes, kind, n, age, items, categories))
    frame = pd.DataFrame(out, index=pd.Index(customers, name="customer_id"))
    return frame[customer_feature_names(categories)]


def compute_item_features(events: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    """Popularity and trend of every item with an event in the 30 days before ``cutoff``."""
    cutoff = _as_utc(cutoff)
    seen = events[(events["timestamp"] < cutoff) & (events["timestamp"] >= cutoff - 30 * DAY)]
    codes, item_ids = pd.factorize(seen["item_id"], sort=True)
    n = len(item_ids)
    age = _age_days(seen["timestamp"], cutoff)
    kind = _EventKinds(seen["event_type"])
    weight = kind.weights()
    bought = kind.of(EventType.PURCHASE)
    week, month = age <= 7, age <= 28

    def total(mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(codes[mask], None if weights is None else weights[mask], minlength=n)

    customers = pd.factorize(seen["customer_id"])[0]
    last_week = total(week, weight) / 7
    last_month = total(month, weight) / 28
    with np.errstate(invalid="ignore", divide="ignore"):
        trend = np.where(last_month > 0, last_week / last_month, 1.0)
    frame = pd.DataFrame({
        "views_7d": total(week & kind.of(EventType.VIEW)).astype(np.int64),
        "purchases_7d": total(week & bought).astype(np.int64),
        "purchases_30d": total(bought).astype(np.int64),
        "buyers_30d": _distinct_per_group(codes[bought], customers[bought], n),
        "popularity_30d": total(np.ones(len(codes), dtype=bool), weight),
        "trend": trend,
    }, index=pd.Index(item_ids, name="item_id"))
    return frame


def online_customer_features(customer_events: pd.DataFrame, customer_id: str,
                             at: pd.Timestamp, items: pd.DataFrame,
                             options: FeatureOptions | None = None) -> pd.Series:
    """One customer's features at ``at`` from their own events: the serving-time row.

    An unknown customer (no events before ``at``) gets the row of someone with no history:
    zero counts and empty recencies, so callers need no special case.
    """
    mine = customer_events[customer_events["customer_id"] == customer_id]
    table = compute_customer_features(mine, at, items, options)
    if customer_id in table.index:
        return table.loc[customer_id]
    return empty_customer_row(feature_categories(items), customer_id)


def empty_customer_row(categories: Sequence[str], customer_id: str) -> pd.Series:
    row = {}
    for name in customer_feature_names(categories):
        if name.startswith(("days_since", "tenure", "avg_order")):
            row[name] = np.nan
        elif name in ("recent_items", "last_abandoned_cart_items"):
            row[name] = ""
        else:
            row[name] = 0
    return pd.Series(row, name=customer_id)


def build_feature_table(
    events_for_cutoff: Callable[[pd.Timestamp], pd.DataFrame],
    cutoffs: Iterable[pd.Timestamp],
    items: pd.DataFrame,
    options: FeatureOptions | None = None,
    on_cutoff: Callable[[pd.Timestamp], None] | None = None,
) -> pd.DataFrame:
    """The offline table: one row per (customer, cutoff), with a ``cutoff`` column.

    ``events_for_cutoff(cutoff)`` returns the events before a cutoff (a warehouse read with
    ``end=cutoff``), so only what is needed is loaded for each cutoff.
    """
    frames = []
    for cutoff in cutoffs:
        table = compute_customer_features(events_for_cutoff(cutoff), cutoff, items, options)
        table.insert(0, "cutoff", _as_utc(cutoff))
        frames.append(table.reset_index())
        if on_cutoff is not None:
            on_cutoff(cutoff)
    if not frames:
        raise ValueError("cutoffs is empty: give at least one cutoff time")
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------- helpers
def _as_utc(moment) -> pd.Timestamp:
    stamp = pd.Timestamp(moment)
    if stamp.tzinfo is None:
        raise ValueError(f"cutoff {moment!r} has no timezone; use a UTC time such as "
                         "2024-06-01T00:00:00Z")
    return stamp.tz_convert("UTC")


def _group_min(codes: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, np.inf)
    np.minimum.at(out, codes, values)
    return np.where(np.isinf(out), np.nan, out)


def _group_max(codes: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, -np.inf)
    np.maximum.at(out, codes, values)
    return np.where(np.isinf(out), np.nan, out)


def _distinct_per_group(codes: np.ndarray, keys: np.ndarray, n: int) -> np.ndarray:
    if codes.size == 0:
        return np.zeros(n, dtype=np.int64)
    pairs = pd.DataFrame({"g": codes, "k": keys}).drop_duplicates()
    return np.bincount(pairs["g"].to_numpy(), minlength=n).astype(np.int64)


class _EventKinds:
    """Event types as integer codes, so that "is it a purchase?" is an integer comparison."""

    def __init__(self, event_type: pd.Series) -> None:
        self.codes, names = pd.factorize(event_type)
        self.lookup = {name: i for i, name in enumerate(names)}

    def of(self, event_type: EventType) -> np.ndarray:
        return self.codes == self.lookup.get(event_type.value, -2)

    def weights(self) -> np.ndarray:
        """The interaction weight of each event (0 for types that are not interactions)."""
        table = np.zeros(len(self.lookup) + 1)
        for name, code in self.lookup.items():
            table[code] = INTERACTION_WEIGHTS.get(name, 0.0)
        return table[self.codes]


def _age_days(timestamps: pd.Series, cutoff: pd.Timestamp) -> np.ndarray:
    """Days from each event to the cutoff, computed on int64 microseconds (no object arrays)."""
    micros = timestamps.astype("datetime64[us, UTC]").array.asi8
    return (cutoff.value // 1000 - micros) / 86_400e6  # Timestamp.value is in nanoseconds


def _joined_lists(groups: np.ndarray, values: pd.Series, n: int) -> np.ndarray:
    """'a|b|c' per group, keeping the order of ``values``; '' for groups with none."""
    out = np.full(n, "", dtype=object)
    if len(values) == 0:
        return out
    table = pa.table({"g": groups, "v": pa.array(values.astype(str).to_numpy(dtype=object))})
    lists = table.group_by("g", use_threads=False).aggregate([("v", "list")])
    joined = pc.binary_join(lists["v_list"], "|")
    out[lists["g"].to_numpy()] = joined.to_numpy(zero_copy_only=False)
    return out


def _abandoned_carts(seen: pd.DataFrame, codes: np.ndarray, sessions: np.ndarray,
                     kind: _EventKinds, n: int, age: np.ndarray,
                     abandoned_after: pd.Timedelta) -> dict[str, np.ndarray]:
    in_session = sessions >= 0
    carted = kind.of(EventType.ADD_TO_CART)
    frame = pd.DataFrame({
        "customer": codes[in_session],
        "session": sessions[in_session],
        "age": age[in_session],
        "carted": carted[in_session],
        "bought": kind.of(EventType.PURCHASE)[in_session],
    })
    summary = frame.groupby(["customer", "session"], sort=False).agg(
        last_age=("age", "min"), carted=("carted", "max"), bought=("bought", "max"))
    idle_days = abandoned_after / DAY
    abandoned = summary[summary["carted"] & ~summary["bought"]
                        & (summary["last_age"] >= idle_days)].reset_index()
    counts = np.bincount(abandoned.loc[abandoned["last_age"] <= 90, "customer"].to_numpy(),
                         minlength=n).astype(np.int64)
    latest = abandoned.sort_values("last_age").drop_duplicates("customer")
    days = np.full(n, np.nan)
    days[latest["customer"].to_numpy()] = latest["last_age"].to_numpy()
    last_session = np.full(n, -1)
    last_session[latest["customer"].to_numpy()] = latest["session"].to_numpy()
    in_last = carted & (sessions >= 0) & (sessions == last_session[codes])
    adds = pd.DataFrame({"customer": codes[in_last], "item": seen["item_id"].to_numpy()[in_last],
                         "age": age[in_last]})
    adds = adds.sort_values("age", ascending=False, kind="stable")  # in the order they were added
    adds = adds.drop_duplicates(["customer", "item"])
    return {"abandoned_carts_90d": counts, "days_since_last_abandoned_cart": days,
            "last_abandoned_cart_items": _joined_lists(adds["customer"].to_numpy(),
                                                       adds["item"], n)}


def _recent_items(seen: pd.DataFrame, codes: np.ndarray, kind: _EventKinds, n: int,
                  age: np.ndarray, limit: int) -> np.ndarray:
    views = kind.of(EventType.VIEW)
    frame = pd.DataFrame({"customer": codes[views], "item": seen["item_id"].to_numpy()[views],
                          "age": age[views]})
    frame = frame.sort_values("age", kind="stable")  # newest first
    frame = frame.drop_duplicates(["customer", "item"]).groupby("customer").head(limit)
    return _joined_lists(frame["customer"].to_numpy(), frame["item"], n)


def _channel_shares(seen: pd.DataFrame, codes: np.ndarray, n: int,
                    age: np.ndarray) -> dict[str, np.ndarray]:
    channel_codes = pd.Index([c.value for c in Channel]).get_indexer(seen["channel"].to_numpy())
    window = (age <= 90) & (channel_codes >= 0)
    channel_codes = channel_codes[window]
    counts = np.bincount(codes[window] * len(Channel) + channel_codes,
                         minlength=n * len(Channel)).reshape(n, len(Channel)).astype(float)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    return {f"channel_share_{c.value}": shares[:, i] for i, c in enumerate(Channel)}


def _affinities(seen: pd.DataFrame, codes: np.ndarray, kind: _EventKinds, n: int,
                age: np.ndarray, items: pd.DataFrame,
                categories: Sequence[str]) -> dict[str, np.ndarray]:
    k = len(categories)
    if k == 0:
        return {}
    top = items.set_index("item_id")["category"].str.split("/").str[0]
    item_codes, item_ids = pd.factorize(seen["item_id"])
    top_of_item = pd.Index(list(categories)).get_indexer(top.reindex(item_ids).to_numpy())
    category_code = top_of_item[item_codes] if len(item_codes) else item_codes
    weight = kind.weights()
    use = (age <= 365) & (category_code >= 0) & (weight > 0)
    totals = np.bincount(codes[use] * k + category_code[use], weights=weight[use],
                         minlength=n * k).reshape(n, k).astype(float)
    sums = totals.sum(axis=1, keepdims=True)
    shares = np.divide(totals, sums, out=np.zeros_like(totals), where=sums > 0)
    return {f"affinity_{c}": shares[:, i] for i, c in enumerate(categories)}

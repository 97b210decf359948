"""A synthetic shop: customers, catalog and event history with the structure a real shop has.

It is the built-in data for the demo and the tests, so it must carry real signal a model can
learn and a test can check against the ground truth it records:

* customers have latent tastes over categories (a sparse Dirichlet draw), a preferred price
  tier, an activity rate with a heavy tail, channel habits and a sensitivity to offers;
* items have a long-tailed popularity within their category, prices by category and tier,
  launch dates (new items keep appearing) and stock;
* sessions follow the weekly and yearly rhythm of a shop, start on a channel with its own
  habits, may begin by reading a content item of the category (readers convert more), move
  view → cart → purchase or are abandoned (sometimes with a remove_from_cart);
* consumable categories are bought again and again: each customer has a staple item there, and
  restocks it on their own cycle (the category's typical cycle, ``RESTOCK_DAYS``, times a
  per-customer factor, give or take a few days each time), as in real shops;
* offers are shown to eligible customers, and redeemed with a probability that depends on the
  customer's offer sensitivity and the offer's value, within a per-customer limit;
* new customers arrive over the whole period and some existing ones lapse.

Everything is vectorized with numpy: the generator draws sessions first, then explodes them
into events, so ten million events take minutes on two cores. The result is a deterministic
function of :class:`ShopConfig` (including its seed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from features.contracts import (
    CONTACT_CHANNELS,
    CUSTOMERS,
    EVENTS,
    ITEMS,
    Channel,
    EventType,
    LoyaltyTier,
    arrow_schema,
)
from features.validation import validate_table
from features.warehouse import Warehouse

CATEGORY_TREE: dict[str, dict[str, tuple[str, ...]]] = {
    "electronics": {
        "audio": ("headphones", "speaker", "earbuds", "soundbar"),
        "phones": ("smartphone", "phone case", "charger", "screen protector"),
        "computers": ("laptop", "keyboard", "monitor", "mouse"),
        "cameras": ("camera", "lens", "tripod", "memory card"),
    },
    "home": {
        "kitchen": ("knife", "pan", "blender", "kettle"),
        "furniture": ("chair", "desk", "shelf", "sofa"),
        "garden": ("hose", "planter", "shears", "lantern"),
        "decor": ("vase", "lamp", "rug", "frame"),
    },
    "fashion": {
        "shoes": ("sneakers", "boots", "sandals", "loafers"),
        "womens": ("dress", "blouse", "skirt", "coat"),
        "mens": ("shirt", "jeans", "jacket", "sweater"),
        "accessories": ("bag", "belt", "scarf", "watch"),
    },
    "beauty": {
        "skincare": ("moisturizer", "serum", "cleanser", "sunscreen"),
        "makeup": ("lipstick", "mascara", "foundation", "palette"),
        "fragrance": ("perfume", "cologne", "body mist", "candle"),
        "haircare": ("shampoo", "conditioner", "hair oil", "hair mask"),
    },
    "grocery": {
        "coffee": ("espresso beans", "ground coffee", "coffee pods", "cold brew"),
        "snacks": ("granola", "chocolate", "crackers", "nuts"),
        "wine": ("red wine", "white wine", "rose", "sparkling wine"),
        "pantry": ("olive oil", "pasta", "rice", "spices"),
    },
    "sports": {
        "running": ("running shoes", "running shorts", "water bottle", "armband"),
        "cycling": ("helmet", "bike light", "cycling gloves", "bike lock"),
        "fitness": ("yoga mat", "dumbbells", "resistance band", "kettlebell"),
        "outdoor": ("tent", "backpack", "sleeping bag", "headlamp"),
    },
}
REPEATABLE_TOPS = ("grocery",)
REPEATABLE_CATEGORIES = ("beauty/skincare", "beauty/haircare")
RESTOCK_DAYS = {"grocery": 14.0, "beauty/skincare": 30.0, "beauty/haircare": 40.0}
"""The typical days between two restocks of a staple, by top-level category or category."""
RESTOCK_BUY = 0.9
"""A restock visit puts the staple in the cart, and buys the cart, with this probability each."""
RESTOCK_MIN_TASTE = 0.04
"""Customers restock a consumable category they care at least this much for (share of taste)."""
TOP_PRICE = {"electronics": 180.0, "home": 70.0, "fashion": 55.0, "beauty": 25.0,
             "grocery": 12.0, "sports": 45.0}
ADJECTIVES = ("classic", "pro", "eco", "compact", "deluxe", "essential", "smart", "premium",
              "everyday", "travel", "organic", "ultra", "vintage", "modern", "lightweight")
BRANDS = ("Northwind", "Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark",
          "Wayne", "Tyrell", "Soylent", "Cyberdyne", "Wonka", "Gringotts", "Oceanic", "Aperture")
SEGMENTS = ("casual", "bargain_hunter", "loyal", "premium")
REGIONS = ("north", "south", "east", "west", "central")
REGION_ZONES = {"north": "Europe/London", "south": "Europe/Madrid", "east": "Europe/Warsaw",
                "west": "America/New_York", "central": "Europe/Berlin"}
"""The shop sells across time zones, so that quiet hours and local-time waits differ by
customer."""
SESSION_CHANNELS = (Channel.WEB, Channel.APP, Channel.EMAIL, Channel.STORE)

# Channel habits, in SESSION_CHANNELS order: extra views beyond the first, the chance the last
# viewed item goes into the cart, and the chance a cart is bought.
EXTRA_VIEWS = np.array([2.5, 3.5, 1.5, 0.0])
P_CART = np.array([0.22, 0.28, 0.18, 0.95])
P_BUY = np.array([0.45, 0.52, 0.40, 0.98])
P_CONTENT = np.array([0.20, 0.12, 0.45, 0.0])
TIER_NAMES = ("budget", "mid", "premium")
TIER_FIT = np.array([[1.0, 0.35, 0.08], [0.35, 1.0, 0.35], [0.08, 0.35, 1.0]])
"""How likely a customer who prefers tier row is to pick an item of tier column."""
WEEKDAY_WEIGHT = np.array([0.85, 0.85, 0.9, 0.95, 1.1, 1.3, 1.25])  # Monday first
HOUR_WEIGHT = np.array([1, 0.5, 0.3, 0.2, 0.2, 0.3, 0.8, 1.5, 2, 2.2, 2.3, 2.5, 3, 2.6, 2.3,
                        2.2, 2.4, 2.8, 3.4, 4, 4.2, 3.8, 3, 1.8], dtype=float)


class ShopConfig(BaseModel):
    """How big the shop is and over which period; the seed makes it reproducible."""

    n_customers: int = Field(2000, ge=1, description="Customers over the whole period.")
    n_products: int = Field(400, ge=24, description="Products in the catalog (at least one per category).")
    n_content: int = Field(48, ge=0, description="Content items (guides, articles).")
    n_offers: int = Field(12, ge=0, description="Offers over the period.")
    days: int = Field(180, ge=7, description="Length of the history in days.")
    start: datetime = Field(datetime(2024, 1, 1, tzinfo=UTC), description="First day (UTC).")
    sessions_per_month: float = Field(3.0, gt=0, description="Median customer's visits per 30 days.")
    new_customer_share: float = Field(0.35, ge=0, le=1, description="Customers who arrive during the period.")
    new_item_share: float = Field(0.2, ge=0, le=1, description="Products launched during the period.")
    seed: int = Field(42, description="Random seed; the same config always gives the same shop.")

    @classmethod
    def for_events(cls, n_events: int, seed: int = 42, days: int = 180) -> ShopConfig:
        """A config whose history has about ``n_events`` events.

        From tens of thousands of events up the count lands within about 10% of the target;
        tiny shops vary more, since a handful of very active customers dominate them.
        """
        if n_events < 100:
            raise ValueError(f"n_events must be at least 100, got {n_events}")
        per_customer = EVENTS_PER_CUSTOMER_PER_DAY * days
        n_customers = max(3, round(n_events / per_customer))
        n_products = int(np.clip(25 * np.sqrt(n_customers), 48, 200_000))
        return cls(
            n_customers=n_customers,
            n_products=n_products,
            n_content=max(24, n_products // 10),
            n_offers=int(np.clip(n_customers // 500, 6, 60)),
            days=days,
            seed=seed,
        )


EVENTS_PER_CUSTOMER_PER_DAY = 0.595
"""Measured average of the default config; used by :meth:`ShopConfig.for_events`."""


@dataclass
class SyntheticShop:
    """The three contract tables plus the ground truth behind them."""

    events: pd.DataFrame
    items: pd.DataFrame
    customers: pd.DataFrame
    customer_tastes: pd.DataFrame
    """Each customer's true category tastes (rows sum to 1), indexed by customer_id."""
    config: ShopConfig
    customer_traits: pd.DataFrame | None = None
    """The rest of each customer's truth, indexed by customer_id: preferred price tier
    (``tier_budget``, ``tier_mid``, ``tier_premium``, summing to 1), ``offer_sensitivity``,
    ``activity`` (visits per day) and channel habits (``web``, ``app``, ``email``, ``store``,
    summing to 1). With the tastes, what ``features.shop_response`` answers from."""
    item_tiers: pd.Series | None = None
    """Each product's price tier within its category (0 budget, 1 mid, 2 premium)."""


def generate_shop(config: ShopConfig | None = None) -> SyntheticShop:
    """Generate a whole shop deterministically from ``config``."""
    config = config or ShopConfig()
    rng = np.random.default_rng(config.seed)
    categories = _category_list()
    catalog = _make_catalog(config, categories, rng)
    people = _make_customers(config, categories, rng)
    sessions = _make_sessions(config, people, rng)
    events = _make_events(config, categories, catalog, people, sessions, rng)
    index = pd.Index(people.frame["customer_id"], name="customer_id")
    tastes = pd.DataFrame(people.taste, columns=categories, index=index)
    traits = pd.DataFrame({
        **{f"tier_{name}": people.tier_pref[:, t] for t, name in enumerate(TIER_NAMES)},
        "offer_sensitivity": people.offer_sensitivity, "activity": people.activity,
        **{channel.value: people.channel_pref[:, c] for c, channel in enumerate(SESSION_CHANNELS)},
    }, index=index)
    tiers = pd.Series(catalog.tier, index=pd.Index(
        catalog.frame["item_id"].iloc[catalog.product_ids], name="item_id"), name="tier")
    return SyntheticShop(events, catalog.frame, people.frame, tastes, config, traits, tiers)


# ---------------------------------------------------------------------------- catalog
@dataclass
class _Catalog:
    frame: pd.DataFrame
    product_ids: np.ndarray  # positions of products in frame
    category: np.ndarray     # per product: category index
    tier: np.ndarray         # per product: 0 budget, 1 mid, 2 premium
    price: np.ndarray
    launch_day: np.ndarray   # per product: day offset it appears (0 = from the start)
    repeatable_category: np.ndarray  # per category: bool
    content_by_category: list[np.ndarray]  # item positions of content per category
    offer_rows: np.ndarray   # positions of offers in frame
    offer_value: np.ndarray
    offer_from_day: np.ndarray
    offer_to_day: np.ndarray
    offer_segments: list[set[int]]
    offer_channels: list[set[int]]
    offer_limit: np.ndarray
    cdf: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]  # (category, tier) -> (ids, cdf)


def _category_list() -> list[str]:
    return [f"{top}/{sub}" for top, subs in CATEGORY_TREE.items() for sub in subs]


def _nouns(category: str) -> tuple[str, ...]:
    top, sub = category.split("/")
    return CATEGORY_TREE[top][sub]


def _repeatable(categories: list[str]) -> np.ndarray:
    return np.array([c.split("/")[0] in REPEATABLE_TOPS or c in REPEATABLE_CATEGORIES
                     for c in categories])


def _make_catalog(config: ShopConfig, categories: list[str], rng: np.random.Generator) -> _Catalog:
    n_cat = len(categories)
    category_weight = rng.dirichlet(np.full(n_cat, 3.0))
    product_category = np.concatenate([
        np.arange(n_cat), rng.choice(n_cat, config.n_products - n_cat, p=category_weight)
    ])
    rng.shuffle(product_category)
    tops = np.array([c.split("/")[0] for c in categories])
    base_price = np.array([TOP_PRICE[t] for t in tops]) * rng.lognormal(0, 0.3, n_cat)
    price = np.round(base_price[product_category] * rng.lognormal(0, 0.55, config.n_products), 2)
    price = np.maximum(price, 0.99)
    tier = np.zeros(config.n_products, dtype=np.int64)
    for c in range(n_cat):
        members = np.flatnonzero(product_category == c)
        ranks = np.argsort(np.argsort(price[members]))
        tier[members] = np.minimum(3 * ranks // max(len(members), 1), 2)
    # Long tail: a Zipf-like weight by a random popularity rank within the category.
    popularity = rng.permutation(config.n_products).astype(float)
    weight = 1.0 / (1.0 + popularity / 4.0) ** 1.15
    launch_day = np.where(rng.random(config.n_products) < config.new_item_share,
                          rng.integers(1, config.days, config.n_products), 0)
    first_of_category = np.unique(product_category, return_index=True)[1]
    launch_day[first_of_category] = 0  # every category has something to sell from day one
    weight = np.where(launch_day > 0, weight * 3.0, weight)  # new items get attention
    repeatable = _repeatable(categories)
    nouns = [_nouns(categories[c]) for c in product_category]
    adjectives = rng.choice(ADJECTIVES, config.n_products)
    brands = rng.choice(BRANDS, config.n_products)
    nouns_drawn = [n[i] for n, i in zip(nouns, rng.integers(0, 4, config.n_products), strict=True)]
    tier_word = np.array(["budget", "mid-range", "premium"])[tier]
    stock = rng.negative_binomial(2, 0.05, config.n_products)
    stock[rng.random(config.n_products) < 0.05] = 0
    start = pd.Timestamp(config.start)
    products = pd.DataFrame({
        "item_id": [f"p{i:06d}" for i in range(config.n_products)],
        "kind": "product",
        "title": [f"{b} {a} {n}" for b, a, n in zip(brands, adjectives, nouns_drawn, strict=True)],
        "description": [
            f"A {t} {a} {n} for {categories[c].replace('/', ' ')} lovers, by {b}."
            for t, a, n, c, b in zip(tier_word, adjectives, nouns_drawn, product_category, brands,
                                     strict=True)
        ],
        "category": np.array(categories)[product_category],
        "brand": brands,
        "price": price,
        "stock": stock,
        "in_stock": stock > 0,
        "repeatable": repeatable[product_category],
        "created_at": start + pd.to_timedelta(launch_day, unit="D"),
    })
    content_category = np.arange(config.n_content) % n_cat
    content = pd.DataFrame({
        "item_id": [f"k{i:05d}" for i in range(config.n_content)],
        "kind": "content",
        "title": [f"Guide: choosing the right {_nouns(categories[c])[i % 4]}"
                  for i, c in enumerate(content_category)],
        "description": [f"How to pick a {_nouns(categories[c])[i % 4]}: what matters in "
                        f"{categories[c].replace('/', ' ')}." for i, c in enumerate(content_category)],
        "category": np.array(categories)[content_category] if config.n_content else [],
        "brand": "nextbest magazine",
        "created_at": start,
    })
    offers, offer_meta = _make_offers(config, categories, rng)
    frame = pd.concat([products, content, offers], ignore_index=True)
    frame = _conform(frame, ITEMS)
    # One pool per (category, preferred tier): the whole category, weighted by popularity and
    # by how well each item's price tier fits the preference.
    cdf = {}
    for c in range(n_cat):
        ids = np.flatnonzero(product_category == c)
        for t in range(3):
            w = np.cumsum(weight[ids] * TIER_FIT[t, tier[ids]])
            cdf[(c, t)] = (ids, w / w[-1])
    first_content = len(products)
    content_by_category = [first_content + np.flatnonzero(content_category == c)
                           for c in range(n_cat)]
    return _Catalog(frame, np.arange(config.n_products), product_category, tier, price,
                    launch_day, repeatable, content_by_category,
                    np.arange(len(products) + len(content), len(frame)), **offer_meta, cdf=cdf)


def _make_offers(config: ShopConfig, categories: list[str], rng: np.random.Generator):
    n = config.n_offers
    value = np.round(rng.choice([5.0, 10.0, 15.0, 20.0, 30.0], n), 2)
    from_day = rng.integers(0, max(config.days - 14, 1), n)
    to_day = np.minimum(from_day + rng.integers(14, 60, n), config.days + 30)
    segments = [set(rng.choice(len(SEGMENTS), rng.integers(1, 4), replace=False).tolist())
                if rng.random() < 0.6 else set(range(len(SEGMENTS))) for _ in range(n)]
    channels = [set(rng.choice(2, rng.integers(1, 3), replace=False).tolist()) for _ in range(n)]
    limit = rng.choice([1, 1, 2, 3], n)
    min_basket = rng.choice([0.0, 25.0, 50.0], n)
    start = pd.Timestamp(config.start)
    frame = pd.DataFrame({
        "item_id": [f"o{i:04d}" for i in range(n)],
        "kind": "offer",
        "title": [f"{v:.0f} off your next order" for v in value],
        "description": [f"Save {v:.0f} on orders over {m:.0f}." for v, m in zip(value, min_basket,
                                                                               strict=True)],
        "category": "offers",
        "offer_value": value,
        "valid_from": start + pd.to_timedelta(from_day, unit="D"),
        "valid_to": start + pd.to_timedelta(to_day, unit="D"),
        "eligible_segments": ["|".join(SEGMENTS[s] for s in sorted(seg))
                              if len(seg) < len(SEGMENTS) else None for seg in segments],
        "min_basket": min_basket,
        # shown on the web or in the app, and sent by message (the default triggers do that)
        "eligible_channels": ["|".join([*(SESSION_CHANNELS[c].value for c in sorted(ch)),
                                        *(c.value for c in CONTACT_CHANNELS)])
                              for ch in channels],
        "redemption_limit": limit,
        "created_at": start + pd.to_timedelta(from_day, unit="D"),
    })
    meta = dict(offer_value=value, offer_from_day=from_day, offer_to_day=to_day,
                offer_segments=segments, offer_channels=channels, offer_limit=limit)
    return frame, meta


# ---------------------------------------------------------------------------- customers
@dataclass
class _People:
    frame: pd.DataFrame
    taste: np.ndarray        # (customers, categories)
    tier_pref: np.ndarray    # (customers, 3)
    channel_pref: np.ndarray  # (customers, len(SESSION_CHANNELS))
    segment: np.ndarray
    offer_sensitivity: np.ndarray
    activity: np.ndarray     # sessions per day
    first_day: np.ndarray
    last_day: np.ndarray


def _make_customers(config: ShopConfig, categories: list[str], rng: np.random.Generator) -> _People:
    n, n_cat = config.n_customers, len(categories)
    taste = rng.dirichlet(np.full(n_cat, 0.12), n)
    spend = rng.choice(3, n, p=[0.4, 0.4, 0.2])
    tier_pref = np.array([[0.7, 0.22, 0.08], [0.2, 0.6, 0.2], [0.07, 0.23, 0.7]])[spend]
    channel_pref = rng.dirichlet([3.0, 2.0, 0.8, 0.6], n)
    activity = rng.lognormal(np.log(config.sessions_per_month / 30.0), 0.9, n)
    offer_sensitivity = rng.normal(0, 1, n)
    is_new = rng.random(n) < config.new_customer_share
    first_day = np.where(is_new, rng.integers(0, config.days, n), -rng.integers(0, 720, n))
    lapse = rng.exponential(config.days * 2.5, n)
    last_day = np.minimum(np.maximum(first_day, 0) + lapse, config.days).astype(np.int64)
    segment = np.select(
        [spend == 2, offer_sensitivity > 0.8, activity > np.quantile(activity, 0.75)], [3, 1, 2], 0
    )
    tier = np.digitize(activity, np.quantile(activity, [0.4, 0.7, 0.9]))
    start = pd.Timestamp(config.start)
    region = rng.choice(REGIONS, n)
    frame = pd.DataFrame({
        "customer_id": [f"c{i:07d}" for i in range(n)],
        "first_seen": start + pd.to_timedelta(first_day, unit="D"),
        "segment": np.array(SEGMENTS)[segment],
        "loyalty_tier": np.array([t.value for t in LoyaltyTier])[tier],
        "region": region,
        "timezone": [REGION_ZONES[r] for r in region],
        "consent_email": rng.random(n) < 0.6,
        "consent_sms": rng.random(n) < 0.25,
        "consent_push": (rng.random(n) < 0.6) & (channel_pref[:, 1] > 0.25),
    })
    return _People(_conform(frame, CUSTOMERS), taste, tier_pref, channel_pref, segment,
                   offer_sensitivity, activity, first_day, last_day)


# ---------------------------------------------------------------------------- sessions
@dataclass
class _Sessions:
    customer: np.ndarray
    start_s: np.ndarray      # seconds since config.start
    channel: np.ndarray      # index into SESSION_CHANNELS
    category: np.ndarray
    restock: np.ndarray      # a staple's restock, due on the customer's cycle


def _season(day: np.ndarray, config: ShopConfig) -> np.ndarray:
    dates = pd.Timestamp(config.start) + pd.to_timedelta(day, unit="D")
    weekday = WEEKDAY_WEIGHT[dates.day_of_week.to_numpy()]
    doy = dates.day_of_year.to_numpy()
    holidays = 1.0 + 0.6 * np.exp(-(((doy - 345) / 12.0) ** 2))  # mid-December peak
    return weekday * holidays


def _make_sessions(config: ShopConfig, people: _People, rng: np.random.Generator) -> _Sessions:
    active_from = np.maximum(people.first_day, 0)
    active_days = np.maximum(people.last_day - active_from, 0)
    max_weight = WEEKDAY_WEIGHT.max() * 1.6
    mean_weight = _season(np.arange(config.days), config).mean()
    # Draw candidates at the peak rate, then thin by the season (a Poisson process).
    candidates = rng.poisson(people.activity * active_days * max_weight / mean_weight)
    customer = np.repeat(np.arange(config.n_customers), candidates)
    day_float = active_from[customer] + rng.random(customer.size) * active_days[customer]
    day = day_float.astype(np.int64)
    keep = rng.random(customer.size) < _season(day, config) / max_weight
    customer, day = customer[keep], day[keep]
    hour_cdf = np.cumsum(HOUR_WEIGHT) / HOUR_WEIGHT.sum()
    hour = np.searchsorted(hour_cdf, rng.random(customer.size))
    start_s = day * 86400 + hour * 3600 + rng.integers(0, 3600, customer.size)
    channel = _sample_rows(people.channel_pref[customer], rng)
    category = _sample_rows(people.taste[customer], rng)
    r_customer, r_start, r_category = _restocks(config, people, active_from)
    r_channel = _sample_rows(people.channel_pref[r_customer], rng)
    customer, start_s = np.r_[customer, r_customer], np.r_[start_s, r_start]
    channel, category = np.r_[channel, r_channel], np.r_[category, r_category]
    restock = np.r_[np.zeros(len(start_s) - len(r_start), bool), np.ones(len(r_start), bool)]
    order = np.argsort(start_s, kind="stable")
    return _Sessions(customer[order], start_s[order], channel[order], category[order],
                     restock[order])


def _restocks(config: ShopConfig, people: _People, active_from: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(customer, start second, category) of every restock visit: for each customer and
    consumable category they care for, a cycle of their own and a phase, then a visit each
    cycle (give or take 12 %) while they are active. Drawn from a stream of their own, so the
    other sessions stay as the seed made them."""
    rng = np.random.default_rng([config.seed, 3])
    categories = _category_list()
    base = np.array([RESTOCK_DAYS.get(c, RESTOCK_DAYS.get(c.split("/")[0], 0.0))
                     for c in categories])
    consumable = np.flatnonzero(_repeatable(categories) & (base > 0))
    taste = people.taste[:, consumable]
    cares = (taste >= RESTOCK_MIN_TASTE) & (rng.random(taste.shape) < np.minimum(1, taste * 8))
    who, which = np.nonzero(cares)
    category = consumable[which]
    cycle = base[category] * rng.lognormal(0.0, 0.35, who.size)
    begin = active_from[who] + rng.random(who.size) * cycle
    span = people.last_day[who] - begin
    count = np.where(span > 0, np.floor(span / cycle).astype(np.int64) + 1, 0)
    pair = np.repeat(np.arange(who.size), count)
    k = _rank_within(pair)
    day = begin[pair] + cycle[pair] * (k + rng.normal(0.0, 0.12, pair.size))
    keep = (day >= active_from[who[pair]]) & (day < people.last_day[who[pair]]) & (day >= 0)
    pair, day = pair[keep], day[keep]
    hour_cdf = np.cumsum(HOUR_WEIGHT) / HOUR_WEIGHT.sum()
    hour = np.searchsorted(hour_cdf, rng.random(pair.size))
    start_s = (day.astype(np.int64) * 86400 + hour * 3600 + rng.integers(0, 3600, pair.size))
    return who[pair], start_s, category[pair]


def _sample_rows(probabilities: np.ndarray, rng: np.random.Generator, chunk: int = 1_000_000):
    """One categorical draw per row of ``probabilities``, in chunks to bound memory."""
    out = np.empty(len(probabilities), dtype=np.int64)
    for lo in range(0, len(probabilities), chunk):
        block = probabilities[lo:lo + chunk]
        cdf = np.cumsum(block, axis=1)
        u = rng.random(len(block))[:, None] * cdf[:, -1:]
        out[lo:lo + chunk] = np.minimum((u > cdf).sum(axis=1), block.shape[1] - 1)
    return out


# ---------------------------------------------------------------------------- events
def _pick_products(catalog: _Catalog, category: np.ndarray, tier: np.ndarray, day: np.ndarray,
                   rng: np.random.Generator, u: np.ndarray | None = None) -> np.ndarray:
    """Popularity-weighted products of the given category and tier, launched by ``day``."""
    picked = np.empty(category.size, dtype=np.int64)
    u = rng.random(category.size) if u is None else u
    group = category * 3 + tier
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(len(catalog.cdf) + 1))
    for (c, t), (ids, cdf) in catalog.cdf.items():
        rows = order[bounds[c * 3 + t]:bounds[c * 3 + t + 1]]
        picked[rows] = ids[np.minimum(np.searchsorted(cdf, u[rows]), len(ids) - 1)]
    # An item not launched yet is replaced by one of its category's day-one items.
    early = np.flatnonzero(catalog.launch_day[picked] > day)
    for c in np.unique(category[early]):
        rows = early[category[early] == c]
        ids = catalog.cdf[(c, 0)][0]
        launched = ids[catalog.launch_day[ids] == 0]
        picked[rows] = launched[rng.integers(0, launched.size, rows.size)]
    return picked


def _make_events(config: ShopConfig, categories: list[str], catalog: _Catalog, people: _People,
                 sessions: _Sessions, rng: np.random.Generator) -> pd.DataFrame:
    s_count = sessions.customer.size
    cust, chan, cat = sessions.customer, sessions.channel, sessions.category
    day = sessions.start_s // 86400
    repeat_cat = catalog.repeatable_category[cat]

    # Staple mode: in consumable categories customers mostly rebuy "their" item, which is
    # fixed per (customer, category) by hashing the pair rather than drawn per session.
    pair = cust.astype(np.uint64) * np.uint64(len(categories)) + cat.astype(np.uint64)
    staple_tier = _tier_from(people.tier_pref[cust], _hash_uniform(pair, 1))
    staple = _pick_products(catalog, cat, staple_tier, np.full(s_count, 10**6), rng,
                            u=_hash_uniform(pair, 2))
    staple_mode = (repeat_cat & (sessions.restock | (rng.random(s_count) < 0.6))
                   & (catalog.launch_day[staple] <= day))

    # Views: one or more per session, all in the session's category.
    extra = rng.poisson(EXTRA_VIEWS[chan])
    n_views = np.where(staple_mode, 1, 1 + extra)
    view_session = np.repeat(np.arange(s_count), n_views)
    view_rank = _rank_within(view_session)
    view_tier = _sample_rows(people.tier_pref[cust[view_session]], rng)
    view_item = _pick_products(catalog, cat[view_session], view_tier, day[view_session], rng)
    last_view = np.cumsum(n_views) - 1
    view_item[last_view[staple_mode]] = staple[staple_mode]
    focal = view_item[last_view]

    # Content read before shopping: readers are more likely to buy.
    has_content_pool = np.array([len(c) > 0 for c in catalog.content_by_category])[cat]
    reads = (rng.random(s_count) < P_CONTENT[chan]) & has_content_pool & ~staple_mode
    content_item = np.full(s_count, -1)
    for c in np.unique(cat[reads]):
        rows = np.flatnonzero(reads & (cat == c))
        pool = catalog.content_by_category[c]
        content_item[rows] = pool[rng.integers(0, pool.size, rows.size)]

    # Offers: shown on web/app sessions when the customer and channel are eligible.
    offer_item, redeem_p = _show_offers(catalog, people, cust, chan, day, rng)
    shown = offer_item >= 0

    # Funnel: cart, then purchase or abandonment. Price fit, reading and offers all help.
    fit = people.tier_pref[cust, catalog.tier[focal]] * 3.0
    p_cart = np.clip(P_CART[chan] * (0.55 + 0.45 * fit) * np.where(reads, 1.4, 1.0)
                     * np.where(staple_mode, 2.5, 1.0), 0, 0.97)
    p_cart = np.where(sessions.restock & staple_mode, RESTOCK_BUY, p_cart)  # they came to rebuy
    carted = rng.random(s_count) < p_cart
    p_buy = np.clip(P_BUY[chan] * np.where(staple_mode, 1.5, 1.0) * (1 + 0.6 * redeem_p), 0, 0.99)
    p_buy = np.where(sessions.restock & staple_mode, RESTOCK_BUY, p_buy)
    bought = carted & (rng.random(s_count) < p_buy)
    bought &= ~_owned_already(cust, focal, bought, catalog.repeatable_category[catalog.category[focal]])
    redeemed = shown & bought & (rng.random(s_count) < redeem_p)
    redeemed &= _within_limit(cust, offer_item, redeemed, catalog)
    removed = carted & ~bought & (rng.random(s_count) < 0.3)
    from_widget = (chan <= 1) & (rng.random(s_count) < 0.25)

    grocery_like = catalog.repeatable_category[catalog.category[focal]]
    quantity = np.where(grocery_like, 1 + rng.poisson(0.8, s_count), 1)

    # Explode into events: (session, order-in-session, item, type, quantity).
    parts = [
        (np.flatnonzero(shown), 0, offer_item[shown], EventType.OFFER_SHOWN, 1),
        (np.flatnonzero(reads), 1, content_item[reads], EventType.VIEW, 1),
        (np.flatnonzero(from_widget), 2, view_item[np.cumsum(n_views)[from_widget] - n_views[from_widget]],
         EventType.IMPRESSION, 1),
        (np.flatnonzero(from_widget), 3, view_item[np.cumsum(n_views)[from_widget] - n_views[from_widget]],
         EventType.CLICK, 1),
        (view_session, 10 + view_rank, view_item, EventType.VIEW, 1),
        (np.flatnonzero(carted), 500, focal[carted], EventType.ADD_TO_CART, quantity[carted]),
        (np.flatnonzero(removed), 600, focal[removed], EventType.REMOVE_FROM_CART, quantity[removed]),
        (np.flatnonzero(bought), 700, focal[bought], EventType.PURCHASE, quantity[bought]),
        (np.flatnonzero(redeemed), 701, offer_item[redeemed], EventType.OFFER_REDEEMED, 1),
    ]
    session = np.concatenate([p[0] for p in parts])
    order = np.concatenate([np.broadcast_to(p[1], p[0].shape) for p in parts])
    item = np.concatenate([p[2] for p in parts]).astype(np.int64)
    type_codes = np.concatenate([np.full(p[0].size, i) for i, p in enumerate(parts)])
    qty = np.concatenate([np.broadcast_to(p[4], p[0].shape) for p in parts]).astype(np.int64)
    type_names = np.array([p[3].value for p in parts])

    sort = np.lexsort((order, session))
    session, item, type_codes, qty = session[sort], item[sort], type_codes[sort], qty[sort]
    gaps = rng.exponential(40.0, session.size) + 3.0
    first = np.r_[True, session[1:] != session[:-1]]
    gaps[first] = 0.0
    offset = np.cumsum(gaps)
    offset -= np.maximum.accumulate(np.where(first, offset, 0.0))
    seconds = sessions.start_s[session] + offset
    seconds_us = (seconds * 1e6).astype(np.int64)
    time_order = np.argsort(seconds_us, kind="stable")
    session, item, type_codes, qty, seconds_us = (
        a[time_order] for a in (session, item, type_codes, qty, seconds_us))

    event_channel = np.array([c.value for c in SESSION_CHANNELS])[chan[session]]
    is_product = item < config.n_products
    priced = is_product & np.isin(type_codes, [5, 6, 7])
    price = np.where(priced, catalog.price[np.minimum(item, config.n_products - 1)], np.nan)
    start_us = int(pd.Timestamp(config.start).value // 1000)
    ids = catalog.frame["item_id"].to_numpy()
    n = session.size
    table = pa.table({
        "event_id": _ids("e", np.arange(n), 10),
        "customer_id": pa.array(people.frame["customer_id"].to_numpy()[cust[session]]),
        "item_id": pa.array(ids[item]),
        "event_type": pa.array(type_names[type_codes]),
        "timestamp": pa.array(seconds_us + start_us, pa.timestamp("us", tz="UTC")),
        "channel": pa.array(event_channel),
        "session_id": _ids("s", session, 9),
        "quantity": pa.array(qty),
        "price": pa.array(price, from_pandas=True),
        "recommendation_id": pa.nulls(n, pa.string()),
        "decision_id": pa.nulls(n, pa.string()),
        "context": pa.nulls(n, pa.string()),
    })
    return table.cast(arrow_schema(EVENTS)).to_pandas()


def _show_offers(catalog: _Catalog, people: _People, cust: np.ndarray, chan: np.ndarray,
                 day: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Which offer each session shows (-1 for none) and how likely it is to be redeemed."""
    offer_item = np.full(cust.size, -1)
    redeem_p = np.zeros(cust.size)
    if catalog.offer_rows.size == 0:
        return offer_item, redeem_p
    candidate = rng.integers(0, catalog.offer_rows.size, cust.size)
    segment_ok = np.array([[s in segs for s in range(len(SEGMENTS))]
                           for segs in catalog.offer_segments])
    channel_ok = np.array([[c in chans for c in range(len(SESSION_CHANNELS))]
                           for chans in catalog.offer_channels])
    eligible = (
        segment_ok[candidate, people.segment[cust]]
        & channel_ok[candidate, chan]
        & (catalog.offer_from_day[candidate] <= day)
        & (day <= catalog.offer_to_day[candidate])
        & (rng.random(cust.size) < 0.3)
    )
    offer_item[eligible] = catalog.offer_rows[candidate[eligible]]
    value = catalog.offer_value[candidate]
    logit = -2.0 + 0.06 * value + 1.6 * people.offer_sensitivity[cust]
    redeem_p[eligible] = (1 / (1 + np.exp(-logit)))[eligible]
    return offer_item, redeem_p


def _owned_already(cust: np.ndarray, item: np.ndarray, bought: np.ndarray,
                   repeatable: np.ndarray) -> np.ndarray:
    """True for a purchase of a durable the customer already bought (they keep the cart)."""
    rows = np.flatnonzero(bought & ~repeatable)
    again = pd.DataFrame({"c": cust[rows], "i": item[rows]}).duplicated().to_numpy()
    owned = np.zeros(cust.size, dtype=bool)
    owned[rows[again]] = True
    return owned


def _within_limit(cust: np.ndarray, offer_item: np.ndarray, redeemed: np.ndarray,
                  catalog: _Catalog) -> np.ndarray:
    """False for redemptions past the offer's per-customer limit (sessions are in time order)."""
    ok = np.ones(cust.size, dtype=bool)
    rows = np.flatnonzero(redeemed)
    if rows.size == 0:
        return ok
    pairs = pd.DataFrame({"c": cust[rows], "o": offer_item[rows]})
    nth = pairs.groupby(["c", "o"], sort=False).cumcount().to_numpy()
    limit = catalog.offer_limit[offer_item[rows] - catalog.offer_rows[0]]
    ok[rows[nth >= limit]] = False
    return ok


def _hash_uniform(keys: np.ndarray, salt: int) -> np.ndarray:
    """A uniform number in [0, 1) that depends only on the key (splitmix64 finalizer)."""
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(salt + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _tier_from(tier_pref: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.minimum((u[:, None] > np.cumsum(tier_pref, axis=1)).sum(axis=1), 2)


def _rank_within(groups: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values of a sorted array."""
    starts = np.r_[0, np.flatnonzero(groups[1:] != groups[:-1]) + 1]
    lengths = np.diff(np.r_[starts, groups.size])
    return np.arange(groups.size) - np.repeat(starts, lengths)


def _ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    text = pc.utf8_lpad(pc.cast(pa.array(numbers), pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, text, "")


def _conform(frame: pd.DataFrame, contract) -> pd.DataFrame:
    """Give a generated frame exactly the contract's columns and types, as the warehouse has them."""
    typed, report = validate_table(frame, contract, f"synthetic {contract.name}")
    if not report.ok:  # a bug in the generator, never the user's fault
        raise AssertionError(report.describe())
    table = pa.Table.from_pandas(typed, schema=arrow_schema(contract), preserve_index=False)
    return table.replace_schema_metadata(None).to_pandas()


def store_shop(warehouse: Warehouse, shop: SyntheticShop) -> None:
    """Store a generated shop, and its ground truth next to the warehouse for evaluation."""
    warehouse.upsert("items", shop.items)
    warehouse.upsert("customers", shop.customers)
    warehouse.append_events(shop.events)
    truth = warehouse.root.parent / "synthetic"
    truth.mkdir(parents=True, exist_ok=True)
    shop.customer_tastes.to_parquet(truth / "customer_tastes.parquet")
    if shop.customer_traits is not None:
        shop.customer_traits.to_parquet(truth / "customer_traits.parquet")
        shop.item_tiers.to_frame().to_parquet(truth / "item_tiers.parquet")
    (truth / "config.json").write_text(json.dumps(shop.config.model_dump(mode="json"), indent=2))


def ensure_shop(data_dir: Path, n_events: int = 200_000, seed: int = 42) -> Warehouse:
    """The warehouse under ``data_dir``: as it is if it holds events (imported or generated
    earlier), else filled with the built-in synthetic shop of about ``n_events`` events."""
    warehouse = Warehouse(Path(data_dir) / "warehouse")
    if warehouse.counts()["events"] == 0:
        store_shop(warehouse, generate_shop(ShopConfig.for_events(n_events, seed=seed)))
    return warehouse

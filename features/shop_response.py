"""How the synthetic shop's customers respond to what they are shown or sent: the simulator's
truth.

The synthetic shop draws every customer's tastes, price tier, offer sensitivity and channel
habits (``features.synthetic``); this model turns them into response probabilities, so a
simulated storefront can show a customer the service's real answer and draw what they do:

* **click**: rises with how well the item matches the customer (their taste for its category,
  times how well its price tier fits theirs) and falls with its position,
  ``(BASE_CLICK + MATCH_CLICK x match) / log2(1 + position)``;
* **add to cart** after a click: ``CART_BASE + CART_MATCH x match``; **purchase** of a cart: the
  channel's rate (the synthetic shop's ``P_BUY``);
* **the customer's own cart**: an item they put in their cart and have not bought yet is
  recognised when shown again, ``CART_RETURN_CLICK / log2(1 + position)``, and a click on it
  goes straight to checkout (it is in the cart already): what makes a cart reminder work in real
  shops, and what a cart-recovery journey's holdout must measure;
* **offers**: redeemed when shown with ``sigmoid(REDEEM_BIAS + REDEEM_SENSITIVITY x
  sensitivity + REDEEM_VALUE x value)``;
* **messages**: opened with the channel's base rate, scaled by the customer's habit on it and
  cut by ``FATIGUE`` for every message they got in the previous week; an opened message's items
  are then clicked like a shelf's; **opt-out**: a message withdraws the customer's consent on
  its channel with ``OPT_OUT_BASE``, times ``OPT_OUT_GROWTH`` for every message they got in the
  previous week (what an opt-out guardrail must see when a variant sends more).

Because the truth is known, a report's numbers can be checked against it, and a better ranking
must show up as more clicks and revenue.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from features.contracts import ItemKind
from features.synthetic import P_BUY, SESSION_CHANNELS, TIER_FIT, TIER_NAMES, SyntheticShop

BASE_CLICK = 0.01
MATCH_CLICK = 0.30
CART_BASE, CART_MATCH = 0.25, 0.35
CART_RETURN_CLICK = 0.6
REDEEM_BIAS, REDEEM_SENSITIVITY, REDEEM_VALUE = -3.2, 0.9, 0.06
OPEN_RATE = {"email": 0.25, "push": 0.35, "sms": 0.45}
FATIGUE = 0.7
OPT_OUT_BASE, OPT_OUT_GROWTH = 0.003, 1.5
BUY_RATE = {channel.value: float(P_BUY[c]) for c, channel in enumerate(SESSION_CHANNELS)}


class TruthMissing(FileNotFoundError):
    """The data directory holds no synthetic shop, so there is no truth to respond from."""


@dataclass(frozen=True)
class ResponseModel:
    tastes: pd.DataFrame
    """customers x categories, rows summing to 1."""
    traits: pd.DataFrame
    """``SyntheticShop.customer_traits``."""
    items: pd.DataFrame
    """The catalog, indexed by item_id, with ``tier`` for products."""

    @classmethod
    def of(cls, shop: SyntheticShop) -> ResponseModel:
        return cls(shop.customer_tastes, shop.customer_traits,
                   _catalog(shop.items, shop.item_tiers))

    @classmethod
    def load(cls, data_dir: Path, items: pd.DataFrame) -> ResponseModel:
        """The truth ``store_shop`` wrote next to the warehouse under ``data_dir``."""
        truth = Path(data_dir) / "synthetic"
        needed = [truth / f"{name}.parquet" for name in
                  ("customer_tastes", "customer_traits", "item_tiers")]
        missing = [p for p in needed if not p.exists()]
        if missing:
            raise TruthMissing(
                f"{missing[0]} is missing: the simulator answers as the synthetic shop's "
                "customers, so it needs a data directory made by 'nextbest demo' (or "
                "'nextbest data generate'), not imported data")
        tiers = pd.read_parquet(needed[2])["tier"]
        return cls(pd.read_parquet(needed[0]), pd.read_parquet(needed[1]),
                   _catalog(items, tiers))

    # ------------------------------------------------------------------ who matches what
    def match(self, customer: str, item_ids: list[str]) -> np.ndarray:
        """How well each item suits the customer, in [0, 1]: their taste for its category
        relative to their favourite, times its price tier's fit (products; content: taste
        only; offers and unknown items: 0)."""
        if customer not in self.tastes.index or not item_ids:
            return np.zeros(len(item_ids))
        taste = self.tastes.loc[customer]
        taste = taste / max(taste.max(), 1e-12)
        rows = self.items.reindex(item_ids)
        liking = taste.reindex(rows["category"]).fillna(0.0).to_numpy()
        preference = self.traits.loc[customer, [f"tier_{n}" for n in TIER_NAMES]].to_numpy()
        fit = np.ones(len(item_ids))
        tiers = rows["tier"].to_numpy()
        priced = ~np.isnan(tiers)
        fit[priced] = preference @ TIER_FIT[:, tiers[priced].astype(int)]
        kinds = rows["kind"].to_numpy()
        return np.where(np.isin(kinds, [ItemKind.PRODUCT.value, ItemKind.CONTENT.value]),
                        liking * fit, 0.0)

    def click_probability(self, customer: str, item_ids: list[str],
                          carted: frozenset[str] | set[str] = frozenset()) -> np.ndarray:
        """For a list shown in this order (position 1 first); ``carted``: the items in the
        customer's cart, not bought yet."""
        positions = np.arange(1, len(item_ids) + 1)
        interest = BASE_CLICK + MATCH_CLICK * self.match(customer, item_ids)
        in_cart = np.fromiter((i in carted for i in item_ids), bool, len(item_ids))
        return np.where(in_cart, CART_RETURN_CLICK, interest) / np.log2(1 + positions)

    @staticmethod
    def cart_probability(match: float) -> float:
        return CART_BASE + CART_MATCH * match

    @staticmethod
    def purchase_probability(channel: str) -> float:
        return BUY_RATE.get(channel, BUY_RATE["web"])

    def redeem_probability(self, customer: str, offer_id: str) -> float:
        value = self.items["offer_value"].get(offer_id)
        if customer not in self.traits.index or value is None or pd.isna(value):
            return 0.0
        z = (REDEEM_BIAS + REDEEM_SENSITIVITY * self.traits.at[customer, "offer_sensitivity"]
             + REDEEM_VALUE * float(value))
        return float(1 / (1 + np.exp(-z)))

    def open_probability(self, customer: str, channel: str, messages_last_week: int) -> float:
        habit = 0.5 + (self.traits.at[customer, "app"] if channel == "push"
                       else self.traits.at[customer, "email"] if channel == "email" else 0.5)
        return min(1.0, OPEN_RATE.get(channel, 0.2) * habit) * FATIGUE ** messages_last_week

    @staticmethod
    def opt_out_probability(messages_last_week: int) -> float:
        return min(1.0, OPT_OUT_BASE * OPT_OUT_GROWTH ** messages_last_week)

    # ------------------------------------------------------------------ visits
    def storefront_channel(self, customer: str, rng: np.random.Generator) -> str:
        """web or app, by the customer's habits on the two."""
        web, app = self.traits.loc[customer, ["web", "app"]].to_numpy()
        return "web" if rng.random() < web / max(web + app, 1e-12) else "app"

    def visitors(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` visits' customers, drawn by how often each customer visits."""
        weight = self.traits["activity"].to_numpy()
        return self.traits.index.to_numpy()[rng.choice(len(weight), count, p=weight / weight.sum())]

    def organic_pick(self, customer: str, rng: np.random.Generator, avoid: set[str]) -> str | None:
        """A product the customer finds on their own: a category by taste, then any product of
        it not in ``avoid``."""
        taste = self.tastes.loc[customer].to_numpy()
        category = self.tastes.columns[rng.choice(len(taste), p=taste / taste.sum())]
        pool = [i for i in self.products_by_category.get(category, ()) if i not in avoid]
        return pool[rng.integers(len(pool))] if pool else None

    @cached_property
    def products_by_category(self) -> dict[str, list[str]]:
        products = self.items[self.items["kind"] == ItemKind.PRODUCT.value]
        return {c: list(g.index) for c, g in products.groupby("category")}


def _catalog(items: pd.DataFrame, tiers: pd.Series) -> pd.DataFrame:
    catalog = items.set_index("item_id")[["kind", "category", "price", "offer_value"]].copy()
    catalog["tier"] = tiers.reindex(catalog.index).astype(float)
    return catalog


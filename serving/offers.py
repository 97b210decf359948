"""The shop's offers as a request sees them: who may get each one (``OfferShelf``), and P(redeem)
for a customer and the offers they may get, from the registered offer-response model
(``OfferScorer``).

The offer model (``propensity-offer``, trained by ``nextbest train propensity --kind offer``) was
fitted on rows of customer features as of a cutoff plus the offer's terms (value, minimum basket,
days left). At serving time the customer part is computed once per load for every customer, the
offer part per request; a request builds one small float matrix and calls the booster directly.
Customers the snapshot does not know get missing values, which LightGBM routes like any other
customer with no history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from features.contracts import ItemKind
from serving.shop import Item, ShopView
from training.propensity.model import PropensityModel

OFFER_FEATURES = ("offer_value", "offer_min_basket", "offer_days_left")
DEFAULT_RATE = 0.1
"""The redemption rate assumed for an offer with no history."""


def offer_is_eligible(offer: Item, segment: str, channel: str, cart_value: float,
                      redeemed: int, now: datetime) -> bool:
    """May this customer get this offer now? Every rule, in one place: the offer's audience
    (``meant_for``: segment and channel) and what changes between requests (``Shelved.open``:
    validity window, basket minimum, the customer's redemption limit). Expired offers never
    show."""
    return meant_for(offer, segment, channel) and Shelved.of(offer, 0.0).open(
        now.timestamp(), cart_value, redeemed)


def meant_for(offer: Item, segment: str, channel: str) -> bool:
    return (offer.kind == ItemKind.OFFER.value
            and (not offer.segments or segment in offer.segments)
            and (not offer.channels or channel in offer.channels))


@dataclass(frozen=True, slots=True)
class Shelved:
    """An offer with its validity window as POSIX seconds (open ends infinite), so that the
    per-request check compares floats rather than timestamps, and its prior redemption rate."""

    item: Item
    starts: float
    ends: float
    rate: float

    @classmethod
    def of(cls, offer: Item, rate: float) -> Shelved:
        return cls(offer, -math.inf if offer.valid_from is None else offer.valid_from.timestamp(),
                   math.inf if offer.valid_to is None else offer.valid_to.timestamp(), rate)

    def open(self, moment: float, cart_value: float, redeemed: int) -> bool:
        """Valid at ``moment`` (POSIX seconds), the basket reaches its minimum, and the customer
        is under its redemption limit."""
        limit = self.item.redemption_limit
        return (self.starts <= moment <= self.ends and cart_value >= self.item.min_basket
                and (limit is None or redeemed < limit))

    @property
    def value(self) -> float:
        return self.item.offer_value or 0.0


class OfferShelf:
    """The shop's offers by audience: for each (segment, channel), the offers meant for it, in
    catalog order and in order of expected value at their prior redemption rate. Audiences never
    change between requests, so a request checks only what does (``Shelved.open``) on its own
    audience's offers; without an offer model it walks them best first and stops when the list
    is full. Kept per audience as requests ask (segments x channels: a few dozen)."""

    def __init__(self, shop: ShopView) -> None:
        self._offers = [Shelved.of(offer, shop.offer_rate.get(offer.item_id, DEFAULT_RATE))
                        for offer in shop.offers]
        self._audiences: dict[tuple[str, str], tuple[list[Shelved], list[Shelved]]] = {}

    def meant_for(self, segment: str, channel: str) -> tuple[list[Shelved], list[Shelved]]:
        """(offers in catalog order, the same by expected value at the prior rate, best first)."""
        found = self._audiences.get((segment, channel))
        if found is None:
            if len(self._audiences) >= 1024:  # bounded, whatever segments the shop has
                self._audiences.clear()
            mine = [o for o in self._offers if meant_for(o.item, segment, channel)]
            found = (mine, sorted(mine, key=lambda o: -o.rate * o.value))
            self._audiences[(segment, channel)] = found
        return found


class OfferScorer:
    def __init__(self, model: PropensityModel, version: str, customer_features: pd.DataFrame
                 ) -> None:
        names = model.feature_names_
        missing_offer_terms = [f for f in OFFER_FEATURES if f not in names]
        if missing_offer_terms:
            raise ValueError(f"the offer model (version {version}) lacks "
                             f"{', '.join(missing_offer_terms)}: is it an offer-response model?")
        self.model, self.version = model, version
        customer_columns = [f for f in names if f not in OFFER_FEATURES]
        self._customers = customer_features.reindex(columns=customer_columns).to_numpy(float)
        self._row = {customer: i for i, customer in enumerate(customer_features.index)}
        self._customer_slots = [names.index(f) for f in customer_columns]
        self._offer_slots = [names.index(f) for f in OFFER_FEATURES]

    def redeem_probability(self, customer_id: str, offers: list[Item],
                           now: datetime) -> np.ndarray:
        """P(customer redeems each offer if shown now), in the order of ``offers``."""
        rows = np.full((len(offers), len(self.model.feature_names_)), np.nan)
        row = self._row.get(customer_id)
        if row is not None:
            rows[:, self._customer_slots] = self._customers[row]
        for i, offer in enumerate(offers):
            days_left = (np.nan if offer.valid_to is None
                         else (offer.valid_to - now) / pd.Timedelta(days=1))
            rows[i, self._offer_slots] = (offer.offer_value or 0.0, offer.min_basket, days_left)
        return self.model.predict_proba_rows(rows)[:, 1]

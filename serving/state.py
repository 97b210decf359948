"""The serving state: what a worker loads, holds and swaps whole, and how it is built.

A ``ServingState`` is the models the serving alias names (``serving.models``), the shop view
they are served with (``serving.shop``) and what is derived from both once per state rather
than per request: the neighbour table, the product arrays (``serving.products``), the text
index, the customers' propensity scores, the offer scorer. It is immutable: a new version is
built aside, checked to answer (``smoke_check``), then swapped in by the service, the
background worker and the simulator alike, so a request never sees a mix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.contracts import ItemKind
from features.event_time import TimeWindow
from features.online import CustomerState
from features.settings import Settings
from features.warehouse import Warehouse
from serving.models import (
    LoadedModels,
    ModelCache,
    RegistryUnavailable,
    VersionsRefused,
    load_last_good,
    load_models,
    offer_model_name,
)
from serving.offers import OfferScorer, OfferShelf
from serving.products import ProductIndex
from serving.schemas import RecommendRequest
from serving.shop import ShopView, load_shop
from training.propensity.scoring import ScoredCustomers, customer_features
from training.recommenders.content import ContentRecommender

log = logging.getLogger("nextbest.serving")
NEIGHBOURS = 50
"""Neighbours kept per item; similar_items asking for more scores the catalog instead."""


@dataclass(frozen=True)
class ServingState:
    """Models and shop view that are swapped together, so a request never sees a mix."""

    models: LoadedModels
    shop: ShopView
    content: ContentIndex
    propensity: ScoredCustomers | None = None
    neighbours: tuple[np.ndarray, np.ndarray] | None = None
    """Each item's nearest items by the recommender (columns, scores), precomputed at load for
    factor models, so that "similar to" is a lookup rather than a pass over the catalog."""
    offers: OfferScorer | None = None
    """P(redeem) per customer and offer from the offer-response model, when one is registered."""

    @cached_property
    def offer_shelf(self) -> OfferShelf:
        """The offers by audience; built on first use (the smoke check, at load)."""
        return OfferShelf(self.shop)

    @cached_property
    def products(self) -> ProductIndex:
        """The catalog's products as arrays; built on first use (the smoke check, at load)."""
        return ProductIndex.build(self.shop, self.models.recommender.interactions)


class ContentIndex:
    """Text similarity over the whole catalog: reaches items no one has interacted with yet."""

    def __init__(self, shop: ShopView) -> None:
        catalog = [i for i in shop.items.values() if i.kind != ItemKind.OFFER.value]
        self.item_ids = [i.item_id for i in catalog]
        self.position = {item_id: p for p, item_id in enumerate(self.item_ids)}
        info = pd.DataFrame({"title": [i.title for i in catalog], "description": "",
                             "category": [i.category for i in catalog]})
        empty = sp.csr_matrix((1, len(catalog)), dtype=np.float32)  # text only, no history
        self.model = ContentRecommender(ngram_max=1).fit(empty, info) if catalog else None

    def similar(self, item_id: str, n: int) -> list[tuple[str, float]]:
        if self.model is None or item_id not in self.position:
            return []
        ids, scores = self.model.similar_items(self.position[item_id], N=n)
        return [(self.item_ids[i], float(s)) for i, s in zip(ids, scores, strict=True)
                if np.isfinite(s) and s > 0]


def build_state(settings: Settings, models: LoadedModels | None = None) -> ServingState:
    """A serving state to start with: the aliased versions (or ``models``, when given) if they
    load and answer, else the last good versions from the cache, saying why."""
    if models is not None:
        return assemble_state(settings, models)
    try:
        return load_state(settings)
    except (RegistryUnavailable, VersionsRefused) as error:
        return assemble_state(settings, load_last_good(settings, str(error)))


def load_state(settings: Settings, retry_refused: bool = False) -> ServingState:
    """The state of the versions the alias names now, loaded from the registry. A set that does
    not load or does not answer is remembered as refused (``ModelCache``) and raised as
    :class:`VersionsRefused`; a set that works becomes the last good one."""
    models = load_models(settings, settings.serving_alias, retry_refused)
    cache = ModelCache(settings)
    try:
        state = assemble_state(settings, models)
    except Exception as error:  # noqa: BLE001 - whatever a broken model raises, it is refused
        reason = f"versions {models.versions} fail with the shop: {type(error).__name__}: {error}"
        cache.refuse(models.versions, reason)
        raise VersionsRefused(models.versions, reason) from None
    cache.remember_good(models.versions)
    return state


def assemble_state(settings: Settings, models: LoadedModels) -> ServingState:
    """Models and the shop view as one state, checked to answer."""
    warehouse = Warehouse(settings.data_dir / "warehouse")
    # read once for everything below; an event stored with a date no shop has (before such
    # events were refused) must neither stop the start nor move the shop's clock
    events = warehouse.events_within(TimeWindow.current(settings), log.warning)
    items = warehouse.items()
    shop = load_shop(warehouse, events, items)
    scores = None
    if models.propensity is not None:
        scores = ScoredCustomers.score(models.propensity,
                                       models.versions[settings.propensity_name], events, items)
    offers = None
    if models.offer is not None:
        options = models.offer.feature_options_
        features = (scores.features if scores is not None
                    and scores.model.feature_options_ == options
                    else customer_features(events, items, options=options)[1])
        offers = OfferScorer(models.offer, models.versions[offer_model_name(settings)], features)
    state = ServingState(models, shop, ContentIndex(shop), scores,
                         neighbour_table(models.recommender.model, settings), offers)
    smoke_check(state)
    return state


def variant_states(settings: Settings, state: ServingState, versions: set[str]
                   ) -> dict[str, ServingState]:
    """A serving state per recommender version the experiments name, sharing everything but
    the recommender (and what is derived from it) with ``state``: each costs one more copy of
    a recommender's tables and arrays in every worker (docs/experiments.md)."""
    states = {}
    cache = ModelCache(settings)
    name = settings.recommender_name
    for version in sorted(versions - {state.models.versions.get(name)}):
        cache.fetch(name, version)
        loaded = cache.read({name: version}, "registry", verify=False)
        models = replace(state.models, recommender=loaded.recommender,
                         versions={**state.models.versions, name: version})
        variant = replace(state, models=models,
                          neighbours=neighbour_table(loaded.recommender.model, settings))
        smoke_check(variant)
        states[version] = variant
    if state.models.versions.get(name) in versions:
        states[state.models.versions[name]] = state
    return states


def neighbour_table(model, settings: Settings) -> tuple[np.ndarray, np.ndarray] | None:
    """Every item's nearest items, precomputed for factor models up to a catalog size (the cost
    grows with its square); other models score similarity per request."""
    if model.n_items_ > settings.neighbour_table_max_items:
        return None
    try:
        return model.item_neighbours(N=NEIGHBOURS)
    except ValueError:  # sparse or wide item vectors (item-kNN, EASE): scored per request
        return None


def smoke_check(state: ServingState) -> None:
    """A model that cannot answer a known customer, an unknown one and one with events newer
    than the model is never swapped in. It also builds what a request would otherwise build
    first (the product arrays, the compiled loops)."""
    interactions = state.models.recommender.interactions
    known = next(iter(interactions.user_ids), "smoke-unknown")
    viewed = next(iter(interactions.item_ids), None)
    fresh = CustomerState("smoke-fresh", views=[(str(viewed), 0.0)] if viewed is not None else [],
                          last_event=0.0)
    from serving.pipeline import recommend  # the pipeline ranks states; a state is ranked once here

    for customer, live in ((str(known), None), ("smoke-unknown", None), ("smoke-fresh", fresh)):
        answer = recommend(state, RecommendRequest(customer_id=customer), state.shop.as_of,
                           live=live)
        if not answer["products"]:
            raise RuntimeError(f"smoke check failed: no products for customer {customer}")

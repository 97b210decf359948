"""The ranking pipeline: candidates → business rules → scoring → diversity → response.

Each stage is a plain function of plain data, so it is tested without a server and reads top to
bottom. A request is answered per kind:

* products: candidates from collaborative filtering for the customer, items similar to what they
  just viewed or hold in their cart, what is popular for their segment on this channel, and new
  products in categories they like; rules drop what cannot or should not be shown; sources are
  blended into one score, and the best source gives the human reason;
* content: articles in the categories the customer is browsing, or similar to the current item
  by text, or popular reading;
* offers: only eligible ones (segment, channel, validity window, basket minimum, the customer's
  redemption limit), ranked by expected value = redemption probability × offer value.

What the customer did since the serving snapshot (their live state from ``features.online``) is
merged in first: fresh purchases, views and cart contents change every stage, and the
collaborative model re-derives the customer's vector from their fresh history.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from itertools import chain, islice
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.contracts import CONTACT_CHANNELS, EventType, ItemKind
from features.experiments import Assignment
from features.online.state import CustomerState
from serving import kernels
from serving.customers import Behaviour
from serving.engagement.policy import ContactPolicy, contact_verdict, recently_shown
from serving.offers import Shelved
from serving.products import ProductIndex
from serving.schemas import MAX_N, RecommendRequest
from serving.shop import Item, ShopView
from training.interactions import InteractionConfig
from training.tracking import TOP_ITEMS

if TYPE_CHECKING:
    from serving.state import ServingState

PRODUCT, CONTENT, OFFER = ItemKind.PRODUCT.value, ItemKind.CONTENT.value, ItemKind.OFFER.value
CANDIDATES = TOP_ITEMS
"""Collaborative candidates per request: as many as the training job keeps per customer."""
SOURCE_WEIGHT = {"for_you": 1.0, "similar": 0.9, "new": 0.5, "popular": 0.35}
SIMILAR_PER_ANCHOR = 30
"""Candidates "similar to" each item the customer is looking at, holds or just viewed."""
FRESH_WEIGHT = InteractionConfig().weights
"""How much a fresh event adds to the customer's history row: training's default weights."""


@dataclass(slots=True)
class Candidate:
    item_id: str
    score: float
    reason: str
    source: str
    """What placed it (``SOURCES``): kept with every exposure, so KPIs can say which source
    earns its place."""


SOURCES = {
    ItemKind.PRODUCT: ("for_you", "similar", "new", "popular", "buy_again"),
    ItemKind.CONTENT: ("context", "category", "popular"),
    ItemKind.OFFER: ("expected_value",),
}
"""The candidate sources of each kind, as exposures and answers name them."""


# ---------------------------------------------------------------------------- entry point
def recommend(state: ServingState, request: RecommendRequest, now: datetime,
              max_category_share: float = 0.5, live: CustomerState | None = None,
              policy: ContactPolicy | None = None, assignment: Assignment | None = None
              ) -> dict:
    """Answer one request: ranked products, content and offers, with reasons and ids.

    ``now`` is a timezone-aware datetime (a ``pd.Timestamp`` is one). ``live`` is the customer's
    online state (None when it could not be read: the answer then comes from the serving
    snapshot alone); ``policy`` applies cross-channel memory and reports whether a contact
    channel may be used now. ``assignment`` is the customer's place in the experiments: a
    held-out customer (or a variant that turns personalization off) is ranked as an unknown
    customer would be, and a variant's ranking settings apply.
    """
    for kind, count in request.n.items():
        if not 0 <= count <= MAX_N:
            raise ValueError(f"n.{kind.value} must be between 0 and {MAX_N}, got {count}")
    personal = assignment is None or assignment.personalized
    behaviour = state.shop.customer(request.customer_id) if personal else Behaviour()
    if personal and live is not None and live.last_event is not None:
        behaviour, request = with_live_state(behaviour, request, live)
    known = (request.customer_id in state.shop.segments
             or request.customer_id in state.shop.behaviour or bool(live and live.last_event))
    answer = {"recommendation_id": recommendation_id(), "customer_id": request.customer_id,
              "known_customer": known, "model_versions": dict(state.models.versions),
              "served_from": state.models.source,
              "experiments": assignment.labels() if assignment is not None else {}}
    if policy is not None and live is not None:
        request = _apply_contact_policy(state, request, live, policy, now, answer)
    if assignment is not None:
        max_category_share = assignment.max_category_share(max_category_share)
    if not personal:  # ranked for nobody in particular (what the page sent still counts)
        live = None
        request = request.model_copy(update={"customer_id": NOBODY})
    n, items = request.n, state.shop.items
    liked = _liked_categories(state.shop, behaviour)
    products = rank_products(state, request, behaviour, n.get(ItemKind.PRODUCT, 0),
                             max_category_share, live, liked)
    content = rank_content(state, request, behaviour, n.get(ItemKind.CONTENT, 0), liked)
    offers = rank_offers(state, request, behaviour, now, n.get(ItemKind.OFFER, 0))
    answer["products"] = [_entry(items[c.item_id], c) for c in products]
    answer["content"] = [_entry(items[c.item_id], c) for c in content]
    answer["offers"] = [_entry(items[c.item_id], c) for c in offers]
    answer["buy_again"] = [_entry(items[c.item_id], c)
                           for c in rank_buy_again(state, request, live, now)]
    return answer


def rank_buy_again(state: ServingState, request: RecommendRequest, live: CustomerState | None,
                   now: datetime) -> list[Candidate]:
    """The customer's own past purchases that are due again (``BuyAgain.due_for``, with the
    purchases since the snapshot from the live state), in stock and not excluded."""
    model = state.shop.buy_again
    if request.buy_again == 0 or model is None or request.customer_id == NOBODY:
        return []
    fresh = live.purchased if live is not None else None
    excluded = set(request.exclude)
    shelf = []
    for item_id, score, reason in model.due_for(request.customer_id, pd.Timestamp(now),
                                                request.buy_again + len(excluded), fresh):
        item = state.shop.items.get(item_id)
        if item is None or not item.in_stock or item_id in excluded:
            continue
        shelf.append(Candidate(item_id, score, reason, "buy_again"))
    return shelf[:request.buy_again]


NOBODY = "\x00nobody"
"""The customer id a held-out customer is ranked as: no history, no segment, no row."""


def recommendation_id() -> str:
    """128 random bits as 32 hex digits, like ``uuid4().hex``: an id to attribute clicks to,
    which needs to be unique, not secret. ``uuid4`` reads the kernel's random source on every
    call (a system call, 0.01-0.03 ms of a served request); Python's generator is seeded from
    it once per process (and again in a forked child)."""
    return f"{random.getrandbits(128):032x}"


def with_live_state(behaviour: Behaviour, request: RecommendRequest,
                    live: CustomerState) -> tuple[Behaviour, RecommendRequest]:
    """The snapshot's behaviour plus what the customer did since, and their live cart as context.

    Redemptions take the larger count of the two sources, since events flushed to the warehouse
    appear in both after the next reload.
    """
    redemptions = Counter(behaviour.redemptions)
    for offer, count in live.redemptions.items():
        redemptions[offer] = max(redemptions[offer], count)
    merged = Behaviour(purchased=behaviour.purchased | set(live.purchased),
                       recent_views=list(dict.fromkeys([*live.recent_views(),
                                                        *behaviour.recent_views]))[:20],
                       redemptions=redemptions)
    if live.cart:
        cart = list(dict.fromkeys([*request.context.cart_items, *live.cart]))
        request = request.model_copy(
            update={"context": request.context.model_copy(update={"cart_items": cart})})
    return merged, request


def _apply_contact_policy(state: ServingState, request: RecommendRequest, live: CustomerState,
                          policy: ContactPolicy, now: datetime, answer: dict) -> RecommendRequest:
    """On a contact channel: say whether it may be used now, and leave out what was shown or sent
    on another channel within the cross-channel memory."""
    channel = request.channel.value
    if request.channel not in CONTACT_CHANNELS:
        return request
    verdict = contact_verdict(policy, live, state.shop.consents.get(request.customer_id,
                                                                    frozenset()),
                              channel, now, state.shop.timezones.get(request.customer_id))
    answer["contact"] = {"channel": channel, "allowed": verdict is None, "reason": verdict}
    elsewhere = {item for item in recently_shown(policy, live, now)
                 if live.shown[item][0] != channel}
    if not elsewhere:
        return request
    return request.model_copy(update={"exclude": list(dict.fromkeys([*request.exclude,
                                                                      *elsewhere]))})


def _entry(item: Item, candidate: Candidate) -> dict:
    """Scores to six places: ``round(x * 1e6) / 1e6`` rather than ``round(x, 6)``, which
    costs six times as much (a third of writing the answer)."""
    return {"item_id": item.item_id, "title": item.title, "category": item.category,
            "score": round(candidate.score * 1e6) / 1e6, "reason": candidate.reason,
            "source": candidate.source}


# ---------------------------------------------------------------------------- products
FOR_YOU, NEW, POPULAR, SIMILAR = kernels.FOR_YOU, kernels.NEW, kernels.POPULAR, kernels.SIMILAR
"""Reason codes of the candidate sources; SIMILAR + k is "similar to" the k-th anchor item."""
SOURCE_CODE = {"for_you": FOR_YOU, "new": NEW, "popular": POPULAR, "similar": SIMILAR}
SOURCE_NAME = {code: name for name, code in SOURCE_CODE.items()}
SOURCE_WEIGHTS = np.array([SOURCE_WEIGHT[s] for s in sorted(SOURCE_CODE, key=SOURCE_CODE.get)])
"""``SOURCE_WEIGHT`` by reason code, as the compiled pass takes it."""
NO_ITEMS, NO_SCORES = np.zeros(0, dtype=np.int64), np.zeros(0)
NO_SOURCES = np.zeros(1, dtype=np.int64)
NO_TABLE = (np.zeros((0, 0), dtype=np.int32), np.zeros((0, 0), dtype=np.float32))
NO_VECTOR = np.zeros(0, dtype=np.float32)
"""Recommender columns and scores come as tables (the top-items and neighbour tables: a row per
customer or item), int32 and float32 (their types), whatever produced them: numba compiles the
compiled call once per combination of argument types, so a new combination would compile
(seconds) on the first request to bring it."""


def rank_products(state: ServingState, request: RecommendRequest, behaviour: Behaviour, n: int,
                  max_category_share: float, live: CustomerState | None = None,
                  liked: dict[str, float] | None = None) -> list[Candidate]:
    """Best blended candidates that pass the rules, diversified. Blending, rules and diversity
    run over arrays; reasons are written only for the items that make the list."""
    if n == 0:
        return []
    index = state.products
    if liked is None:
        liked = _liked_categories(state.shop, behaviour)
    blend = product_candidates(state, request, behaviour, liked, live)
    positions, scores, reasons = choose_products(index, blend, request, behaviour, n,
                                                 max_category_share)
    return [Candidate(index.ids[p], s, blend.reason(r, p), SOURCE_NAME[min(r, SIMILAR)])
            for p, s, r in zip(positions, scores, reasons, strict=True)]


class Blend:
    """Every source's candidates, each source scaled so that its best item gets the source's
    weight (its best finite score over everything it scored, products or not; a source whose
    best is not positive adds nothing); an item's score is the sum over sources of its positive,
    finite contributions, and its reason is that of the source that contributed most (the first
    one added, on a tie). ``choose_products`` ranks them, best first, items with equal scores in
    the order they were first added.

    Sources are named by catalog position (``ProductIndex``: a recommender column is its own
    position) and only noted as they are added: the request's own sources as what Python
    looked up (the customer's "for you" row, the anchors' columns in the neighbour table, the
    score of each liked category, the popularity list), any other (``add``) as arrays.
    ``choose_products`` blends them and chooses in one compiled call
    (``serving.kernels.rank``, which states the order sources are taken in).
    """

    def __init__(self, index: ProductIndex,
                 neighbours: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.index = index
        self.neighbours = neighbours or NO_TABLE
        self.anchors: list[str] = []
        self._anchor_columns: list[int] = []
        self._for_you: tuple = (*NO_TABLE, -1, 0, NO_VECTOR, NO_TABLE[1])
        self._liked = np.zeros(len(index.tops))
        self._popular: tuple[np.ndarray, np.ndarray] = (NO_ITEMS, NO_SCORES)
        self._positions: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._bounds: list[int] = [0]
        self._weights: list[float] = []
        self._codes: list[int] = []

    def add_for_you(self, columns: np.ndarray, scores: np.ndarray) -> None:
        """The recommender's best columns for the customer (-1, padding: left out)."""
        self._for_you = (np.ascontiguousarray(columns, dtype=np.int32).reshape(1, -1),
                         np.ascontiguousarray(scores, dtype=np.float32).reshape(1, -1), 0,
                         len(columns), NO_VECTOR, NO_TABLE[1])

    def add_for_you_row(self, table: tuple[np.ndarray, np.ndarray | None], row: int, n: int,
                        factors: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """The first ``n`` of ``row`` in the top-items table the training job kept. The
        compiled call reads it there: slicing it here cost four numpy calls a request. A table
        without scores (``Bundle.top_items``) is scored there from ``factors``, the model's
        customer and item vectors."""
        if table[1] is None:
            users, items = factors
            self._for_you = (table[0], NO_TABLE[1], row, n, users[row], items)
        else:
            self._for_you = (*table, row, n, NO_VECTOR, NO_TABLE[1])

    def add_neighbours(self, anchor: str, column: int) -> None:
        """Items similar to the column's item, as the neighbour table holds them."""
        self.anchors.append(anchor)
        self._anchor_columns.append(column)

    def add_new(self, liked: dict[str, float]) -> None:
        """The index's new products, scored 1 + the share of the customer's activity in their
        category when they like it, and 0 (which blending leaves out) when they do not."""
        for top, share in liked.items():
            code = self.index.top_code.get(top)
            if code is not None and share > 0:
                self._liked[code] = 1.0 + share

    def add_popular(self, positions: np.ndarray, scores: np.ndarray) -> None:
        self._popular = (positions, scores)

    def add(self, source: str, positions: np.ndarray, scores: np.ndarray,
            anchor: str | None = None) -> None:
        """Any source's scores for catalog positions (-1, padding: left out)."""
        code = SOURCE_CODE[source]
        if code == SIMILAR:
            code += len(self.anchors)
            self.anchors.append(anchor or "")
            self._anchor_columns.append(-1)
        self._positions.append(positions)
        self._scores.append(scores)
        self._bounds.append(self._bounds[-1] + len(positions))
        self._weights.append(SOURCE_WEIGHT[source])
        self._codes.append(code)

    def sources(self) -> kernels.Sources:
        """The sources as ``serving.kernels.rank`` takes them."""
        extra = ((np.concatenate(self._positions, dtype=np.int64),
                  np.concatenate(self._scores, dtype=np.float64),
                  np.array(self._bounds, dtype=np.int64), np.array(self._weights),
                  np.array(self._codes, dtype=np.int64)) if self._positions else
                 (NO_ITEMS, NO_SCORES, NO_SOURCES, NO_SCORES, NO_ITEMS))
        return kernels.Sources(
            *self._for_you, np.array(self._anchor_columns, dtype=np.int64), *self.neighbours,
            min(SIMILAR_PER_ANCHOR, self.neighbours[0].shape[1]), self._liked, *self._popular,
            *extra, SOURCE_WEIGHTS)

    def reason(self, code: int, position: int) -> str:
        if code == FOR_YOU:
            return "recommended for you"
        top = self.index.tops[self.index.top[position]]
        if code == NEW:
            return f"new in {top}, a category you like"
        if code == POPULAR:
            return f"popular in {top}"
        return self.anchors[code - SIMILAR]


def product_candidates(state: ServingState, request: RecommendRequest, behaviour: Behaviour,
                       liked: dict[str, float], live: CustomerState | None = None
                       ) -> Blend:
    """Collaborative filtering for the customer, items similar to what they look at, hold or
    just viewed, new products in categories they like, and what is popular for their segment."""
    shop, bundle, index = state.shop, state.models.recommender, state.products
    table = _neighbour_table(state, SIMILAR_PER_ANCHOR)
    blend = Blend(index, table)
    interactions = bundle.interactions
    row = interactions.user_row(request.customer_id)
    fresh = _fresh_weights(interactions, row, live)
    if row >= 0 or fresh:
        top_items = None if fresh else bundle.top_items_for(row, CANDIDATES)
        if top_items is not None:
            blend.add_for_you_row(top_items, row, CANDIDATES,
                                  bundle.model.inner_product_factors())
        else:  # history fresher than the model, or no table: score the catalog
            blend.add_for_you(*bundle.model.recommend(
                row, _history_row(interactions.matrix, row, fresh), N=CANDIDATES,
                filter_already_liked_items=False, recalculate_user=bool(fresh)))
    for anchor, verb in _anchors(request, behaviour):
        title = shop.items[anchor].title if anchor in shop.items else anchor
        column = interactions.item_column(anchor)
        if column >= 0 and table is not None:
            blend.add_neighbours(f"{verb} {title}", column)
        elif column >= 0:  # no neighbour table: ask the model
            blend.add("similar", *bundle.model.similar_items(column, N=SIMILAR_PER_ANCHOR),
                      anchor=f"{verb} {title}")
        else:  # an item the model does not know yet: by text
            blend.add("similar", *_similar_by_text(state, anchor, SIMILAR_PER_ANCHOR),
                      anchor=f"{verb} {title}")
    blend.add_new(liked)
    segment = shop.segments.get(request.customer_id, "*")
    blend.add_popular(*_popular_for(index, segment, request.channel.value))
    return blend


def _fresh_weights(interactions, row: int, live: CustomerState | None) -> dict[int, float]:
    """Columns the customer touched since the model's snapshot (not in their training row),
    with the weight training would give them; a factor model re-derives the customer's vector
    when there are any."""
    if live is None or live.last_event is None:
        return {}
    known = set(_training_row(interactions.matrix, row)[0].tolist())
    touched = [(i, EventType.VIEW.value) for i, _ in live.views]
    touched += [(i, EventType.ADD_TO_CART.value) for i in live.cart]
    touched += [(i, EventType.PURCHASE.value) for i in live.purchased]
    weights: dict[int, float] = {}
    for item_id, kind in touched:
        column = interactions.item_column(item_id)
        if column >= 0 and column not in known:
            weights[column] = weights.get(column, 0.0) + FRESH_WEIGHT[kind]
    return weights


def _training_row(matrix: sp.csr_matrix, row: int) -> tuple[np.ndarray, np.ndarray]:
    """The customer's training columns and weights (none for row -1), sliced straight from the
    CSR arrays: scipy's general indexing costs ~0.2 ms, more than the rest of a request."""
    start, end = (matrix.indptr[row], matrix.indptr[row + 1]) if row >= 0 else (0, 0)
    return matrix.indices[start:end], matrix.data[start:end]


def _history_row(matrix: sp.csr_matrix, row: int, fresh: dict[int, float]) -> sp.csr_matrix:
    """The customer's training row plus their fresh columns, as a one-row matrix."""
    known, weights = _training_row(matrix, row)
    columns = np.concatenate([known, np.fromiter(fresh, dtype=np.int32)])
    values = np.concatenate([weights, np.fromiter(fresh.values(), dtype=np.float32)])
    order = np.argsort(columns, kind="stable")
    return sp.csr_matrix((values[order], columns[order].astype(matrix.indices.dtype),
                          np.array([0, len(columns)])), shape=(1, matrix.shape[1]))


def _anchors(request: RecommendRequest, behaviour: Behaviour) -> list[tuple[str, str]]:
    anchors = []
    if request.context.current_item:
        anchors.append((request.context.current_item, "similar to"))
    anchors += [(i, "goes with") for i in request.context.cart_items[:3]]
    anchors += [(i, "because you viewed") for i in behaviour.recent_views[:3]]
    seen, unique = set(), []
    for item_id, verb in anchors:
        if item_id not in seen:
            seen.add(item_id)
            unique.append((item_id, verb))
    return unique


def similar_products(state: ServingState, anchor: str, n: int = 30) -> list[tuple[str, float]]:
    """Collaborative similarity when the model knows the item, text similarity otherwise."""
    interactions = state.models.recommender.interactions
    column = interactions.item_column(anchor)
    if column >= 0:
        ids, scores = _similar_columns(state, column, n)
        keep = np.isfinite(scores) & (scores > 0)
        return list(zip(interactions.item_ids[ids[keep]].tolist(), scores[keep].tolist(),
                        strict=True))
    return [(i, s) for i, s in state.content.similar(anchor, n)
            if state.shop.items[i].kind == PRODUCT]


def _neighbour_table(state: ServingState, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The precomputed neighbour table when it holds ``n`` neighbours per item; otherwise the
    model scores similarity per item asked for."""
    if state.neighbours is not None and n <= state.neighbours[0].shape[1]:
        return state.neighbours
    return None


def _similar_columns(state: ServingState, column: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    table = _neighbour_table(state, n)
    if table is not None:
        return table[0][column, :n], table[1][column, :n]
    return state.models.recommender.model.similar_items(column, N=n)


def _similar_by_text(state: ServingState, anchor: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Text similarity as catalog positions, for blending (``similar_products`` for an item
    the model does not know)."""
    similar = state.content.similar(anchor, n)
    positions = np.array([state.products.position.get(i, -1) for i, _ in similar], dtype=np.int64)
    return positions, np.array([s for _, s in similar], dtype=np.float64)


def _liked_categories(shop: ShopView, behaviour: Behaviour) -> dict[str, float]:
    """Top-level categories of the products the customer bought or viewed, by share, the most
    liked first (ties in the order first met). A plain dict: a Counter cost a tenth of this
    stage's time to build, for the ordering only."""
    counts: dict[str, int] = {}
    for item_id in chain(behaviour.purchased, behaviour.recent_views):
        item = shop.items.get(item_id)
        if item is not None and item.kind == PRODUCT:
            counts[item.top] = counts.get(item.top, 0) + 1
    total = sum(counts.values()) or 1
    return {top: count / total for top, count in sorted(counts.items(), key=lambda e: -e[1])}


def _popular_for(index: ProductIndex, segment: str, channel: str
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The most specific non-empty popularity list: segment and channel, segment, channel, all."""
    for key in ((segment, channel), (segment, "*"), ("*", channel), ("*", "*")):
        found = index.popular.get(key)
        if found is not None and len(found[0]):
            return found
    return np.zeros(0, dtype=np.int64), np.zeros(0)


def choose_products(index: ProductIndex, blend: Blend, request: RecommendRequest,
                    behaviour: Behaviour, n: int, max_share: float
                    ) -> tuple[list[int], list[float], list[int]]:
    """The ``n`` products to show, as (positions, blended scores, reason codes), best first
    (ties in the order first added to the blend).

    Business rules first, whatever the models say: never a product out of stock (unless the
    request allows it), outside the price filter (a product with no price fails it), outside
    the category filter, bought already and not bought again, excluded by the request, in the
    cart or on the page. Then diversity: best first, but no top-level category takes more than
    ``max_share`` of the list, unless there is nothing else to show. Compiled, with the blend,
    as one call (``serving.kernels.rank``): it sorts only the best few candidates, and walks
    them only until the list is full.
    """
    filters, context = request.filters, request.context
    bought = index.positions(behaviour.purchased)
    never = index.positions([*request.exclude, *context.cart_items,
                             *([context.current_item] if context.current_item else [])])
    price_filter = filters.min_price is not None or filters.max_price is not None
    rules = kernels.Rules(
        n, max(1, math.ceil(max_share * n)), filters.in_stock_only, price_filter,
        -math.inf if filters.min_price is None else filters.min_price,
        math.inf if filters.max_price is None else filters.max_price,
        index.category_filter(filters.category or ""), np.array(bought + never, dtype=np.int64),
        len(bought), index.blocked_mask())
    chosen, scores = kernels.rank(kernels.RankInput(index.catalog, blend.sources(), rules))
    positions, reasons = chosen.tolist()
    return positions, scores.tolist(), reasons


# ---------------------------------------------------------------------------- content
def rank_content(state: ServingState, request: RecommendRequest, behaviour: Behaviour,
                 n: int, liked: dict[str, float] | None = None) -> list[Candidate]:
    """Articles about the item on the page (scored 2 + text similarity), then about the
    categories the customer browses (1 + that category's share of their activity, so the most
    browsed category first), then popular reading (below 0.5) to fill the list. Each tier ranks
    under the one before, so each is walked only as far as the list needs."""
    if n == 0:
        return []
    shop = state.shop
    taken = set(behaviour.recent_views) | set(request.exclude)
    ranked: list[Candidate] = []
    if request.context.current_item:
        similar = [(item_id, 2.0 + score) for item_id, score
                   in state.content.similar(request.context.current_item, 20)
                   if shop.items[item_id].kind == CONTENT and item_id not in taken]
        ranked = [Candidate(item_id, score, "about what you are looking at", "context")
                  for item_id, score in sorted(similar, key=lambda e: -e[1])[:n]]
        taken.update(c.item_id for c in ranked)
    if liked is None:
        liked = _liked_categories(shop, behaviour)
    for top, share in liked.items():  # the most liked first
        reason = f"about {top}, which you have been browsing"
        for item in shop.content_by_top.get(top, []):
            if len(ranked) == n:
                return ranked
            if item.item_id not in taken:
                ranked.append(Candidate(item.item_id, 1.0 + share, reason, "category"))
                taken.add(item.item_id)
    for item_id, views in shop.popular_content:
        if len(ranked) == n:
            break
        if item_id not in taken:
            ranked.append(Candidate(item_id, 0.5 * views / (1 + views), "popular reading",
                                    "popular"))
            taken.add(item_id)
    return ranked


# ---------------------------------------------------------------------------- offers
def rank_offers(state: ServingState, request: RecommendRequest, behaviour: Behaviour,
                now: datetime, n: int) -> list[Candidate]:
    """Eligible offers (``serving.offers.offer_is_eligible``) by expected value: P(redeem) x
    value. P(redeem) comes from the offer-response model for this customer when one is
    registered, otherwise from each offer's smoothed historical redemption rate."""
    if n == 0:
        return []
    shop = state.shop
    in_catalog_order, best_first = state.offer_shelf.meant_for(
        shop.segments.get(request.customer_id, ""), request.channel.value)
    cart_value = sum(shop.items[i].price or 0.0 for i in request.context.cart_items
                     if i in shop.items)
    excluded, redeemed, moment = set(request.exclude), behaviour.redemptions, now.timestamp()

    def eligible(offer: Shelved) -> bool:
        return (offer.item.item_id not in excluded
                and offer.open(moment, cart_value, redeemed.get(offer.item.item_id, 0)))

    if state.offers is None:
        says = "redeemed by {rate:.0%} of customers shown it"
        shown = [(o, o.rate) for o in islice(filter(eligible, best_first), n)]
    else:
        says = "likely for you: {rate:.0%} chance you redeem it"
        offers = [o for o in in_catalog_order if eligible(o)]
        chances = (state.offers.redeem_probability(request.customer_id,
                                                   [o.item for o in offers], now)
                   if offers else [])
        shown = sorted(zip(offers, map(float, chances), strict=True),
                       key=lambda e: -e[1] * e[0].value)[:n]
    return [Candidate(offer.item.item_id, rate * offer.value,
                      f"worth {offer.value:g}, " + says.format(rate=rate), "expected_value")
            for offer, rate in shown]

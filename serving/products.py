"""The catalog's products as arrays, so that blending and business rules run as one compiled
pass (``serving.kernels.rank``) over positions.

A request blends several hundred candidates from four sources. Done item by item in Python that
cost about a millisecond per request; over these arrays it is one compiled call, and Python
touches only the few dozen items walked into the answer.

Positions are the recommender's columns, in its order, then the catalog's products that the
model does not know: a column is its own position, so the model's candidates (most of a
request's) are used as they come. Mapping each through a column-to-position table was a read
from a table the size of the catalog per candidate, cold in the cache by the time the next
request came (about 290 a request, some 0.03 ms of a served request). A column that is not a
product in the catalog (an article, an offer, an item no longer sold) has a position too;
``product`` says which are, and nothing else is ever shown as a product.

Built once per serving state (from the shop view and the recommender's columns), never per
request.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from features.contracts import ItemKind
from serving.kernels import Catalog
from serving.shop import ShopView
from training.interactions import Interactions


@dataclass(frozen=True, eq=False)
class ProductIndex:
    ids: tuple[str, ...]
    """Position -> item id: the recommender's columns, then the products it does not know."""
    position: dict[str, int]
    top: np.ndarray
    """Position -> code of the top-level category (an index into ``tops``)."""
    tops: tuple[str, ...]
    top_code: dict[str, int]
    category: np.ndarray
    """Position -> code of the full category path (an index into ``categories``)."""
    categories: tuple[str, ...]
    price: np.ndarray
    """NaN where the catalog gives no price."""
    in_stock: np.ndarray
    repeatable: np.ndarray
    product: np.ndarray
    """Position -> is it a product in the catalog? (The other arrays hold placeholders where
    it is not: top and category 0, no price, not in stock.)"""
    check_columns: bool
    """Are some of the recommender's columns not products? Then candidates named by column are
    checked one by one (``serving.kernels.rank``); otherwise none need be."""
    popular: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]
    """The shop view's popularity lists as (positions, scores), best first: products only."""
    new: np.ndarray
    """Positions of the shop view's new products, newest first: products only."""
    new_top: np.ndarray
    """The top-level category code of each of ``new`` (a request reads no other product's)."""
    _scratch: threading.local = field(default_factory=threading.local, repr=False)
    _category_masks: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, shop: ShopView, interactions: Interactions) -> ProductIndex:
        columns = [str(i) for i in interactions.item_ids]
        known = set(columns)
        ids = columns + [i.item_id for i in shop.items.values()
                         if i.kind == ItemKind.PRODUCT.value and i.item_id not in known]
        items = [i if i is not None and i.kind == ItemKind.PRODUCT.value else None
                 for i in map(shop.items.get, ids)]  # None: not a product in the catalog
        products = [i for i in items if i is not None]
        tops = tuple(sorted({i.top for i in products}))
        categories = tuple(sorted({i.category for i in products}))
        top_code = {t: k for k, t in enumerate(tops)}
        category_code = {c: k for k, c in enumerate(categories)}
        position = {item_id: p for p, item_id in enumerate(ids)}
        is_product = [i is not None for i in items]
        products_only = {i for i, p in position.items() if is_product[p]}
        popular = {}
        for key, ranked in shop.popular.items():
            pairs = [(position[i], s) for i, s in ranked if i in products_only]
            popular[key] = (np.array([p for p, _ in pairs], dtype=np.int64),
                            np.array([s for _, s in pairs], dtype=np.float64))
        top = np.array([top_code[i.top] if i else 0 for i in items], dtype=np.int32)
        new = np.array([position[i] for i in shop.new_products if i in products_only],
                       dtype=np.int64)
        return cls(
            ids=tuple(ids), position=position, top=top, tops=tops,
            top_code=top_code,
            category=np.array([category_code[i.category] if i else 0 for i in items],
                              dtype=np.int32),
            categories=categories,
            price=np.array([np.nan if i is None or i.price is None else i.price for i in items]),
            in_stock=np.array([bool(i and i.in_stock) for i in items], dtype=bool),
            repeatable=np.array([bool(i and i.repeatable) for i in items], dtype=bool),
            product=np.array(is_product, dtype=bool),
            check_columns=not all(is_product[:len(columns)]), popular=popular, new=new,
            new_top=top[new])

    @cached_property
    def catalog(self) -> Catalog:
        """The arrays the compiled ranking pass reads for every request."""
        return Catalog(self.product, self.check_columns, self.top, len(self.tops), self.in_stock,
                       self.price, self.category, self.repeatable, self.new, self.new_top)

    def blocked_mask(self) -> np.ndarray:
        """This thread's per-product scratch mask for the rules (``serving.kernels.rank``):
        all False between uses, a byte per product (100 kB at 100k products) for each thread
        that ranks: a worker's event loop and its threads, or the journey scheduler."""
        mask = getattr(self._scratch, "blocked", None)
        if mask is None:
            mask = self._scratch.blocked = np.zeros(len(self.ids), dtype=bool)
        return mask

    def positions(self, item_ids) -> list[int]:
        """Positions of those ids that have one (others are left out)."""
        found = (self.position.get(i, -1) for i in item_ids)
        return [p for p in found if p >= 0]

    def category_filter(self, prefix: str) -> np.ndarray:
        """Per category code: does the path start with ``prefix``? Kept per prefix (a shop
        filters by a few hundred at most), so a request does not walk the category list."""
        found = self._category_masks.get(prefix)
        if found is None:
            if len(self._category_masks) >= 1024:  # bounded, whatever callers send
                self._category_masks.clear()
            found = np.array([c.startswith(prefix) for c in self.categories], dtype=bool)
            self._category_masks[prefix] = found
        return found


"""The catalog's products as arrays, so that blending and business rules run as compiled loops
(``serving.kernels``) over positions in the catalog.

A request blends several hundred candidates from four sources. Done item by item in Python that
cost about a millisecond per request; over these arrays it is two compiled calls, and Python
touches only the few dozen items walked into the answer.

Built once per serving state (from the shop view and the recommender's columns), never per
request.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from features.contracts import ItemKind
from serving.shop import ShopView
from training.interactions import Interactions


@dataclass(frozen=True, eq=False)
class ProductIndex:
    ids: np.ndarray
    """Position -> product id."""
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
    of_column: np.ndarray
    """Recommender column -> position, or -1 for a column that is not a product."""
    popular: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]
    """The shop view's popularity lists as (positions, scores), best first."""
    new: np.ndarray
    """Positions of the shop view's new products, newest first."""
    new_top: np.ndarray
    """The top-level category code of each of ``new`` (a request reads no other product's)."""
    _scratch: threading.local = field(default_factory=threading.local, repr=False)
    _category_masks: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, shop: ShopView, interactions: Interactions) -> ProductIndex:
        products = [i for i in shop.items.values() if i.kind == ItemKind.PRODUCT.value]
        tops = tuple(sorted({i.top for i in products}))
        categories = tuple(sorted({i.category for i in products}))
        top_code = {t: k for k, t in enumerate(tops)}
        category_code = {c: k for k, c in enumerate(categories)}
        position = {item.item_id: p for p, item in enumerate(products)}
        of_column = np.fromiter((position.get(str(i), -1) for i in interactions.item_ids),
                                dtype=np.int64, count=len(interactions.item_ids))
        popular = {}
        for key, ranked in shop.popular.items():
            pairs = [(position[i], s) for i, s in ranked if i in position]
            popular[key] = (np.array([p for p, _ in pairs], dtype=np.int64),
                            np.array([s for _, s in pairs], dtype=np.float64))
        top = np.array([top_code[i.top] for i in products], dtype=np.int32)
        new = np.array([position[i] for i in shop.new_products if i in position], dtype=np.int64)
        return cls(
            ids=np.array([i.item_id for i in products], dtype=object), position=position,
            top=top, tops=tops,
            top_code=top_code,
            category=np.array([category_code[i.category] for i in products], dtype=np.int32),
            categories=categories,
            price=np.array([np.nan if i.price is None else i.price for i in products]),
            in_stock=np.array([i.in_stock for i in products], dtype=bool),
            repeatable=np.array([i.repeatable for i in products], dtype=bool),
            of_column=of_column, popular=popular, new=new, new_top=top[new])

    def blocked_mask(self) -> np.ndarray:
        """This thread's per-product scratch mask for the rules (``serving.kernels.choose``):
        all False between uses, a byte per product (100 kB at 100k products) for each thread
        that ranks, a worker's event loop and its trigger thread."""
        mask = getattr(self._scratch, "blocked", None)
        if mask is None:
            mask = self._scratch.blocked = np.zeros(len(self.ids), dtype=bool)
        return mask

    def positions(self, item_ids) -> np.ndarray:
        """Positions of those ids that are products (others are left out)."""
        found = (self.position.get(i, -1) for i in item_ids)
        return np.array([p for p in found if p >= 0], dtype=np.int64)

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


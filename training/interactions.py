"""From events to the customer × item matrix the recommenders learn from.

Each event adds a weight to its (customer, item) cell: a purchase says more than a cart, a cart
more than a view. An optional half-life makes old behaviour count less, so that a "trending"
model or a fast-moving catalog can favour what people do now. The id maps turn customer and
item ids into matrix rows and columns and back; a model is only meaningful together with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import BaseModel, Field

from features.id_index import IdIndex
from features.point_in_time import INTERACTION_WEIGHTS


class InteractionConfig(BaseModel):
    """How events become matrix weights."""

    weights: dict[str, float] = Field(
        default_factory=lambda: dict(INTERACTION_WEIGHTS),
        description="Weight per event type; types not listed are ignored.",
    )
    half_life_days: float | None = Field(
        None, gt=0, description="Events this many days before the newest one count half; None = no decay.")
    item_kinds: tuple[str, ...] = Field(
        ("product",), description="Which catalog kinds become matrix columns.")


@dataclass
class Interactions:
    """A customers × items CSR matrix of summed weights, with the ids of its rows and columns."""

    matrix: sp.csr_matrix
    user_ids: np.ndarray
    item_ids: np.ndarray

    def __post_init__(self) -> None:
        self._item_index = pd.Index(self.item_ids)

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape

    def user_rows(self, user_ids) -> np.ndarray:
        """Row of each customer id, or -1 for customers the matrix does not know."""
        return self._user_lookup.positions(np.atleast_1d(np.asarray(user_ids, dtype=object)))

    def item_columns(self, item_ids) -> np.ndarray:
        """Column of each item id, or -1 for items the matrix does not know."""
        return self._item_index.get_indexer(np.atleast_1d(np.asarray(item_ids, dtype=object)))

    def user_row(self, user_id: str) -> int:
        """Row of one customer id, or -1: a binary search, for the serving hot path."""
        return self._user_lookup.position(user_id)

    def item_column(self, item_id: str) -> int:
        """Column of one item id, or -1: a dictionary lookup, for the serving hot path."""
        return self._item_positions.get(item_id, -1)

    @cached_property
    def _user_lookup(self) -> IdIndex:
        """Sorted ids rather than a dict: one row per customer, in every serving worker."""
        return IdIndex(self.user_ids)

    @cached_property
    def _item_positions(self) -> dict[str, int]:
        return {str(u): i for i, u in enumerate(self.item_ids)}

    def popularity(self) -> np.ndarray:
        """Number of customers who interacted with each item."""
        return np.diff(self.matrix.tocsc().indptr)


def build_interactions(
    events: pd.DataFrame,
    config: InteractionConfig | None = None,
    items: pd.DataFrame | None = None,
    user_ids: np.ndarray | None = None,
    item_ids: np.ndarray | None = None,
    now: pd.Timestamp | None = None,
) -> Interactions:
    """Sum event weights into a customers × items matrix.

    ``items`` restricts the columns to the configured kinds (products by default). Passing
    ``user_ids``/``item_ids`` fixes the rows and columns (for a test set that must line up with
    a training set); events of other ids are dropped. ``now`` anchors the time decay (default:
    the newest event).
    """
    config = config or InteractionConfig()
    kept = events[events["event_type"].isin(list(config.weights))]
    if items is not None:
        allowed = items.loc[items["kind"].isin(config.item_kinds), "item_id"]
        kept = kept[kept["item_id"].isin(allowed)]
    weight = kept["event_type"].map(config.weights).to_numpy(dtype=np.float32)
    if config.half_life_days is not None and len(kept):
        anchor = now if now is not None else kept["timestamp"].max()
        age_days = (anchor - kept["timestamp"]).dt.total_seconds().to_numpy() / 86400.0
        weight = weight * np.power(0.5, np.maximum(age_days, 0) / config.half_life_days).astype(
            np.float32)
    users = _ids(kept["customer_id"], user_ids)
    columns = _ids(kept["item_id"], item_ids)
    rows = pd.Index(users).get_indexer(kept["customer_id"].to_numpy(dtype=object))
    cols = pd.Index(columns).get_indexer(kept["item_id"].to_numpy(dtype=object))
    inside = (rows >= 0) & (cols >= 0)
    matrix = sp.csr_matrix((weight[inside], (rows[inside], cols[inside])),
                           shape=(len(users), len(columns)), dtype=np.float32)
    matrix.sum_duplicates()
    return Interactions(matrix, users, columns)


def _ids(values: pd.Series, fixed: np.ndarray | None) -> np.ndarray:
    if fixed is not None:
        return np.asarray(fixed, dtype=object)
    return np.asarray(np.sort(values.unique().astype(str)), dtype=object)

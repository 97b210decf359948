"""Positions of string ids found by binary search over their sorted UTF-8 bytes.

A dict from a million customer ids to their rows costs about 60 MB in every process that loads
it (an entry and an int object per id); this costs the ids' bytes and one integer each, and a
lookup is a binary search in C (a few microseconds: a request makes one or two). Used where
there is one entry per customer: the model's rows (``training.interactions``) and the shop
view's customer columns (``serving.customers``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


class IdIndex:
    """Each id's position in the sequence it was built from; -1 for an id not in it."""

    def __init__(self, ids: Sequence[str] | np.ndarray | pd.Series) -> None:
        keys = encoded(ids, check=True)
        self.order = np.argsort(keys, kind="stable").astype(np.int64)
        self.keys = keys[self.order]
        if len(self.keys) > 1 and (self.keys[1:] == self.keys[:-1]).any():
            raise ValueError("an IdIndex needs distinct ids; build it with IdIndex.distinct")

    @classmethod
    def distinct(cls, ids: Sequence[str] | np.ndarray | pd.Series) -> IdIndex:
        """The distinct ids among ``ids``, in sorted order (positions are ranks)."""
        index = cls.__new__(cls)
        index.keys = np.unique(encoded(pd.unique(pd.Series(ids, dtype=object)), check=True))
        index.order = np.arange(len(index.keys), dtype=np.int64)
        return index

    def __len__(self) -> int:
        return len(self.keys)

    def position(self, id_: str) -> int:
        key = id_.encode("utf-8", "surrogatepass")
        if len(key) > self.keys.itemsize or key.endswith(b"\0"):  # numpy would cut those
            return -1
        at = int(self.keys.searchsorted(key))
        return int(self.order[at]) if at < len(self.keys) and self.keys[at] == key else -1

    def positions(self, ids: Sequence[str] | np.ndarray | pd.Series) -> np.ndarray:
        """Each id's position, -1 for ids not in the index (one search per distinct id)."""
        codes, uniques = pd.factorize(pd.Series(ids, dtype=object))
        if not len(self.keys):
            return np.full(len(codes), -1, dtype=np.int64)
        keys = encoded(uniques)
        at = np.minimum(self.keys.searchsorted(keys), len(self.keys) - 1)
        found = self.keys[at] == keys  # the full keys: one longer than the index's width differs
        return np.where(found, self.order[at], -1)[codes]

    def id_at(self, rank: int) -> str:
        """The id of sorted rank ``rank`` (for iterating in sorted order)."""
        return self.keys[rank].decode("utf-8", "surrogatepass")


def encoded(ids: Sequence[str] | np.ndarray | pd.Series, check: bool = False) -> np.ndarray:
    """Ids as one array of UTF-8 bytes, which numpy compares in C. A lone surrogate (JSON can
    carry one) is kept as its bytes, so the encoding is per id in Python: pandas' string
    methods go through Arrow, which refuses them. With ``check``, ids with a NUL character are
    refused: numpy's bytes would not tell "a\\0" from "a"."""
    text = [id_ if type(id_) is str else str(id_) for id_ in ids]
    if check:
        bad = next((id_ for id_ in text if "\0" in id_), None)
        if bad is not None:
            raise ValueError(f"an id may not contain a NUL character, got {bad!r}")
    return np.array([id_.encode("utf-8", "surrogatepass") for id_ in text], dtype=bytes)

"""Per-customer facts of the shop view (segment, consents, time zone, last purchase, recent
behaviour) as columns over one sorted array of customer ids (``IdIndex.distinct``: a row per
customer), not a dict entry and objects per customer.

At a million customers the dicts, sets and lists were most of each API worker's heap, and
building them most of its start-up (docs/deploy.md, sizing). As arrays a customer costs a few
bytes per column and a lookup is a binary search over the ids (microseconds, once or twice per
request). Each column is a read-only ``Mapping``, so the code that reads it (``.get``, ``in``,
``items``) reads a plain dict the same way (tests build small shops from dicts).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.id_index import IdIndex


@dataclass(slots=True)
class Behaviour:
    """What a customer did in the warehouse's window, as a request reads it."""

    purchased: set[str] = field(default_factory=set)
    recent_views: list[str] = field(default_factory=list)  # newest first
    redemptions: Counter = field(default_factory=Counter)


class CustomerColumn(Mapping):
    """One fact per customer; customers without it are not in the mapping."""

    def __init__(self, index: IdIndex) -> None:
        self.index = index

    def _value(self, row: int):
        """The fact at ``row``, or None where the customer has none."""
        raise NotImplementedError

    def _present(self) -> np.ndarray:
        """Which rows have the fact."""
        raise NotImplementedError

    def get(self, customer_id: str, default=None):
        row = self.index.position(customer_id)
        value = self._value(row) if row >= 0 else None
        return default if value is None else value

    def __getitem__(self, customer_id: str):
        value = self.get(customer_id)
        if value is None:
            raise KeyError(customer_id)
        return value

    def _has(self, row: int) -> bool:
        return self._value(row) is not None

    def __contains__(self, customer_id: object) -> bool:
        if not isinstance(customer_id, str):
            return False
        row = self.index.position(customer_id)
        return row >= 0 and self._has(row)

    def __iter__(self) -> Iterator[str]:
        for row in np.flatnonzero(self._present()):
            yield self.index.id_at(int(row))

    def __len__(self) -> int:
        return int(self._present().sum())


class Labels(CustomerColumn):
    """A label per customer from a short vocabulary (segment, time zone): a code each."""

    def __init__(self, index: IdIndex, customers: pd.Series, labels: pd.Series) -> None:
        super().__init__(index)
        known = labels.notna().to_numpy()
        categorical = pd.Categorical(labels[known].astype(str))
        self.names = tuple(categorical.categories)
        self.codes = np.full(len(index), -1, dtype=np.int32)
        self.codes[index.positions(customers[known])] = categorical.codes

    def _value(self, row: int) -> str | None:
        code = self.codes[row]
        return self.names[code] if code >= 0 else None

    def _present(self) -> np.ndarray:
        return self.codes >= 0


class Times(CustomerColumn):
    """A moment per customer, epoch seconds (their latest purchase)."""

    def __init__(self, index: IdIndex, customers: pd.Series, seconds: np.ndarray) -> None:
        super().__init__(index)
        self.seconds = np.full(len(index), np.nan)
        self.seconds[index.positions(customers)] = seconds

    def _value(self, row: int) -> float | None:
        value = self.seconds[row]
        return None if np.isnan(value) else float(value)

    def _present(self) -> np.ndarray:
        return ~np.isnan(self.seconds)


class Consents(CustomerColumn):
    """The contact channels each customer of the customers table agreed to: a bit each."""

    def __init__(self, index: IdIndex, customers: pd.Series,
                 agreed: dict[str, np.ndarray]) -> None:
        super().__init__(index)
        self.channels = tuple(agreed)
        bits = np.zeros(len(customers), dtype=np.int16)
        for bit, flags in enumerate(agreed.values()):
            bits |= flags.astype(np.int16) << bit
        self.bits = np.full(len(index), -1, dtype=np.int16)  # -1: not in the customers table
        self.bits[index.positions(customers)] = bits
        self.sets = [frozenset(c for bit, c in enumerate(self.channels) if mask >> bit & 1)
                     for mask in range(1 << len(self.channels))]  # one frozenset per combination

    def _value(self, row: int) -> frozenset[str] | None:
        mask = self.bits[row]
        return self.sets[mask] if mask >= 0 else None

    def _present(self) -> np.ndarray:
        return self.bits >= 0


class Lists:
    """A list of item codes per customer row (compressed rows: ``codes[starts[r]:starts[r+1]]``),
    each in the order given, with a count per entry where ``counts`` are given."""

    def __init__(self, rows: np.ndarray, codes: np.ndarray, customers: int,
                 counts: np.ndarray | None = None) -> None:
        order = np.argsort(rows, kind="stable")  # keeps each customer's own order
        self.codes = np.ascontiguousarray(codes[order], dtype=np.int32)
        self.counts = None if counts is None else np.ascontiguousarray(counts[order],
                                                                       dtype=np.int32)
        self.starts = np.zeros(customers + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=customers), out=self.starts[1:])

    def span(self, row: int) -> slice:
        start, end = self.starts[row:row + 2].tolist()
        return slice(start, end)

    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)


class Behaviours(CustomerColumn):
    """Each customer's purchases, recent views (newest first) and offer redemptions (with how
    often), as lists of codes into one vocabulary of item ids; read as a :class:`Behaviour` per
    request."""

    def __init__(self, index: IdIndex, items: np.ndarray, purchased: Lists, viewed: Lists,
                 redeemed: Lists) -> None:
        super().__init__(index)
        self.item_ids = items
        self.purchased, self.viewed, self.redeemed = purchased, viewed, redeemed

    def _value(self, row: int) -> Behaviour | None:
        if not self._has(row):
            return None
        names, redeemed = self.item_ids, self.redeemed.span(row)
        counts = Counter(dict(zip(names[self.redeemed.codes[redeemed]].tolist(),
                                  self.redeemed.counts[redeemed].tolist(), strict=True))
                         ) if redeemed.stop > redeemed.start else Counter()
        return Behaviour(set(names[self.purchased.codes[self.purchased.span(row)]].tolist()),
                         names[self.viewed.codes[self.viewed.span(row)]].tolist(), counts)

    def _has(self, row: int) -> bool:
        return any(lists.starts[row + 1] > lists.starts[row]
                   for lists in (self.purchased, self.viewed, self.redeemed))

    def _present(self) -> np.ndarray:
        return (self.purchased.lengths() + self.viewed.lengths() + self.redeemed.lengths()) > 0

"""The exact top N items by inner product from an int8 copy of the item factors: measured by
``bench/bench_fresh_scoring.py`` against the service's float32 pass, and not shipped, because on
the recorded hosts it was no faster (docs/benchmarks.md, "Customers active now").

Each item's factors are coded in int8 (a scale per item) and the customer's vector in int16; the
sums are integer multiply-adds, which LLVM turns into vpmaddwd. Each item's coded score is within
a known bound of its float32 score (the item's coding error and the vector's, times the vector's
length), so a pass over the codes proves which items can still be in the top N; only those few
hundred are scored again in float32 and ranked. The answer is the float32 pass's, not an
approximation: an item is left out only when its best possible score is below the N-th best
worst-case score of the others (the benchmark's recall column checks it).

What decided it: the float32 pass over 100k × 64 factors is one BLAS matrix-vector product that
runs from the cache, and the int8 pass, a quarter of the bytes, is bound by its per-item
reductions instead; both take about the same time on these hosts. It would pay where the
factors no longer fit the cache between two customers, or with VNNI dot products (vpdpbusd),
which numba does not emit.
"""

from __future__ import annotations

import numpy as np

from serving.kernels import compiled

ROUNDING = 1e-5
"""Added to each item's error bound, as a share of the length of its factors: the float32 dot
products of both passes each round by at most factors × 2⁻²⁴ of |item|·|customer| (3.8e-6 at 64
factors), so the bound still holds with both passes' rounding in it."""
SAMPLE_STEP = 16
"""One item in this many is scored first, to set the bar of the full pass."""


class QuantizedScan:
    """Exact top-N inner products over ``items`` (n_items × factors), built once per model."""

    def __init__(self, items: np.ndarray) -> None:
        items = np.ascontiguousarray(items, dtype=np.float32)
        n_items, factors = items.shape
        scales = np.abs(items).max(axis=1) / 127
        scales[scales == 0] = 1.0
        codes = np.rint(items / scales[:, None]).astype(np.int8)
        coded = codes.astype(np.float32) * scales[:, None].astype(np.float32)
        error = np.linalg.norm(items - coded, axis=1)
        self.levels = min(32767, (2**31 - 1) // (127 * max(factors, 1)))
        """The customer's vector is coded in int16 steps of max|v| / levels (fewer than 32767
        only where 127 × levels × factors would overflow the int32 sums)."""
        vector_error = np.sqrt(factors) / (2 * self.levels)  # of |v|, at most
        self.items, self.codes, self.scales = items, codes, scales.astype(np.float32)
        self.slack = (error + np.linalg.norm(coded, axis=1) * vector_error
                      + ROUNDING * np.linalg.norm(items, axis=1)).astype(np.float32)
        """How far an item's coded score can be from its float32 score, per unit of the
        customer vector's length: the item's coding error, the vector's, and rounding."""

    def top(self, vector: np.ndarray, n: int, excluded: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray] | None:
        """The ``n`` best item columns and their float32 scores, best first (ties: the lower
        column first), never one of ``excluded``; None when the vector is not finite (the
        caller's float pass says what it makes of that)."""
        found = self.candidates(vector, n, excluded)
        if found is None:
            return None
        kept, n = found
        exact = self.items[kept] @ np.asarray(vector, dtype=np.float32)
        order = np.argsort(-exact, kind="stable")[:n]  # ties keep the column order
        return kept[order], exact[order]

    def candidates(self, vector: np.ndarray, n: int, excluded: np.ndarray | None = None
                   ) -> tuple[np.ndarray, int] | None:
        """The columns that can still be among the ``n`` best (in column order; every other
        is out for certain), and how many of them will be answered (``n``, or fewer when
        fewer are allowed)."""
        vector = np.ascontiguousarray(vector, dtype=np.float32)
        if vector.shape != (self.items.shape[1],):
            raise ValueError(f"vector must have {self.items.shape[1]} factors, got shape "
                             f"{vector.shape}")
        if not np.isfinite(vector).all():
            return None
        excluded = (np.empty(0, np.int64) if excluded is None
                    else np.asarray(excluded, dtype=np.int64).ravel())
        if len(excluded) and not ((excluded >= 0) & (excluded < len(self.items))).all():
            bad = excluded[(excluded < 0) | (excluded >= len(self.items))][0]
            raise ValueError(f"excluded column {bad} is not in [0, {len(self.items)})")
        excluded = np.unique(excluded)  # sorted: the passes walk it alongside the items
        n = min(int(n), len(self.items) - len(excluded))
        if n <= 0:
            return np.empty(0, np.int64), 0
        length = np.float32(np.linalg.norm(vector.astype(np.float64)))
        step = np.float32(np.abs(vector).max() / self.levels) or np.float32(1)
        coded = np.rint(vector / step).astype(np.int16)
        arrays = (self.codes, self.scales, self.slack, coded, step, length, excluded)
        # An item in the true top n scores at least the n-th best worst case T (a coded score
        # less its bound), so its best case (the coded score plus the bound) does too: every
        # item whose best case is below T is out for certain. T is not known until the pass is
        # over, but a bar read off a sample of the items is below T whenever n items' worst
        # cases reach the bar, so the pass keeps only the items whose best case reaches the
        # bar: about 2n, where it would keep the whole catalog otherwise.
        sample = _worst_cases(*arrays, SAMPLE_STEP)
        rank = len(sample) - (2 * n // SAMPLE_STEP + 8)
        bar = np.partition(sample, rank)[rank] if rank > 0 else np.float32(-np.inf)
        kept, lowest, passed = _above(*arrays, bar)
        if passed < n:  # the sample misled: keep everything allowed
            kept, lowest, passed = _above(*arrays, np.float32(-np.inf))
        threshold = np.partition(lowest, len(lowest) - n)[len(lowest) - n]
        return kept[lowest + 2 * self.slack[kept] * length >= threshold], n


@compiled
def _worst_cases(codes: np.ndarray, scales: np.ndarray, slack: np.ndarray, coded: np.ndarray,
                 step: np.float32, length: np.float32, excluded: np.ndarray, every: int
                 ) -> np.ndarray:
    """Every ``every``-th item's worst case (-inf for an excluded one)."""
    lowest = np.empty((len(codes) + every - 1) // every, np.float32)
    next_out = 0  # excluded is sorted: walked alongside the items
    for k in range(len(lowest)):
        i = k * every
        while next_out < len(excluded) and excluded[next_out] < i:
            next_out += 1
        if next_out < len(excluded) and excluded[next_out] == i:
            lowest[k] = -np.inf
        else:
            lowest[k] = _coded_score(codes, i, coded) * step * scales[i] - slack[i] * length
    return lowest


@compiled
def _above(codes: np.ndarray, scales: np.ndarray, slack: np.ndarray, coded: np.ndarray,
           step: np.float32, length: np.float32, excluded: np.ndarray, bar: np.float32
           ) -> tuple[np.ndarray, np.ndarray, int]:
    """The allowed items whose best case reaches ``bar`` and their worst cases, and how many
    of those worst cases reach it."""
    n_items = len(codes)
    kept = np.empty(n_items, np.int64)
    lowest = np.empty(n_items, np.float32)
    count = passed = next_out = 0
    for i in range(n_items):
        if next_out < len(excluded) and excluded[next_out] == i:
            next_out += 1
            continue
        bound = slack[i] * length
        best = _coded_score(codes, i, coded) * step * scales[i] + bound
        if best >= bar:
            kept[count], lowest[count] = i, best - 2 * bound
            passed += lowest[count] >= bar
            count += 1
    return kept[:count], lowest[:count], passed


@compiled(inline="always")
def _coded_score(codes: np.ndarray, i: int, coded: np.ndarray) -> np.float32:
    """The item's int8 codes times the vector's int16 ones, summed in int32: written so that
    LLVM turns it into multiply-add pairs (vpmaddwd); as float32 products each code was
    converted first, which took half again as long."""
    total = np.int32(0)
    for j in range(codes.shape[1]):
        total = np.int32(total + np.int32(np.int32(codes[i, j]) * np.int32(coded[j])))
    return np.float32(total)

"""Blending candidate sources: the vectorized ``Blend`` against the rule written out plainly."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.pipeline import FOR_YOU, NEW, POPULAR, SIMILAR, SOURCE_WEIGHT, Blend
from serving.products import ProductIndex

N_PRODUCTS = 12


def index() -> ProductIndex:
    n = N_PRODUCTS
    return ProductIndex(ids=np.array([f"p{i}" for i in range(n)], dtype=object), position={},
                        top=np.zeros(n, dtype=np.int32), tops=("all",), top_code={"all": 0},
                        category=np.zeros(n, dtype=np.int32), categories=("all",),
                        price=np.ones(n), in_stock=np.ones(n, dtype=bool),
                        repeatable=np.zeros(n, dtype=bool), of_column=np.arange(n), popular={},
                        new=np.zeros(0, dtype=np.int64))


def plainly(sources: list[tuple[str, list[int], list[float]]]) -> list[tuple[int, float, int]]:
    """The rule: each source scaled so its best finite score (over everything it scored) gets
    the source's weight; an item's score sums its sources; its reason is the source that gave
    most, the first added on a tie; best first, ties in the order items were first added."""
    totals: dict[int, float] = {}
    strongest: dict[int, tuple[float, int]] = {}
    similar = 0
    for source, positions, scores in sources:
        top = max([s for s in scores if math.isfinite(s)] + [0.0])
        if top <= 0:
            continue
        code = {"for_you": FOR_YOU, "new": NEW, "popular": POPULAR}.get(source)
        if code is None:
            code, similar = SIMILAR + similar, similar + 1
        for position, score in zip(positions, scores, strict=True):
            if position < 0 or not (0 < score < math.inf):
                continue
            value = float(score) * (SOURCE_WEIGHT[source] / top)
            totals[position] = totals.get(position, 0.0) + value
            if value > strongest.get(position, (0.0, 0))[0]:
                strongest[position] = (value, code)
    ranked = sorted(totals, key=lambda p: -totals[p])  # stable: first added first on a tie
    return [(p, totals[p], strongest[p][1]) for p in ranked]


source = st.tuples(
    st.sampled_from(["for_you", "similar", "new", "popular"]),
    st.lists(st.tuples(st.integers(-1, N_PRODUCTS - 1),
                       st.sampled_from([1.0, 2.0, 3.0, 0.5, 0.0, -1.0, math.inf, -math.inf,
                                        math.nan])), max_size=8, unique_by=lambda e: e[0]))


@settings(max_examples=300, deadline=None)
@given(sources=st.lists(source, max_size=6), reuse=st.booleans())
def test_blend_sums_sources_and_gives_the_strongest_reason(sources, reuse):
    """Whatever the sources (ties, items named by several, non-products, scores that are
    zero, negative, infinite or NaN), and whether or not the thread's arrays were used by an
    earlier blend."""
    idx = index()
    if reuse:  # leave the thread's arrays as a previous request would
        earlier = Blend(idx)
        earlier.add("popular", np.arange(N_PRODUCTS), np.linspace(1, 2, N_PRODUCTS))
        earlier.ranked()
    blend = Blend(idx)
    plain = []
    for name, entries in sources:
        positions = np.array([p for p, _ in entries], dtype=np.int64)
        scores = np.array([s for _, s in entries], dtype=np.float64)
        blend.add(name, positions, scores, anchor="anchor")
        plain.append((name, positions.tolist(), scores.tolist()))
    positions, totals, reasons = blend.ranked()
    expected = plainly(plain)
    assert positions.tolist() == [p for p, _, _ in expected]
    assert totals.tolist() == [t for _, t, _ in expected]
    assert reasons.tolist() == [r for _, _, r in expected]

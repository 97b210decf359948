"""Blending candidate sources and choosing what to show: the compiled pass (``Blend`` then
``choose_products``) against its rules written out plainly in Python."""

from __future__ import annotations

import inspect
import math
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from serving import kernels
from serving.customers import Behaviour
from serving.pipeline import (
    FOR_YOU,
    NEW,
    POPULAR,
    SIMILAR,
    SOURCE_WEIGHT,
    Blend,
    choose_products,
)
from serving.products import ProductIndex
from serving.schemas import Filters, RecommendRequest
from serving.shop import Item, ShopView
from training.interactions import Interactions

PRODUCT = np.array([1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1], dtype=bool)
"""Which positions are products: two are not (a recommender column for an article, say)."""
EVERYTHING = RecommendRequest(customer_id="c1", filters={"in_stock_only": False})
"""No rule leaves anything out of this index: what is chosen is the whole blend, ranked."""


def small_index(n: int, **fields) -> ProductIndex:
    """An index of products p0..p{n-1} in one category, each priced 1, in stock and not
    repeatable, nothing new or popular; ``fields`` replace any of that."""
    return ProductIndex(**{
        "ids": tuple(f"p{i}" for i in range(n)),
        "position": {f"p{i}": i for i in range(n)}, "top": np.zeros(n, dtype=np.int32),
        "tops": ("all",), "top_code": {"all": 0}, "category": np.zeros(n, dtype=np.int32),
        "categories": ("all",), "price": np.ones(n), "in_stock": np.ones(n, dtype=bool),
        "repeatable": np.zeros(n, dtype=bool), "product": np.ones(n, dtype=bool),
        "check_columns": False, "popular": {}, "new": np.zeros(0, dtype=np.int64),
        "new_top": np.zeros(0, dtype=np.int32), **fields})


def index() -> ProductIndex:
    return small_index(len(PRODUCT), in_stock=PRODUCT.copy(), product=PRODUCT,
                       check_columns=True)


def plainly(sources: list[tuple[str, list[int], list[float]]]) -> list[tuple[int, float, int]]:
    """The rule: each source scaled so its best finite score (over everything it scored) gets
    the source's weight; an item's score sums its sources; its reason is the source that gave
    most, the first added on a tie; best first, ties in the order items were first added."""
    totals: dict[int, float] = {}
    strongest: dict[int, tuple[float, int]] = {}
    similar = 0
    for source, positions, scores in sources:
        code = {"for_you": FOR_YOU, "new": NEW, "popular": POPULAR}.get(source)
        if code is None:  # "similar to" the k-th anchor added
            code, similar = SIMILAR + similar, similar + 1
        top = max([s for s in scores if math.isfinite(s)] + [0.0])
        if top <= 0:
            continue
        for position, score in zip(positions, scores, strict=True):
            if not 0 <= position < len(PRODUCT) or not (0 < score < math.inf):
                continue
            if not PRODUCT[position]:
                continue
            value = float(score) * (SOURCE_WEIGHT[source] / top)
            totals[position] = totals.get(position, 0.0) + value
            if value > strongest.get(position, (0.0, 0))[0]:
                strongest[position] = (value, code)
    ranked = sorted(totals, key=lambda p: -totals[p])  # stable: first added first on a tie
    return [(p, totals[p], strongest[p][1]) for p in ranked]


source = st.tuples(
    st.sampled_from(["for_you", "similar", "new", "popular"]),
    st.lists(st.tuples(st.integers(-1, len(PRODUCT) + 1),
                       st.sampled_from([1.0, 2.0, 3.0, 0.5, 0.0, -1.0, math.inf, -math.inf,
                                        math.nan])), max_size=8, unique_by=lambda e: e[0]))


@settings(max_examples=300, deadline=None)
@given(sources=st.lists(source, max_size=6), earlier=st.booleans())
def test_blend_sums_sources_and_gives_the_strongest_reason(sources, earlier):
    """Whatever the sources (ties, items named by several, positions that are not products
    or past the index, scores that are zero, negative, infinite or NaN), and whether or not a
    blend ran before."""
    idx = index()
    if earlier:
        before = Blend(idx)
        before.add("popular", np.arange(len(PRODUCT)), np.linspace(1, 2, len(PRODUCT)))
        choose_products(idx, before, EVERYTHING, Behaviour(), len(PRODUCT), 1.0)
    blend = Blend(idx)
    plain = []
    for name, entries in sources:
        positions = [p for p, _ in entries]
        scores = [s for _, s in entries]
        blend.add(name, np.array(positions, dtype=np.int64), np.array(scores), anchor="anchor")
        plain.append((name, positions, scores))
    positions, totals, reasons = choose_products(idx, blend, EVERYTHING, Behaviour(),
                                                 len(PRODUCT), 1.0)
    expected = plainly(plain)
    assert positions == [p for p, _, _ in expected]
    assert totals == [t for _, t, _ in expected]
    assert reasons == [r for _, _, r in expected]


CATEGORIES = ("a/x", "a/y", "b/x", "b/y/z", "c")


def shop_index(category: list[int], price: list[float], in_stock: list[bool],
               repeatable: list[bool]) -> ProductIndex:
    tops = ("a", "b", "c")
    return small_index(
        len(category),
        top=np.array([tops.index(CATEGORIES[c].split("/")[0]) for c in category], dtype=np.int32),
        tops=tops, top_code={t: k for k, t in enumerate(tops)},
        category=np.array(category, dtype=np.int32), categories=CATEGORIES,
        price=np.array(price), in_stock=np.array(in_stock, dtype=bool),
        repeatable=np.array(repeatable, dtype=bool))


def chosen_plainly(index: ProductIndex, totals: list[float], request: RecommendRequest,
                   behaviour: Behaviour, n: int, max_share: float) -> list[int]:
    """The rules and diversity one candidate at a time, over the whole list sorted best first."""
    f, context = request.filters, request.context
    never = set(request.exclude) | set(context.cart_items) | {context.current_item}
    never |= {i for i in behaviour.purchased if not index.repeatable[index.position[i]]}

    def allowed(p: int) -> bool:
        price = index.price[p]
        return ((not f.in_stock_only or bool(index.in_stock[p]))
                and (f.min_price is None or price >= f.min_price)
                and (f.max_price is None or price <= f.max_price)
                and index.categories[index.category[p]].startswith(f.category or "")
                and index.ids[p] not in never)

    cap = max(1, math.ceil(max_share * n))
    chosen, overflow, per_top = [], [], {}
    for k in sorted(range(len(totals)), key=lambda k: -totals[k]):
        if not allowed(k):  # candidate k is product k
            continue
        top = index.top[k]
        if per_top.get(top, 0) < cap:
            chosen.append(k)
            per_top[top] = per_top.get(top, 0) + 1
        else:
            overflow.append(k)
    return (chosen + overflow)[:n]


products = st.integers(1, 80).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, len(CATEGORIES) - 1), min_size=n, max_size=n),
    st.lists(st.sampled_from([5.0, 10.0, 50.0, 99.5, 200.0, math.nan]), min_size=n, max_size=n),
    st.lists(st.booleans(), min_size=n, max_size=n),
    st.lists(st.booleans(), min_size=n, max_size=n),
    st.lists(st.sampled_from([0.25, 0.5, 0.75, 1.0, 2.0]), min_size=n, max_size=n)))
filters = st.builds(Filters, category=st.sampled_from([None, "", "a", "a/x", "b/", "c", "d"]),
                    min_price=st.sampled_from([None, 0.0, 10.0, 50.0]),
                    max_price=st.sampled_from([None, 50.0, 200.0]), in_stock_only=st.booleans())


@settings(max_examples=300, deadline=None)
@given(catalog=products, filters=filters, n=st.integers(1, 12),
       max_share=st.sampled_from([0.1, 0.3, 0.5, 1.0]), ids=st.data())
def test_choosing_applies_every_rule_then_caps_each_category(catalog, filters, n, max_share, ids):
    """Whatever the catalog, filters and list size: what is shown passes every rule, best
    first, no category over its share unless nothing else passes; only the best few
    candidates are sorted, so this also covers falling back to the whole list."""
    category, price, in_stock, repeatable, totals = catalog
    index = shop_index(category, price, in_stock, repeatable)
    some = st.lists(st.sampled_from(sorted(index.position)), max_size=4)
    request = RecommendRequest(customer_id="c1", filters=filters, exclude=ids.draw(some),
                               context={"cart_items": ids.draw(some)})
    behaviour = Behaviour(purchased=set(ids.draw(some)))
    blend = Blend(index)
    blend.add("for_you", np.arange(len(totals)), np.array(totals))  # candidate k: product k
    chosen, _, _ = choose_products(index, blend, request, behaviour, n, max_share)
    assert chosen == chosen_plainly(index, totals, request, behaviour, n, max_share)


def test_the_compiled_passes_still_load_where_numba_can_cache_nowhere():
    """A read-only container: no locator for numba's on-disk cache (simulated by allowing only
    the IPython locator, which finds nothing outside IPython). Compiled per process instead."""
    probe = ("import numpy as np; from serving import kernels; "
             "print(kernels.best_first(np.array([1.0, 3.0, 2.0]), 2).tolist())")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=300,
                          env={**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "_IPythonCacheLocator"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[1, 2]"


def catalog_index(tops: list[int], new: list[int]) -> ProductIndex:
    names = ("a", "b", "c")
    return small_index(
        len(tops), top=np.array(tops, dtype=np.int32), tops=names,
        top_code={t: k for k, t in enumerate(names)}, product=PRODUCT[:len(tops)].copy(),
        check_columns=True, new=np.array(new, dtype=np.int64),
        new_top=np.array([tops[p] for p in new], dtype=np.int32))


scores = st.sampled_from([0.5, 1.0, 2.0, 3.0, 0.0, -1.0, math.inf, math.nan])


@settings(max_examples=200, deadline=None)
@given(tops=st.lists(st.integers(0, 2), min_size=len(PRODUCT), max_size=len(PRODUCT)),
       data=st.data())
def test_the_requests_own_sources_blend_as_the_same_candidates_added_as_arrays(tops, data):
    """The customer's "for you" row, anchors looked up in the neighbour table, new products
    scored by liked category and the popularity list, as ``product_candidates`` adds them,
    rank exactly as those same candidates added one source at a time (``Blend.add``, held to
    the plain rule above), in the order ``serving.kernels.rank`` states."""
    n = len(PRODUCT)
    positions = st.lists(st.integers(-1, n - 1), max_size=8)
    products = [p for p in range(n) if PRODUCT[p]]  # the index lists only these as new, popular
    new = data.draw(st.lists(st.sampled_from(products), max_size=5, unique=True))
    idx = catalog_index(tops, new)
    width = 3
    neighbours = (np.array(data.draw(st.lists(st.integers(-1, n - 1), min_size=n * width,
                                              max_size=n * width))).reshape(n, width),
                  np.array(data.draw(st.lists(scores, min_size=n * width, max_size=n * width)),
                           dtype=np.float32).reshape(n, width))
    for_you = np.array(data.draw(positions), dtype=np.int32)
    for_you_scores = np.array(data.draw(st.lists(scores, min_size=len(for_you),
                                                 max_size=len(for_you))), dtype=np.float32)
    anchors = data.draw(st.lists(st.integers(0, n - 1), max_size=3))
    liked = Counter(data.draw(st.dictionaries(st.sampled_from(idx.tops),
                                              st.sampled_from([0.0, 0.25, 0.5, 1.0]))))
    popular = (np.array(data.draw(st.lists(st.sampled_from(products), max_size=8)),
                        dtype=np.int64),)
    popular += (np.array(data.draw(st.lists(scores, min_size=len(popular[0]),
                                            max_size=len(popular[0])))),)

    own = Blend(idx, neighbours)
    own.add_for_you(for_you, for_you_scores)
    for k, column in enumerate(anchors):
        own.add_neighbours(f"anchor {k}", column)
    own.add_new(liked)
    own.add_popular(*popular)

    spelled = Blend(idx)
    spelled.add("for_you", for_you.astype(np.int64), for_you_scores.astype(np.float64))
    for k, column in enumerate(anchors):
        spelled.add("similar", neighbours[0][column].astype(np.int64),
                    neighbours[1][column].astype(np.float64), anchor=f"anchor {k}")
    category_score = np.array([1.0 + liked[t] if liked[t] > 0 else 0.0 for t in idx.tops])
    spelled.add("new", idx.new, category_score[idx.new_top])
    spelled.add("popular", *popular)

    own_ranked, spelled_ranked = (choose_products(idx, b, EVERYTHING, Behaviour(), n, 1.0)
                                  for b in (own, spelled))
    assert own_ranked == spelled_ranked
    assert own.anchors == spelled.anchors


def test_the_index_puts_the_recommenders_columns_first_and_knows_which_are_products():
    """A column is its own position; products the model does not know come after; new and
    popular lists hold only products, so only column sources are checked, and only when some
    column is not a product."""
    items = {i.item_id: i for i in [
        Item("p1", "product", "one", "a/x", "a", 5.0, True, False, None),
        Item("p2", "product", "two", "b/y", "b", 7.0, False, False, None),
        Item("a1", "content", "guide", "a/x", "a", None, True, True, None),
        Item("p3", "product", "three", "a/x", "a", None, True, True, None)]}
    popular = {("*", "*"): [("a1", 9.0), ("p3", 5.0), ("gone", 4.0), ("p1", 1.0)]}
    shop = ShopView(items, {}, {}, popular, [], {}, ["a1", "p3"], pd.Timestamp.now(tz="UTC"))

    def columns(ids: list[str]) -> Interactions:
        matrix = sp.csr_matrix((1, len(ids)), dtype=np.float32)
        return Interactions(matrix, np.array(["c1"], dtype=object), np.array(ids, dtype=object))

    index = ProductIndex.build(shop, columns(["p2", "a1", "p1"]))
    assert index.ids == ("p2", "a1", "p1", "p3")
    assert index.product.tolist() == [True, False, True, True]
    assert index.check_columns
    assert index.popular[("*", "*")][0].tolist() == [3, 2]  # p3, p1: the article and "gone" left out
    assert index.new.tolist() == [3]
    assert index.tops[index.top[0]] == "b" and not index.in_stock[0]
    assert not ProductIndex.build(shop, columns(["p2", "p1"])).check_columns


@pytest.mark.parametrize("structure,name", [(kernels.Catalog, "catalog"),
                                            (kernels.Rules, "rules")])
def test_the_compiled_passes_unpack_each_structure_in_its_declared_order(structure, name):
    """The compiled passes take ``Catalog`` and ``Rules`` as plain tuples and unpack them by
    position (``kernels.rank`` says why): each unpacking names the fields as declared."""
    source = re.sub(r"[\s\\\\()]+", " ", inspect.getsource(kernels))
    unpacked = re.findall(rf"((?:\w+, )+\w+) = {name}\b", source)
    assert unpacked and all(u.split(", ") == list(structure._fields) for u in unpacked)


def test_the_compiled_pass_unpacks_the_sources_in_their_declared_order():
    source = re.sub(r"[\s\\\\()]+", " ", inspect.getsource(kernels))
    unpacked = re.findall(r"((?:\w+, )+\w+) = sources\b", source)
    assert unpacked == [", ".join(kernels.Sources._fields)]

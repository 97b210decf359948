"""The per-request pass over product candidates, compiled: blending the sources, then choosing
what to show (the rules, then no category over its share), in one call (``rank``).

Both are loops over several hundred candidates. As numpy calls they were some twenty vectorized
operations per request, each costing more in call overhead than in work (about 80 µs a
request, a third of ranking); compiled, they cost a few microseconds, and as one call the
blended candidates never go back to Python. What they compute is stated in
``serving/pipeline.py`` (``Blend``, ``choose_products``) and held to a plain Python statement
of it by property tests (``tests/test_blend.py``).

Compiled on first use and cached on disk (numba's cache: next to this file, or in the user's
cache directory): a worker compiles them while it loads its models (the smoke check ranks
once; about 8 s on two cores), and later workers read the cache (0.25 s). Where numba can
write nowhere (a read-only container), each worker compiles them afresh at start instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from numba import njit


def compiled(function: Callable | None = None, **options) -> Callable:
    """``function`` compiled, cached on disk where numba finds somewhere to write; with
    ``options`` (``compiled(inline="always")``), a decorator that passes them to numba."""
    if function is None:
        return lambda f: compiled(f, **options)
    try:
        return njit(cache=True, nogil=True, **options)(function)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return njit(nogil=True, **options)(function)


EMPTY = -1
"""A free slot in ``_blend``'s table of the candidates seen so far."""


FOR_YOU, NEW, POPULAR, SIMILAR = 0, 1, 2, 3
"""Reason codes of the kinds of candidate source (SIMILAR + k: "similar to" the k-th anchor),
and indices into ``Sources.source_weights``, the weight of each kind."""


class Catalog(NamedTuple):
    """The catalog by position (``serving.products.ProductIndex``), built once per state."""

    product: np.ndarray
    """Position -> is it a product in the catalog? Nothing else is ever shown."""
    check_columns: bool
    """Must candidates named by recommender column be checked against ``product``?"""
    top: np.ndarray
    """Position -> top-level category code (the unit of the diversity cap)."""
    n_tops: int
    in_stock: np.ndarray
    price: np.ndarray
    """NaN where there is no price (fails any price filter)."""
    category: np.ndarray
    """Position -> full category code (what ``Rules.category_ok`` is indexed by)."""
    repeatable: np.ndarray
    """Position -> may it be shown again once bought?"""
    new: np.ndarray
    """Positions of the new products, newest first."""
    new_top: np.ndarray
    """The top-level category code of each of ``new``."""


class Sources(NamedTuple):
    """One request's candidate sources, as Python looked them up (``pipeline.Blend``)."""

    for_you: np.ndarray
    """The top-items table (a row per customer), or a one-row table of fresh candidates."""
    for_you_scores: np.ndarray
    for_you_row: int
    """The customer's row; negative: no "for you" source."""
    n_for_you: int
    for_you_vector: np.ndarray
    """The customer's vector, when the scores are computed rather than read (empty: read
    ``for_you_scores``): a score is its inner product with the item's row of ``item_vectors``."""
    item_vectors: np.ndarray
    anchor_columns: np.ndarray
    """Each anchor's column in the neighbour table; negative: not in it."""
    neighbours: np.ndarray
    neighbour_scores: np.ndarray
    n_similar: int
    """Candidates taken per anchor."""
    liked: np.ndarray
    """Top-level category code -> the customer's liking (new products' scores)."""
    popular: np.ndarray
    popular_scores: np.ndarray
    extra: np.ndarray
    """Any other sources' positions, one after another (``extra_bounds`` marks them)."""
    extra_scores: np.ndarray
    extra_bounds: np.ndarray
    extra_weights: np.ndarray
    extra_codes: np.ndarray
    source_weights: np.ndarray
    """The weight of each kind of source, by reason code (FOR_YOU, NEW, POPULAR, SIMILAR)."""


class Rules(NamedTuple):
    """What the request allows, and how many to show."""

    n: int
    cap: int
    """Most products of one top-level category, unless nothing else passes."""
    in_stock_only: bool
    price_filter: bool
    min_price: float
    max_price: float
    category_ok: np.ndarray
    """Full category code -> does the request's category filter allow it?"""
    blocked: np.ndarray
    """Positions never to show: the first ``n_bought`` were bought (blocked unless repeatable),
    the rest excluded, in the cart or on the page."""
    n_bought: int
    blocked_mask: np.ndarray
    """Per-product scratch, all False on entry and on return (``ProductIndex.blocked_mask``)."""


class RankInput(NamedTuple):
    """Everything ``rank`` reads: the one structure a request hands to the compiled pass."""

    catalog: Catalog
    sources: Sources
    rules: Rules


def rank(given: RankInput) -> tuple[np.ndarray, np.ndarray]:
    """A request's products in one compiled call: blend the sources, then ``choose`` the
    ``n`` to show. Returns their positions and reason codes (two rows) and their totals, in the
    order shown.

    The compiled pass receives the three parts as plain tuples and unpacks them by the names
    above: numba types a plain tuple of arrays as fast as positional arguments, a named tuple
    through Python (about 2.5 µs a request against 10, measured with numba 0.61).
    """
    return _rank(tuple(given.catalog), tuple(given.sources), tuple(given.rules))


@compiled
def _rank(catalog, sources, rules) -> tuple[np.ndarray, np.ndarray]:
    """``rank`` itself. Sources are blended (``_blend``) in this order: "for you" (the first
    ``n_for_you`` of row ``for_you_row`` of its table, none when the row is negative); items
    similar to each anchor the neighbour table holds (anchor ``k``, with column
    ``anchor_columns[k]``, gets reason code ``SIMILAR + k``; a negative column is not in the
    table); the ``extra`` sources as given (bounds, weights and codes); new products, scored
    ``liked[new_top]`` (their category's score); popular products. Sources named by recommender
    column are checked for products when ``check_columns``, the extra ones always, new and
    popular products never (the index lists only products there).

    Python hands over what it looked up (the customer's row of the top-items table, the
    anchors' columns, the liked categories, positions to block) and arrays that already
    exist, and each source is blended where it lies: no array is built to hold them all. In
    a server every numpy call a request makes is code and data that the framework has pushed
    out of the cache since the last request: the same work as a dozen numpy calls around the
    compiled passes cost four times as much per request served as it did in a loop.
    """
    product, check_columns, top, n_tops, in_stock, price, category, repeatable, new, new_top \
        = catalog
    (for_you, for_you_scores, for_you_row, n_for_you, for_you_vector, item_vectors,
     anchor_columns, neighbours, neighbour_scores, n_similar, liked, popular, popular_scores,
     extra, extra_scores, extra_bounds, extra_weights, extra_codes, source_weights) = sources
    size = len(extra) + len(new) + len(popular)
    if for_you_row >= 0:
        size += min(n_for_you, for_you.shape[1])
    for k in range(len(anchor_columns)):
        if anchor_columns[k] >= 0:
            size += n_similar
    capacity = 16
    while capacity < 2 * size:
        capacity *= 2
    slots = np.full(capacity, EMPTY, np.int32)
    items = np.empty(size, np.int64)
    totals = np.empty(size)
    strongest = np.empty(size)
    reasons = np.empty(size, np.int64)
    found = 0
    if for_you_row >= 0:
        columns = for_you[for_you_row, :n_for_you]
        scores = (_inner_products(columns, item_vectors, for_you_vector) if len(for_you_vector)
                  else for_you_scores[for_you_row, :n_for_you])
        found = _blend(columns, scores, source_weights[FOR_YOU], FOR_YOU, check_columns, product,
                       slots, items, totals, strongest, reasons, found)
    for k in range(len(anchor_columns)):
        column = anchor_columns[k]
        if column >= 0:
            found = _blend(neighbours[column, :n_similar], neighbour_scores[column, :n_similar],
                           source_weights[SIMILAR], SIMILAR + k, check_columns, product, slots,
                           items, totals, strongest, reasons, found)
    for x in range(len(extra_weights)):
        start, end = extra_bounds[x], extra_bounds[x + 1]
        found = _blend(extra[start:end], extra_scores[start:end], extra_weights[x],
                       extra_codes[x], True, product, slots, items, totals, strongest, reasons,
                       found)
    new_scores = np.empty(len(new))
    for e in range(len(new)):
        new_scores[e] = liked[new_top[e]]
    found = _blend(new, new_scores, source_weights[NEW], NEW, False, product, slots, items,
                   totals, strongest, reasons, found)
    found = _blend(popular, popular_scores, source_weights[POPULAR], POPULAR, False, product,
                   slots, items, totals, strongest, reasons, found)
    items, totals, reasons = items[:found], totals[:found], reasons[:found]
    picked = choose(items, totals, catalog, rules)
    chosen = np.empty((2, len(picked)), np.int64)
    chosen[0], chosen[1] = items[picked], reasons[picked]
    return chosen, totals[picked]


@compiled
def _blend(positions: np.ndarray, scores: np.ndarray, weight: float, code: int, verify: bool,
           product: np.ndarray, slots: np.ndarray, items: np.ndarray, totals: np.ndarray,
           strongest: np.ndarray, reasons: np.ndarray, found: int) -> int:
    """Add one source to the candidates found so far (``items[:found]``, with their totals,
    strongest contribution and its reason code); returns how many there are now.

    The source is scaled so that its best finite score gets ``weight``, and adds nothing when
    that is not positive. A candidate's total sums its positive, finite contributions, and
    its reason is the code of the source that gave it most (the first such on a tie). A
    position that is negative or past the index is left out, and so is one that is not a
    ``product`` where ``verify`` (a source that names only products need not be checked: each
    check is a read from a table the size of the catalog).

    Candidates are found again through ``slots``, a small open-addressing table sized to the
    request (a few thousand slots, in the core's cache), rather than a catalog-sized array: a
    request's few hundred candidates are scattered over the catalog, and in a server, where
    the framework runs between two requests, every touch of a catalog-sized array was a cache
    miss. A slot holds the candidate's index (its position is in ``items``).
    """
    best = 0.0
    for e in range(len(scores)):
        if best < scores[e] < np.inf:  # NaN compares false
            best = scores[e]
    if best <= 0.0:
        return found
    scale, mask = weight / best, len(slots) - 1
    for e in range(len(positions)):
        p, value = np.int64(positions[e]), scores[e] * scale
        if not 0.0 < value < np.inf or not 0 <= p < len(product) or (verify and not product[p]):
            continue
        slot = ((p * 2654435761) >> 16) & mask  # Knuth's multiplicative hash
        while slots[slot] != EMPTY and items[slots[slot]] != p:
            slot = (slot + 1) & mask
        if slots[slot] == EMPTY:
            slots[slot] = found
            items[found], totals[found], strongest[found], reasons[found] = p, value, value, code
            found += 1
        else:
            k = slots[slot]
            totals[k] += value
            if value > strongest[k]:
                strongest[k], reasons[k] = value, code
    return found


@compiled
def best_first(totals: np.ndarray, at_least: int) -> np.ndarray:
    """Indices of the ``at_least`` largest totals (all when there are fewer), largest first,
    ties in index order: only these are sorted.

    A request asks for the best 56 or so of several hundred. They are kept in a heap while
    the totals are read once (most fall below the worst kept at a glance), then sorted:
    ``np.partition`` and a sort of what passed took 8 µs of a request's 20 in this pass.
    """
    if at_least >= len(totals):
        return np.argsort(-totals, kind="mergesort")
    # keys that sort as the ranking does: a higher total first, then the earlier index
    heap = np.arange(at_least)  # the best so far, the worst of them on top
    for start in range(at_least // 2 - 1, -1, -1):
        _sift_down(heap, at_least, start, totals)
    for i in range(at_least, len(totals)):
        if totals[i] > totals[heap[0]]:  # an equal total added later ranks below
            heap[0] = i
            _sift_down(heap, at_least, 0, totals)
    for end in range(at_least - 1, 0, -1):  # heapsort: the worst move to the end
        heap[0], heap[end] = heap[end], heap[0]
        _sift_down(heap, end, 0, totals)
    return heap


@compiled
def _inner_products(columns: np.ndarray, vectors: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Each column's row of ``vectors`` times ``vector``, in float32 as the training job scored
    them (0 for padding, -1, which blending leaves out)."""
    scores = np.zeros(len(columns), np.float32)
    for k in range(len(columns)):
        if columns[k] >= 0:
            total = np.float32(0)
            for j in range(len(vector)):
                total += vectors[columns[k], j] * vector[j]
            scores[k] = total
    return scores


@compiled(inline="always")  # a call per step cost as much as the step
def _sift_down(heap: np.ndarray, size: int, at: int, totals: np.ndarray) -> None:
    """Restore ``heap[:size]`` below ``at``: each entry ranks no better than those under it
    (a lower total, or an equal one added later), so the worst kept is on top."""
    while True:
        worst, child = at, 2 * at + 1
        for c in range(child, min(child + 2, size)):
            a, b = heap[c], heap[worst]
            if totals[a] < totals[b] or (totals[a] == totals[b] and a > b):
                worst = c
        if worst == at:
            return
        heap[at], heap[worst] = heap[worst], heap[at]
        at = worst


@compiled
def choose(items: np.ndarray, totals: np.ndarray, catalog, rules) -> np.ndarray:
    """Indices into ``items`` of the ``rules.n`` to show, in order: best total first (ties in
    index order), only those that pass the rules, and no top-level category more than
    ``rules.cap`` times unless nothing else passes (then the best of the rest fill the list).
    ``catalog`` and ``rules`` are ``Catalog`` and ``Rules`` as plain tuples (``rank``).

    A product passes if it is in stock (when asked), priced within [min_price, max_price]
    (when asked; no price fails), in a category ``category_ok`` allows, and not ``blocked``
    (the first ``n_bought`` there were bought, and block only what is not ``repeatable``; the
    rest, excluded, in the cart or on the page, always). Only the best few are sorted; the rest
    only when those do not fill the list.
    """
    product, check_columns, top, n_tops, in_stock, price, category, repeatable, new, new_top \
        = catalog
    (n, cap, in_stock_only, price_filter, min_price, max_price, category_ok, blocked, n_bought,
     blocked_mask) = rules
    for i in range(len(blocked)):
        if i >= n_bought or not repeatable[blocked[i]]:
            blocked_mask[blocked[i]] = True
    head = best_first(totals, 4 * n + 16)
    picked, filled = _walk(items, head, catalog, rules)
    if not filled and len(head) < len(items):  # the head ran short: walk everything
        picked, filled = _walk(items, best_first(totals, len(items)), catalog, rules)
    for p in blocked:
        blocked_mask[p] = False
    return picked


@compiled
def _walk(items, order, catalog, rules) -> tuple[np.ndarray, bool]:
    """``choose`` over the candidates in ``order``, and whether the list filled with candidates
    within their category's share: only then can no candidate after ``order`` change it."""
    product, check_columns, top, n_tops, in_stock, price, category, repeatable, new, new_top \
        = catalog
    (n, cap, in_stock_only, price_filter, min_price, max_price, category_ok, blocked, n_bought,
     blocked_mask) = rules
    chosen = np.empty(n, np.int64)
    overflow = np.empty(n, np.int64)
    per_top = np.zeros(n_tops, np.int64)
    taken = spare = 0
    for k in order:
        p = items[k]
        if blocked_mask[p] or not category_ok[category[p]]:
            continue
        if in_stock_only and not in_stock[p]:
            continue
        if price_filter and not min_price <= price[p] <= max_price:
            continue
        if per_top[top[p]] < cap:
            per_top[top[p]] += 1
            chosen[taken] = k
            taken += 1
            if taken == n:
                return chosen, True
        elif spare < n:
            overflow[spare] = k
            spare += 1
    return np.concatenate((chosen[:taken], overflow[:min(n - taken, spare)])), False

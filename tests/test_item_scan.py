"""The item scan: the exact top N by inner product, found mostly from 8-bit codes."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.item_scan import ItemScan
from training.recommenders import make_recommender


def exact_top(vectors: np.ndarray, query: np.ndarray, n: int) -> np.ndarray:
    return np.sort(vectors @ query)[::-1][:n]


@settings(max_examples=150, deadline=None)
@given(items=st.integers(1, 3000), factors=st.integers(1, 24), n=st.integers(1, 300),
       seed=st.integers(0, 2**32 - 1), spread=st.sampled_from([1e-3, 0.1, 10.0]),
       shape=st.sampled_from(["normal", "skewed", "repeated", "zero factor", "zero query",
                              "outlier"]))
def test_the_scan_finds_the_exact_top_n_whatever_the_vectors(items, factors, n, seed, spread,
                                                             shape):
    """Random, skewed (a few items with large vectors, as popular items have in trained
    models), repeated (many ties), a factor no item uses, an all-zero query, and one item so
    large in one factor that every other item's code loses that factor and the query's codes
    lose most others (the approximate order is then far off, and the check must catch it)."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(0, spread, (items, factors)).astype(np.float32)
    if shape == "skewed":
        vectors *= rng.pareto(1.5, (items, 1)).astype(np.float32) + 0.1
    elif shape == "repeated":
        vectors = vectors[rng.integers(0, max(1, items // 20), items)]
    elif shape == "zero factor":
        vectors[:, 0] = 0
    query = rng.normal(0, spread, factors).astype(np.float32)
    if shape == "zero query":
        query[:] = 0
    elif shape == "outlier":
        vectors[0, 0] = 1000 * spread
    columns, scores = ItemScan.build(vectors).top(query, n)
    expected = exact_top(vectors, query, n)
    assert len(columns) == len(expected) == min(n, items)
    assert len(set(columns.tolist())) == len(columns)
    rounding = 1e-5 * float((np.abs(vectors) @ np.abs(query)).max())  # float32 sums differ
    np.testing.assert_allclose(scores, vectors[columns] @ query, rtol=1e-5, atol=rounding)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=rounding)  # the best n, in order


def test_an_als_model_scores_a_customer_with_fresh_events_as_the_scan_finds(tmp_path):
    """What the service asks of the scan: the model's own top 200 for a re-derived vector."""
    rng = np.random.default_rng(0)
    matrix = sp.random(400, 1500, density=0.02, format="csr", random_state=0,
                       dtype=np.float32)
    model = make_recommender("als", factors=16, iterations=5).fit(matrix)
    scan = ItemScan.build(model.scoring_vectors())
    for row in rng.integers(0, 400, 20):
        history = matrix[row] + sp.csr_matrix((np.ones(2, np.float32),
                                               (np.zeros(2), rng.integers(0, 1500, 2))),
                                              shape=(1, 1500))
        columns, scores = model.recommend(int(row), history, N=200,
                                          filter_already_liked_items=False,
                                          recalculate_user=True)
        vector = model.user_vectors(np.array([row]), history, recalculate_user=True)[0]
        found, found_scores = scan.top(vector, 200)
        np.testing.assert_allclose(found_scores, scores, rtol=1e-4, atol=1e-6)
        assert len(set(found.tolist()) ^ set(columns.tolist())) <= 2  # ties at the boundary

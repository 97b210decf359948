"""Every recommender honours one contract, round-trips through save/load, and learns tastes.

The contract is written once (``RecommenderContract``) and each model's test is a subclass
that says how to build it — the pattern implicit uses for its own models.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from features.synthetic import ShopConfig, generate_shop
from tests.conftest import is_mapped
from training.artifacts import unpack_arrays
from training.evaluate import evaluate, time_split
from training.interactions import InteractionConfig, build_interactions
from training.recommender_job import fit_model
from training.recommenders import NAMES, make_recommender, recommender_class
from training.recommenders.base import NotFittedError, Recommender, _top_n

# Six customers, six items, two obvious groups: {0,1,2} like items 0-2, {3,4,5} like items 3-5.
TINY = sp.csr_matrix(np.array([
    [1, 1, 0, 0, 0, 0],
    [1, 0, 1, 0, 0, 0],
    [0, 1, 1, 0, 0, 1],
    [0, 0, 0, 1, 1, 0],
    [0, 0, 0, 1, 0, 1],
    [0, 0, 1, 0, 1, 1],
], dtype=np.float32))
TINY_ITEMS = pd.DataFrame({
    "item_id": [f"i{i}" for i in range(6)],
    "title": ["red running shoe", "blue running shoe", "trail running shoe",
              "espresso coffee beans", "ground coffee", "coffee pods"],
    "description": ["shoe"] * 3 + ["coffee"] * 3,
    "category": ["sports/running"] * 3 + ["grocery/coffee"] * 3,
})


class RecommenderContract:
    """The behaviour every model must have; subclasses define ``make``."""

    def make(self) -> Recommender:
        raise NotImplementedError

    def fitted(self) -> Recommender:
        return self.make().fit(TINY, TINY_ITEMS)

    def test_fit_returns_the_model(self):
        model = self.make()
        assert model.fit(TINY, TINY_ITEMS) is model

    def test_recommend_returns_n_items_best_first(self):
        ids, scores = self.fitted().recommend(0, TINY[0], N=3, filter_already_liked_items=False)
        assert ids.shape == (3,) and scores.shape == (3,)
        assert np.all(np.diff(scores) <= 0)

    def test_already_liked_items_are_filtered(self):
        ids, _ = self.fitted().recommend(0, TINY[0], N=4)
        assert not set(ids) & {0, 1}

    def test_filter_items_are_never_returned(self):
        ids, _ = self.fitted().recommend(0, TINY[0], N=4, filter_items=np.array([2, 3]))
        assert not set(ids) & {0, 1, 2, 3}

    def test_items_restricts_the_answer(self):
        ids, _ = self.fitted().recommend(0, TINY[0], N=5, items=np.array([4, 5]))
        assert set(ids) <= {4, 5}

    def test_a_batch_answers_like_single_calls(self):
        model = self.fitted()
        batch_ids, _ = model.recommend(np.arange(3), TINY[:3], N=2)
        for user in range(3):
            single, _ = model.recommend(user, TINY[user], N=2)
            assert list(batch_ids[user]) == list(single)

    def test_recommend_all_is_recommend_for_every_row(self):
        """The table a service answers fitted customers from: each row exactly what
        ``recommend`` gives that customer, already-liked items kept."""
        model = self.fitted()
        table_ids, table_scores = model.recommend_all(TINY, N=4, batch=2, threads=2)
        for user in range(TINY.shape[0]):
            ids, scores = model.recommend(user, TINY[user], N=4, filter_already_liked_items=False)
            assert list(table_ids[user]) == list(ids)
            np.testing.assert_allclose(table_scores[user], scores, rtol=1e-5, atol=1e-6)

    def test_similar_items_exclude_the_item_itself(self):
        ids, scores = self.fitted().similar_items(0, N=3)
        assert 0 not in ids and len(ids) == 3
        assert np.all(np.diff(scores) <= 0)

    def test_save_and_load_give_the_same_answers(self, tmp_path):
        model = self.fitted()
        path = model.save(tmp_path / "model")
        loaded = Recommender.load(path)
        assert type(loaded) is type(model)
        assert loaded.get_params() == model.get_params()
        for user in range(6):
            a = model.recommend(user, TINY[user], N=3)
            b = loaded.recommend(user, TINY[user], N=3)
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_allclose(a[1], b[1], rtol=1e-6)

    def test_loading_from_the_unpacked_arrays_gives_the_same_answers(self, tmp_path):
        """The service maps a version's arrays from their unpacked copy (one file each)."""
        model = self.fitted()
        path = model.save(tmp_path / "model")
        unpack_arrays(path, tmp_path / "mapped")
        loaded = Recommender.load(path, tmp_path / "mapped")
        for user in range(6):
            a = model.recommend(user, TINY[user], N=3)
            b = loaded.recommend(user, TINY[user], N=3)
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_allclose(a[1], b[1], rtol=1e-6)

    def test_the_saved_file_needs_no_pickle(self, tmp_path):
        path = self.fitted().save(tmp_path / "model")
        with np.load(path, allow_pickle=False) as data:
            assert all(data[name].dtype != object for name in data.files)

    def test_using_an_unfitted_model_says_to_call_fit(self):
        with pytest.raises(NotFittedError, match="is not fitted yet; call fit"):
            self.make().recommend(0, TINY[0])

    def test_an_absurd_n_is_refused(self):
        with pytest.raises(ValueError, match="N must be a positive whole number, got 0"):
            self.fitted().recommend(0, TINY[0], N=0)

    def test_a_history_of_the_wrong_shape_is_refused(self):
        with pytest.raises(ValueError, match="one row per customer asked for and 6 columns"):
            self.fitted().recommend(np.arange(2), TINY[:1])

    def test_an_unknown_parameter_lists_the_real_ones(self):
        with pytest.raises(ValueError, match="has no parameter 'nonsense'; its parameters are"):
            type(self.make())(nonsense=1)


class TestALS(RecommenderContract):
    def make(self):
        return make_recommender("als", factors=4, iterations=10, regularization=0.01)

    def test_a_customer_recomputed_from_history_ranks_like_the_trained_one(self):
        model = self.fitted()
        for user in range(6):
            trained, _ = model.recommend(user, TINY[user], N=6, filter_already_liked_items=False)
            fresh, _ = model.recommend(-1, TINY[user], N=6, filter_already_liked_items=False,
                                       recalculate_user=True)
            assert list(fresh[:2]) == list(trained[:2])

    def test_an_unknown_row_without_recalculation_is_refused(self):
        with pytest.raises(ValueError, match="pass recalculate_user=True"):
            self.fitted().recommend(99, TINY[0])


class TestBPR(RecommenderContract):
    def make(self):
        return make_recommender("bpr", factors=4, iterations=50)


class TestItemKNN(RecommenderContract):
    def make(self):
        return make_recommender("itemknn", neighbors=5)


class TestEASE(RecommenderContract):
    def make(self):
        return make_recommender("ease", l2=1.0)


class TestPopularity(RecommenderContract):
    def make(self):
        return make_recommender("popularity")


class TestTrending(RecommenderContract):
    def make(self):
        return make_recommender("trending")


class TestContent(RecommenderContract):
    def make(self):
        return make_recommender("content")

    def test_a_new_item_with_no_history_is_reachable_by_its_text(self):
        model = self.fitted()
        ids, _ = model.similar_items(3, N=2)
        assert set(ids) <= {4, 5}
        vector = model.embed(pd.DataFrame({"title": ["decaf coffee beans"],
                                           "category": ["grocery/coffee"]}))
        assert vector.nnz > 0

    def test_it_needs_the_catalog_text(self):
        with pytest.raises(ValueError, match="needs item_info with one row per item column"):
            self.make().fit(TINY)


def test_every_shipped_model_has_a_contract_test():
    tested = {cls().make().name for cls in RecommenderContract.__subclasses__()}
    assert tested == set(NAMES)


def test_each_name_leads_to_the_class_of_that_name():
    assert [recommender_class(name).name for name in NAMES] == list(NAMES)


def test_an_unknown_model_name_lists_the_real_ones():
    with pytest.raises(ValueError, match="unknown model 'svd'; expected one of: als, bpr"):
        make_recommender("svd")


def test_a_bad_hyperparameter_says_what_is_allowed():
    with pytest.raises(ValueError, match="The 'factors' parameter of ALSRecommender input should "
                                         "be greater than or equal to 1 .* Got -3 instead"):
        make_recommender("als", factors=-3)


def test_trending_ranks_recent_behaviour_above_old():
    now = pd.Timestamp("2024-06-01", tz="UTC")
    rows = [(f"c{i}", "old", now - pd.Timedelta(days=60)) for i in range(10)]
    rows += [(f"c{i}", "new", now - pd.Timedelta(days=1)) for i in range(4)]
    events = pd.DataFrame(rows, columns=["customer_id", "item_id", "timestamp"]).assign(
        event_type="purchase")
    decayed = build_interactions(events, InteractionConfig(half_life_days=7))
    model = make_recommender("trending").fit(decayed.matrix)
    ids, _ = model.recommend(-1, sp.csr_matrix((1, 2)), N=1)
    assert decayed.item_ids[ids[0]] == "new"
    popular = make_recommender("popularity").fit(build_interactions(events).matrix)
    assert decayed.item_ids[popular.recommend(-1, sp.csr_matrix((1, 2)), N=1)[0][0]] == "old"


@pytest.fixture(scope="module")
def taste_shop():
    """Big enough that tastes show, small enough to fit every model in seconds."""
    shop = generate_shop(ShopConfig(n_customers=400, n_products=150, days=90, seed=7))
    split = time_split(shop.events, None, 14)
    train = build_interactions(split.train, items=shop.items)
    baseline = evaluate(fit_model(make_recommender("popularity"), train, shop.items),
                        train, split.test, k=10)
    return shop, split, train, baseline.metrics["ndcg@10"]


@pytest.mark.parametrize("name", ["als", "bpr", "itemknn", "ease", "content"])
def test_each_model_clearly_beats_popularity_on_held_out_purchases(taste_shop, name):
    shop, split, train, popularity = taste_shop
    model = fit_model(make_recommender(name), train, shop.items)
    ndcg = evaluate(model, train, split.test, k=10).metrics["ndcg@10"]
    assert ndcg > 1.5 * popularity, f"{name}: nDCG@10 {ndcg:.4f} vs popularity {popularity:.4f}"


def test_als_recommends_from_the_categories_customers_truly_like(taste_shop):
    shop, _, train, _ = taste_shop
    category = shop.items.set_index("item_id")["category"].reindex(train.item_ids).to_numpy()
    tastes = shop.customer_tastes.reindex(train.user_ids)
    top3 = tastes.apply(lambda row: set(row.nlargest(3).index), axis=1).to_list()

    def share_in_taste(model) -> float:
        # Unfiltered: with ~6 items per category, favourite categories run out of unseen items.
        ids, _ = model.recommend(np.arange(train.shape[0]), train.matrix, N=10,
                                 filter_already_liked_items=False)
        return float(np.mean([[category[i] in top3[u] for i in row] for u, row in enumerate(ids)]))

    als = fit_model(make_recommender("als"), train, shop.items)
    popularity = fit_model(make_recommender("popularity"), train, shop.items)
    assert share_in_taste(als) > 0.5  # 3 of 24 categories: 0.125 for a model with no idea
    assert share_in_taste(als) > 3 * share_in_taste(popularity)


def test_the_neighbour_table_is_similar_items_for_every_item():
    rng = np.random.default_rng(4)
    matrix = sp.random(200, 150, density=0.05, format="csr", random_state=4, dtype=np.float32)
    model = make_recommender("als", factors=8, iterations=3).fit(matrix)
    ids, scores = model.item_neighbours(N=10, batch=64, threads=2)
    for item in rng.choice(150, 20, replace=False):
        exact_ids, exact_scores = model.similar_items(int(item), N=10)
        np.testing.assert_allclose(scores[item], exact_scores, rtol=1e-5)
        assert set(ids[item]) == set(exact_ids)


def test_a_neighbour_table_is_refused_for_sparse_item_vectors():
    matrix = sp.random(50, 40, density=0.1, format="csr", random_state=1, dtype=np.float32)
    with pytest.raises(ValueError, match="a neighbour table is for factor models"):
        make_recommender("itemknn").fit(matrix).item_neighbours()


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40),
       columns=st.integers(1, 6000), filtered=st.floats(0.0, 1.0),
       ties=st.booleans())
def test_top_n_is_the_exact_partial_sort_whatever_the_scores(seed, n, columns, filtered, ties):
    """The sampled pre-selection must never change the answer: same scores, best first, and
    only finite ones, including rows with ties and rows mostly filtered out (-inf)."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(1, columns)).astype(np.float32)
    if ties:
        scores = np.round(scores, 1)
    scores[0, rng.random(columns) < filtered] = -np.inf
    ids, top = _top_n(scores, n)
    finite = np.sort(scores[0][np.isfinite(scores[0])])[::-1]
    expected = finite[:n]
    assert np.array_equal(top[0], expected)
    assert np.array_equal(scores[0, ids[0]], top[0])
    assert len(set(ids[0].tolist())) == len(ids[0])


def test_a_factor_model_loaded_from_unpacked_arrays_maps_its_factors(tmp_path):
    """Mapped, every worker serving the version shares one copy of them in the page cache."""
    model = make_recommender("als", factors=8, iterations=2).fit(TINY)
    path = model.save(tmp_path / "model")
    unpack_arrays(path, tmp_path / "mapped")
    arrays = Recommender.load(path, tmp_path / "mapped")._arrays()

    for name in ("user_factors", "item_factors"):
        assert is_mapped(arrays[name]), f"{name} is a copy"

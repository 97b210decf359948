"""Evaluation: splits that cannot leak, and metrics that give the known right answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.evaluate import _per_user_metrics, evaluate, stratified_split, time_split
from training.interactions import build_interactions
from training.recommenders.base import Recommender, RecommenderConfig

T0 = pd.Timestamp("2024-01-01", tz="UTC")


def purchases(*rows) -> pd.DataFrame:
    return pd.DataFrame([dict(customer_id=c, item_id=i, event_type="purchase",
                              timestamp=T0 + pd.Timedelta(days=d)) for c, i, d in rows])


class Fixed(Recommender):
    """Recommends columns in a fixed order: a model whose right answer we know."""

    name = "fixed"
    Config = RecommenderConfig

    def __init__(self, order):
        super().__init__()
        self.order = np.asarray(order)

    def _fit(self, user_items, item_info):
        pass

    def _score(self, userids, user_items, recalculate_user=False):
        scores = np.zeros(self.n_items_, dtype=np.float32)
        scores[self.order] = np.arange(len(self.order), 0, -1)
        return np.tile(scores, (len(userids), 1))

    def _item_vectors(self):
        return np.eye(self.n_items_)

    def _arrays(self):
        return {}

    def _restore(self, arrays):
        pass


def setup(order, test_rows):
    train_events = purchases(("a", "x0", 0), ("b", "x0", 0), ("b", "x1", 0), ("a", "x2", 1),
                             ("b", "x3", 1), ("a", "x4", 1))
    train = build_interactions(train_events)
    model = Fixed(order).fit(train.matrix)
    return model, train, purchases(*test_rows)


def test_a_perfect_ranking_scores_one():
    model, train, test = setup([1, 3], [("a", "x1", 10), ("a", "x3", 10)])
    metrics = evaluate(model, train, test, k=2).metrics
    assert metrics["ndcg@2"] == pytest.approx(1.0)
    assert metrics["precision@2"] == metrics["recall@2"] == metrics["map@2"] == 1.0


def test_metrics_on_a_known_ranking():
    # a has seen x0, x2, x4; recommended (seen filtered): x1, x3. Relevant: x3 only.
    model, train, test = setup([1, 3], [("a", "x3", 10)])
    metrics = evaluate(model, train, test, k=2).metrics
    assert metrics["precision@2"] == 0.5
    assert metrics["recall@2"] == 1.0
    assert metrics["ndcg@2"] == pytest.approx((1 / np.log2(3)) / 1.0)
    assert metrics["map@2"] == pytest.approx(0.5)  # precision at rank 2, over 1 relevant
    assert metrics["hit_rate@2"] == 1.0


def test_map_divides_by_the_number_of_relevant_items_like_microsoft_recommenders():
    hits = np.array([[True, False, True]])
    row = _per_user_metrics(hits, np.array([4]), k=3).iloc[0]
    assert row["map"] == pytest.approx((1 / 1 + 2 / 3) / 4)


def test_an_item_the_model_never_saw_still_counts_against_recall():
    model, train, test = setup([1, 3], [("a", "x3", 10), ("a", "brand-new", 10)])
    assert evaluate(model, train, test, k=2).metrics["recall@2"] == 0.5


def test_every_item_the_model_never_saw_counts_on_its_own():
    model, train, test = setup([1, 3], [("a", "x3", 10), ("a", "new-1", 10), ("a", "new-2", 10),
                                        ("a", "new-2", 11)])
    metrics = evaluate(model, train, test, k=2).metrics
    assert metrics["recall@2"] == pytest.approx(1 / 3)
    assert metrics["map@2"] == pytest.approx(0.5 / 3)  # a hit at rank 2, over 3 relevant


def test_a_customer_whose_only_relevant_items_are_new_is_evaluated_with_zero_hits():
    model, train, test = setup([1, 3], [("a", "x3", 10), ("b", "new-1", 10), ("b", "new-2", 10)])
    per_user = evaluate(model, train, test, k=2).per_user.set_index("customer_id")
    assert per_user.loc["b", "n_relevant"] == 2 and per_user.loc["b", "hits"] == 0


def test_customers_unknown_to_the_model_are_not_evaluated():
    model, train, test = setup([1, 3], [("a", "x3", 10), ("zed", "x3", 10)])
    assert evaluate(model, train, test, k=2).metrics["customers_evaluated"] == 1


def test_the_all_items_view_counts_repeat_purchases():
    model, train, test = setup([0, 2], [("a", "x0", 10)])
    assert evaluate(model, train, test, k=2, exclude_seen=False).metrics["recall@2"] == 1.0
    with pytest.raises(ValueError, match="no customer in the test period is known"):
        evaluate(model, train, test, k=2, exclude_seen=True)


def test_a_time_split_puts_nothing_from_the_test_period_in_training(tiny_shop):
    split = time_split(tiny_shop.events, None, test_days=10)
    cutoff = pd.Timestamp(split.description["cutoff"])
    assert split.train["timestamp"].max() < cutoff <= split.test["timestamp"].min()
    assert split.test["timestamp"].max() < cutoff + pd.Timedelta(days=10)


def test_a_cutoff_outside_the_data_is_explained(tiny_shop):
    with pytest.raises(ValueError, match="leaves 0 training and"):
        time_split(tiny_shop.events, pd.Timestamp("2000-01-01", tz="UTC"))


def test_a_naive_cutoff_is_refused(tiny_shop):
    with pytest.raises(ValueError, match="has no timezone"):
        time_split(tiny_shop.events, pd.Timestamp("2024-02-01"))


def test_the_stratified_split_keeps_three_quarters_of_each_customer(tiny_shop):
    bought = tiny_shop.events[tiny_shop.events["event_type"] == "purchase"]
    split = stratified_split(bought, 0.75, seed=42)
    per_customer = bought.groupby("customer_id").size()
    in_train = split.train.groupby("customer_id").size().reindex(per_customer.index, fill_value=0)
    assert (in_train == np.round(per_customer * 0.75)).all()
    assert len(split.train) + len(split.test) == len(bought)
    again = stratified_split(bought, 0.75, seed=42)
    assert again.test.index.equals(split.test.index)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.booleans(), min_size=5, max_size=5), min_size=1, max_size=20),
       st.integers(1, 12))
def test_metrics_stay_between_zero_and_one(rows, extra):
    hits = np.array(rows)
    n_relevant = np.maximum(hits.sum(axis=1), 1) + extra - 1
    table = _per_user_metrics(hits, n_relevant, k=5)
    for column in ("precision", "recall", "ndcg", "map", "hit_rate"):
        assert table[column].between(0, 1 + 1e-9).all(), column

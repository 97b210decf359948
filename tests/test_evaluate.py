"""Evaluation: splits that cannot leak, and metrics that give the known right answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.evaluate import (
    _per_user_metrics,
    evaluate,
    leave_last_out,
    stratified_split,
    time_split,
)
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


def viewed(customer: str, item: str, day: float) -> dict:
    return dict(customer_id=customer, item_id=item, event_type="view",
                timestamp=T0 + pd.Timedelta(days=day))


def test_leave_last_out_tests_each_customers_last_purchase_and_trains_on_what_came_before():
    events = pd.concat([purchases(("a", "x0", 0), ("a", "x1", 2), ("a", "x2", 5), ("b", "x0", 1),
                                  ("c", "x3", 3)),
                        pd.DataFrame([viewed("a", "x9", 1), viewed("a", "x8", 6),
                                      viewed("d", "x0", 2)])], ignore_index=True)
    split = leave_last_out(events)
    assert sorted(zip(split.test["customer_id"], split.test["item_id"], strict=True)) == [
        ("a", "x2"), ("b", "x0"), ("c", "x3")]
    train = sorted(zip(split.train["customer_id"], split.train["item_id"], strict=True))
    # a: everything before day 5 (not the view of x8 on day 6, after the held-out purchase);
    # b and c: nothing before their only purchase; d bought nothing and only trains
    assert train == [("a", "x0"), ("a", "x1"), ("a", "x9"), ("d", "x0")]


def test_leave_last_out_keeps_the_session_that_led_to_the_held_out_purchase_out_of_training():
    events = pd.concat([purchases(("a", "x0", 0), ("a", "x2", 5)),
                        pd.DataFrame([viewed("a", "x2", 4.99), viewed("a", "x7", 3)])],
                       ignore_index=True).assign(session_id=["s1", "s2", "s2", "s0"])
    split = leave_last_out(events)
    assert sorted(split.train["item_id"]) == ["x0", "x7"]  # not the view of x2 that led to it


def test_leave_last_out_holds_out_the_last_n():
    events = purchases(("a", "x0", 0), ("a", "x1", 2), ("a", "x2", 5), ("b", "x0", 1))
    split = leave_last_out(events, n=2)
    assert sorted(split.test["item_id"][split.test["customer_id"] == "a"]) == ["x1", "x2"]
    assert split.train["item_id"].tolist() == ["x0"]


def test_leave_last_out_evaluates_by_hand():
    # a bought x1, x2, then x4 (held out); b bought x4, then x2 (held out)
    events = purchases(("a", "x1", 0), ("a", "x2", 1), ("a", "x4", 3), ("b", "x4", 0),
                       ("b", "x2", 4))
    split = leave_last_out(events)
    train = build_interactions(split.train)
    columns = {item: i for i, item in enumerate(train.item_ids)}
    model = Fixed([columns["x4"], columns["x1"], columns["x2"]]).fit(train.matrix)
    metrics = evaluate(model, train, split.test, k=2, exclude_seen=True).metrics
    # a: seen x1, x2 filtered -> [x4]: a hit at rank 1; b: seen x4 -> [x1, x2]: a hit at rank 2
    assert metrics["recall@2"] == 1.0 and metrics["precision@2"] == 0.5
    assert metrics["ndcg@2"] == pytest.approx((1 + 1 / np.log2(3)) / 2)
    assert metrics["map@2"] == pytest.approx((1 + 0.5) / 2)
    assert metrics["customers_evaluated"] == 2


def test_leave_last_out_without_a_purchase_says_so():
    with pytest.raises(ValueError, match="no purchase event to leave out"):
        leave_last_out(pd.DataFrame([viewed("a", "x1", 0)]))

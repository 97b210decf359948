"""Buy again on purchases whose cycles are known, and its blend with a collaborative ranking."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from training.interactions import build_interactions
from training.recommenders.buy_again import BuyAgain, RankBlend, rank_hit_rates, reason

T0 = pd.Timestamp("2026-01-01", tz="UTC")


def bought(customer: str, item: str, *days: float) -> list[dict]:
    return [{"customer_id": customer, "item_id": item, "event_type": "purchase",
             "timestamp": T0 + pd.Timedelta(days=d)} for d in days]


@pytest.fixture
def shop():
    """Ann buys coffee weekly (last on day 21) and shampoo on days 0 and 26; Bob bought coffee
    once, on day 10, and a kettle (not repeatable) on day 20. As of day 28."""
    events = pd.DataFrame([*bought("ann", "coffee", 0, 7, 14, 21), *bought("ann", "shampoo", 0, 26),
                           *bought("bob", "coffee", 10), *bought("bob", "kettle", 20)])
    items = pd.DataFrame({"item_id": ["coffee", "shampoo", "kettle"], "kind": "product",
                          "repeatable": [True, True, False]})
    interactions = build_interactions(events, items=items)
    model = BuyAgain().fit(events, interactions, T0 + pd.Timedelta(days=28), items)
    return model, interactions, events


def test_an_item_whose_cycle_has_just_passed_comes_first_with_its_cycle_as_the_reason(shop):
    model, _, events = shop
    due = model.due(events[events["customer_id"] == "ann"], T0 + pd.Timedelta(days=28))
    assert due["item_id"].tolist()[0] == "coffee"
    assert due["reason"].tolist()[0] == "you buy this about every week"
    assert due.set_index("item_id").at["coffee", "score"] > 10 * due.set_index(
        "item_id").at["shampoo", "score"]  # shampoo was bought two days ago


def test_one_purchase_borrows_the_items_cycle_and_repeat_rate(shop):
    model, _, events = shop
    due = model.due(events[events["customer_id"] == "bob"], T0 + pd.Timedelta(days=28))
    coffee = due.set_index("item_id").loc["coffee"]
    assert coffee["reason"] == "often bought again after about a week"
    assert 0 < coffee["score"] < 1


def test_an_item_marked_not_repeatable_is_never_proposed(shop):
    model, interactions, events = shop
    bob = interactions.user_rows(["bob"])[0]
    ids, _ = model.recommend(bob, N=5)
    assert interactions.item_columns(["kettle"])[0] not in ids
    assert "kettle" not in set(model.due(events[events["customer_id"] == "bob"],
                                         T0 + pd.Timedelta(days=28))["item_id"])


def test_fitted_scores_are_the_live_scores_at_the_same_moment(shop):
    model, interactions, events = shop
    ann = interactions.user_rows(["ann"])[0]
    ids, scores = model.recommend(ann, N=2)
    live = model.due(events[events["customer_id"] == "ann"], model.as_of_).set_index("item_id")
    for column, score in zip(ids, scores, strict=True):
        assert live.at[interactions.item_ids[column], "score"] == pytest.approx(score, rel=1e-6)


def test_the_shelf_for_a_known_customer_matches_their_whole_history(shop):
    model, _, events = shop
    now = T0 + pd.Timedelta(days=28)
    shelf = model.due_for("ann", now)
    full = model.due(events[events["customer_id"] == "ann"], now)
    full = full[full["score"] >= model.config.min_score]  # the shelf leaves out what is not due
    assert [item for item, _, _ in shelf] == full["item_id"].tolist()
    assert [score for _, score, _ in shelf] == pytest.approx(full["score"].tolist())
    assert shelf[0][2] == "you buy this about every week"


def test_the_shelf_leaves_out_what_is_not_due(shop):
    model, _, _ = shop
    shelf = [item for item, _, _ in model.due_for("ann", T0 + pd.Timedelta(days=28))]
    assert shelf == ["coffee"]  # shampoo, bought two days ago, is not due for weeks


def test_a_purchase_since_the_snapshot_resets_the_items_clock(shop):
    model, interactions, events = shop
    model = BuyAgain(min_score=0).fit(events, interactions, model.as_of_)
    now = T0 + pd.Timedelta(days=29)  # a day after the snapshot
    fresh = {"coffee": (T0 + pd.Timedelta(days=28.5)).timestamp()}
    before = dict((item, score) for item, score, _ in model.due_for("ann", now))
    after = dict((item, score) for item, score, _ in model.due_for("ann", now, fresh=fresh))
    assert after["coffee"] < before["coffee"] / 10  # just bought: not due for a week


def test_a_new_customers_first_purchase_is_proposed_on_the_items_cycle(shop):
    model, _, _ = shop
    fresh = {"coffee": (T0 + pd.Timedelta(days=30)).timestamp()}
    shelf = model.due_for("newcomer", T0 + pd.Timedelta(days=37), fresh=fresh)
    assert [(item, why) for item, _, why in shelf] == [
        ("coffee", "often bought again after about a week")]
    assert model.due_for("stranger", T0 + pd.Timedelta(days=28)) == []


def test_in_the_new_items_view_buy_again_proposes_nothing(shop):
    model, interactions, _ = shop
    ids, scores = model.recommend(interactions.user_rows(["ann"])[0], N=3,
                                  filter_already_liked_items=True)
    assert (ids == -1).all() and np.isneginf(scores).all()


@pytest.mark.parametrize("days, own, words", [(7, True, "you buy this about every week"),
                                              (3, True, "you buy this about every 3 days"),
                                              (21, False, "often bought again after about 3 weeks"),
                                              (90, True, "you buy this about every 3 months"),
                                              (31, False, "often bought again after about 4 weeks")])
def test_the_reason_says_the_cycle_in_plain_words(days, own, words):
    assert reason(days, own) == words


class Fixed:
    """A recommender that always answers the same columns (scores falling with rank)."""

    def __init__(self, columns: list[int]) -> None:
        self.columns = columns

    def recommend(self, userid, user_items=None, N=10, filter_already_liked_items=False,
                  filter_items=None, **_):
        rows = np.atleast_1d(userid)
        ids = np.full((rows.size, N), -1)
        scores = np.full((rows.size, N), -np.inf)
        n = min(N, len(self.columns))
        ids[:, :n] = self.columns[:n]
        scores[:, :n] = -np.arange(n)
        return (ids[0], scores[0]) if np.isscalar(userid) else (ids, scores)


def test_the_blend_ranks_by_what_each_sources_ranks_are_worth_and_credits_agreement():
    blend = RankBlend(Fixed([1, 2, 3]), Fixed([9, 3]),
                      {"collaborative": np.array([0.5, 0.2, 0.1]),
                       "buy_again": np.array([0.3, 0.25])})
    ids, scores = blend.recommend(0, None, N=4)
    # 1: 0.5; 3: 1 - 0.9 x 0.75 = 0.325 (both propose it); 9: 0.3; 2: 0.2
    assert ids.tolist() == [1, 3, 9, 2]
    assert scores.tolist() == pytest.approx([0.5, 0.325, 0.3, 0.2])


def test_the_blend_is_the_discovery_recommender_in_the_new_items_view():
    blend = RankBlend(Fixed([1, 2]), Fixed([9]), {"collaborative": np.array([0.5, 0.2]),
                                                  "buy_again": np.array([0.9])}, Fixed([5, 6]))
    ids, _ = blend.recommend(0, None, N=2, filter_already_liked_items=True)
    assert ids.tolist() == [5, 6]


@given(st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1, max_size=12))
def test_rank_hit_rates_never_rise_with_rank(bought_items):
    train = pd.DataFrame([*bought("u", "a", 0), *bought("u", "b", 1), *bought("v", "c", 0),
                          *bought("v", "d", 1), *bought("v", "e", 2)])
    interactions = build_interactions(train)
    validation = pd.DataFrame([b for i, item in enumerate(bought_items)
                               for b in bought("uv"[i % 2], item, 5)])
    rates = rank_hit_rates(Fixed([0, 1, 2, 3, 4]), interactions, validation, N=5,
                           exclude_seen=False)
    assert (np.diff(rates) <= 0).all() and ((rates >= 0) & (rates <= 1)).all()

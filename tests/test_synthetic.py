"""The synthetic shop: deterministic, sized as asked, and shaped like a real shop."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.synthetic import ShopConfig, generate_shop
from tests.conftest import TINY


@pytest.fixture(scope="module")
def shop():
    """Larger than tiny_shop, so the statistical checks below are stable."""
    return generate_shop(ShopConfig(n_customers=1500, n_products=300, days=180, seed=3))


def test_the_same_seed_gives_the_same_shop(tiny_shop):
    again = generate_shop(TINY)
    pd.testing.assert_frame_equal(again.events, tiny_shop.events)
    pd.testing.assert_frame_equal(again.items, tiny_shop.items)
    pd.testing.assert_frame_equal(again.customers, tiny_shop.customers)


def test_another_seed_gives_another_shop(tiny_shop):
    other = generate_shop(TINY.model_copy(update={"seed": TINY.seed + 1}))
    assert not other.events["item_id"].equals(tiny_shop.events["item_id"])


@pytest.mark.parametrize("target", [50_000, 200_000])
def test_for_events_sizes_the_history_close_to_the_target(target):
    # as documented, from tens of thousands of events up; a few heavy customers (activity is
    # lognormal) make a shop of a few dozen customers lumpy, whatever the rate
    events = generate_shop(ShopConfig.for_events(target, seed=1)).events
    assert abs(len(events) - target) / target < 0.15


def test_a_tiny_config_is_refused_with_the_limit():
    with pytest.raises(ValueError, match="n_events must be at least 100, got 10"):
        ShopConfig.for_events(10)


def test_item_popularity_has_a_long_tail(shop):
    products = shop.items.loc[shop.items["kind"] == "product", "item_id"]
    purchases = shop.events.loc[shop.events["event_type"] == "purchase", "item_id"]
    counts = purchases.value_counts().reindex(products, fill_value=0).sort_values(ascending=False)
    share = counts / counts.sum()
    n = len(counts)
    assert share.iloc[: n // 10].sum() > 0.3  # a uniform catalog would give 0.1
    assert share.iloc[n // 2:].sum() < 0.2  # ... and 0.5 here


def test_customers_buy_mostly_in_the_categories_they_truly_like(shop):
    purchases = shop.events[shop.events["event_type"] == "purchase"]
    category = purchases["item_id"].map(shop.items.set_index("item_id")["category"])
    tastes = shop.customer_tastes
    top3 = {c: set(row.nlargest(3).index) for c, row in tastes.iterrows()}
    hits = [cat in top3[c] for c, cat in zip(purchases["customer_id"], category, strict=True)]
    assert np.mean(hits) > 0.7  # against 3/24 = 0.125 for a customer with no taste


def test_within_a_session_the_funnel_runs_view_then_cart_then_purchase(shop):
    events = shop.events
    step = events["event_type"].map({"view": 0, "add_to_cart": 1, "purchase": 2})
    ordered = events.assign(step=step).dropna(subset=["step"])
    first_time = ordered.groupby(["session_id", "step"])["timestamp"].min().unstack()
    carted = first_time.dropna(subset=[1.0])
    assert (carted[0.0] <= carted[1.0]).all()
    bought = first_time.dropna(subset=[2.0])
    assert (bought[1.0] <= bought[2.0]).all()


def test_most_carts_are_abandoned_and_some_are_bought(shop):
    by_session = shop.events.groupby("session_id")["event_type"].agg(set)
    carted = by_session[by_session.map(lambda s: "add_to_cart" in s)]
    bought = carted.map(lambda s: "purchase" in s).mean()
    assert 0.3 < bought < 0.8


def test_channels_have_different_habits(shop):
    sessions = shop.events.groupby("session_id").agg(
        channel=("channel", "first"),
        bought=("event_type", lambda t: (t == "purchase").any()),
        views=("event_type", lambda t: (t == "view").sum()))
    per_channel = sessions.groupby("channel").mean()
    assert per_channel.loc["store", "bought"] > 2 * per_channel.loc["web", "bought"]
    assert per_channel.loc["app", "views"] > per_channel.loc["email", "views"]


def test_consumables_are_bought_again_and_durables_rarely(shop):
    purchases = shop.events[shop.events["event_type"] == "purchase"]
    repeatable = purchases["item_id"].map(shop.items.set_index("item_id")["repeatable"])
    repeats = purchases.duplicated(["customer_id", "item_id"])
    assert repeats[repeatable].mean() > 3 * repeats[~repeatable].mean()


def test_weekends_are_busier_than_weekdays(shop):
    sessions = shop.events.drop_duplicates("session_id")
    per_day = sessions.groupby(sessions["timestamp"].dt.day_of_week).size()
    assert per_day.loc[[5, 6]].mean() > 1.15 * per_day.loc[[0, 1, 2]].mean()


def test_new_customers_and_new_items_appear_over_time(shop):
    first_event = shop.events.groupby("customer_id")["timestamp"].min()
    start = shop.config.start
    assert (first_event > pd.Timestamp(start) + pd.Timedelta(days=90)).mean() > 0.05
    created = shop.items.set_index("item_id")["created_at"]
    seen_at = shop.events.groupby("item_id")["timestamp"].min()
    launched_late = created[created > pd.Timestamp(start)].index.intersection(seen_at.index)
    assert len(launched_late) > 10
    assert (seen_at[launched_late] >= created[launched_late]).all()


def test_content_is_read_in_the_category_of_the_session(shop):
    items = shop.items.set_index("item_id")
    events = shop.events.assign(kind=shop.events["item_id"].map(items["kind"]),
                                category=shop.events["item_id"].map(items["category"]))
    reads = events[events["kind"] == "content"]
    products = events[events["kind"] == "product"].drop_duplicates("session_id")
    paired = reads.merge(products[["session_id", "category"]], on="session_id",
                         suffixes=("_content", "_product"))
    assert len(paired) > 50
    assert (paired["category_content"] == paired["category_product"]).mean() > 0.95


def test_offers_are_redeemed_only_when_shown_valid_and_within_the_limit(shop):
    events, items = shop.events, shop.items.set_index("item_id")
    redeemed = events[events["event_type"] == "offer_redeemed"]
    assert len(redeemed) > 0
    shown = events[events["event_type"] == "offer_shown"]
    assert set(zip(redeemed["session_id"], redeemed["item_id"], strict=True)) <= set(
        zip(shown["session_id"], shown["item_id"], strict=True))
    when = redeemed["timestamp"]
    offer = items.loc[redeemed["item_id"]]
    assert (when.to_numpy() >= offer["valid_from"].to_numpy()).all()
    per_customer = redeemed.groupby(["customer_id", "item_id"]).size()
    limit = items.loc[per_customer.index.get_level_values("item_id"), "redemption_limit"]
    assert (per_customer.to_numpy() <= limit.to_numpy()).all()


def test_offer_response_depends_on_the_customer(shop):
    events = shop.events
    shown = events[events["event_type"] == "offer_shown"]
    redeemers = set(events.loc[events["event_type"] == "offer_redeemed", "customer_id"])
    by_segment = shown.assign(
        redeemed=shown["customer_id"].isin(redeemers),
        segment=shown["customer_id"].map(shop.customers.set_index("customer_id")["segment"]))
    rates = by_segment.groupby("segment")["redeemed"].mean()
    assert rates["bargain_hunter"] > 1.5 * rates["premium"]

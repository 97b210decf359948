"""Point-in-time features: right answers on a known history, no leakage, online = offline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.point_in_time import (
    CUSTOMER_FEATURES,
    build_feature_table,
    compute_customer_features,
    compute_item_features,
    customer_feature_names,
    feature_categories,
    online_customer_features,
)

T0 = pd.Timestamp("2024-03-01T00:00:00Z")
ITEMS = pd.DataFrame({
    "item_id": ["shoe", "pan", "guide"],
    "kind": ["product", "product", "content"],
    "category": ["fashion/shoes", "home/kitchen", "fashion/shoes"],
})


def event(customer, item, kind, days_before, session, channel="web", price=None, quantity=1):
    return dict(customer_id=customer, item_id=item, event_type=kind,
                timestamp=T0 - pd.Timedelta(days=days_before), channel=channel,
                session_id=session, quantity=quantity, price=price)


def frame(*rows) -> pd.DataFrame:
    return pd.DataFrame(list(rows)).astype({"timestamp": "datetime64[us, UTC]"})


HISTORY = frame(
    event("ann", "guide", "view", 100, "s1"),
    event("ann", "shoe", "view", 100, "s1"),
    event("ann", "shoe", "add_to_cart", 100, "s1", price=50.0),
    event("ann", "shoe", "purchase", 100, "s1", price=50.0),
    event("ann", "pan", "view", 20, "s2", channel="app"),
    event("ann", "pan", "add_to_cart", 20, "s2", channel="app", price=30.0),
    event("ann", "shoe", "view", 3, "s3"),
    event("ann", "shoe", "purchase", 3, "s3", price=40.0, quantity=2),
    event("bob", "pan", "view", 1, "s4"),
)


def test_counts_recency_and_money_on_a_known_history():
    row = compute_customer_features(HISTORY, T0, ITEMS).loc["ann"]
    assert row["days_since_last_purchase"] == pytest.approx(3)
    assert row["tenure_days"] == pytest.approx(100)
    assert (row["purchases_7d"], row["purchases_30d"], row["purchases_365d"]) == (1, 1, 2)
    assert row["revenue_30d"] == 80.0 and row["revenue_365d"] == 130.0
    assert row["orders_365d"] == 2
    assert row["avg_order_value_365d"] == pytest.approx(65.0)
    assert (row["views_7d"], row["views_30d"], row["carts_30d"]) == (1, 2, 1)


def test_a_cart_without_purchase_is_abandoned_and_remembered():
    row = compute_customer_features(HISTORY, T0, ITEMS).loc["ann"]
    assert row["abandoned_carts_90d"] == 1
    assert row["days_since_last_abandoned_cart"] == pytest.approx(20)
    assert row["last_abandoned_cart_items"] == "pan"


def test_a_cart_is_not_abandoned_while_its_session_may_still_be_going():
    live = frame(event("cy", "pan", "add_to_cart", 10 / (24 * 60), "s9", price=30.0))
    row = compute_customer_features(live, T0, ITEMS).loc["cy"]
    assert row["abandoned_carts_90d"] == 0
    later = compute_customer_features(live, T0 + pd.Timedelta(hours=1), ITEMS).loc["cy"]
    assert later["abandoned_carts_90d"] == 1


def test_recent_items_are_distinct_and_newest_first():
    row = compute_customer_features(HISTORY, T0, ITEMS).loc["ann"]
    assert row["recent_items"] == "shoe|pan|guide"


def test_affinities_and_channel_shares_are_shares():
    row = compute_customer_features(HISTORY, T0, ITEMS).loc["ann"]
    # view 1, cart 3, purchase 5: fashion = (1+1+3+5) + (1+5) = 16, the guide counting as
    # fashion; home = 1+3 = 4
    assert row["affinity_fashion"] == pytest.approx(16 / 20)
    assert row["affinity_home"] == pytest.approx(4 / 20)
    assert row["channel_share_app"] == pytest.approx(2 / 4)  # last 90 days: s2 and s3


def test_every_declared_feature_is_computed_and_nothing_else(tiny_shop):
    table = compute_customer_features(tiny_shop.events, T0, tiny_shop.items)
    assert list(table.columns) == customer_feature_names(feature_categories(tiny_shop.items))
    declared = {f.name for f in CUSTOMER_FEATURES}
    plain = {c for c in table.columns if not c.startswith(("affinity_", "channel_share_"))}
    assert plain <= declared


def test_a_cutoff_without_timezone_is_refused_with_an_example():
    with pytest.raises(ValueError, match="has no timezone; use a UTC time such as"):
        compute_customer_features(HISTORY, pd.Timestamp("2024-03-01"), ITEMS)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(5, 55), late=st.lists(
    st.tuples(st.integers(0, 79), st.sampled_from(["view", "add_to_cart", "purchase"]),
              st.floats(0, 30 * 86400)), min_size=1, max_size=20))
def test_events_at_or_after_the_cutoff_never_change_a_feature(tiny_shop, cut, late):
    cutoff = pd.Timestamp(tiny_shop.config.start) + pd.Timedelta(days=cut)
    base = tiny_shop.events
    future = frame(*[
        dict(customer_id=f"c{c:07d}", item_id="p000001", event_type=kind,
             timestamp=cutoff + pd.Timedelta(seconds=offset), channel="web", session_id="late",
             quantity=1, price=10.0)
        for c, kind, offset in late])
    before = compute_customer_features(base, cutoff, tiny_shop.items)
    after = compute_customer_features(pd.concat([base, future], ignore_index=True), cutoff,
                                      tiny_shop.items)
    pd.testing.assert_frame_equal(before, after)


def test_offline_table_and_online_row_agree_for_the_same_customer_and_time(stored_shop,
                                                                          tiny_shop):
    cutoffs = [pd.Timestamp(tiny_shop.config.start) + pd.Timedelta(days=d) for d in (20, 45)]
    items = stored_shop.items()
    offline = build_feature_table(lambda m: stored_shop.events(end=m), cutoffs, items)
    rng = np.random.default_rng(0)
    for _, row in offline.iloc[rng.choice(len(offline), 12, replace=False)].iterrows():
        mine = stored_shop.events(customer_ids=[row["customer_id"]])
        online = online_customer_features(mine, row["customer_id"], row["cutoff"], items)
        expected = row.drop(["customer_id", "cutoff"])
        pd.testing.assert_series_equal(online.astype(object), expected.astype(object),
                                       check_names=False)


def test_an_unknown_customer_gets_an_empty_history_row(tiny_shop):
    row = online_customer_features(tiny_shop.events, "nobody", T0, tiny_shop.items)
    assert row["purchases_365d"] == 0 and np.isnan(row["days_since_last_event"])
    assert row["recent_items"] == ""


def test_item_trend_rises_for_an_item_bought_more_this_week():
    rows = [event("x", "shoe", "purchase", 20, f"a{i}") for i in range(3)]
    rows += [event("x", "shoe", "purchase", 2, f"b{i}") for i in range(6)]
    rows += [event("x", "pan", "purchase", d, f"c{d}") for d in (2, 9, 16, 23)]
    table = compute_item_features(frame(*rows), T0)
    assert table.loc["shoe", "trend"] > 2
    assert table.loc["pan", "trend"] == pytest.approx(1.0)
    assert table.loc["shoe", "purchases_7d"] == 6
    assert table.loc["shoe", "buyers_30d"] == 1


def test_building_without_cutoffs_is_refused(tiny_shop):
    with pytest.raises(ValueError, match="cutoffs is empty"):
        build_feature_table(lambda m: tiny_shop.events, [], tiny_shop.items)

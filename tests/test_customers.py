"""The shop view's customer columns read like the dicts they replace."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.id_index import IdIndex
from serving.customers import Behaviours, Consents, Labels, Lists, Times

CUSTOMERS = pd.Series(["bea", "ann", "cid"])
INDEX = IdIndex.distinct([*CUSTOMERS, "dan"])  # dan: events but no customers row


def test_labels_hold_the_customers_with_one():
    segments = Labels(INDEX, CUSTOMERS, pd.Series(["loyal", None, "casual"]))
    assert dict(segments.items()) == {"bea": "loyal", "cid": "casual"}
    assert "ann" not in segments and segments.get("ann", "*") == "*"
    assert segments.get("nobody") is None and len(segments) == 2


def test_consents_are_the_channels_each_customer_agreed_to():
    consents = Consents(INDEX, CUSTOMERS, {"email": np.array([True, False, True]),
                                           "sms": np.array([True, False, False])})
    assert consents["bea"] == {"email", "sms"} and consents["ann"] == frozenset()
    assert "dan" not in consents and consents.get("dan", frozenset()) == frozenset()


def test_times_are_missing_for_customers_without_one():
    last = Times(INDEX, pd.Series(["cid"]), np.array([1_700_000_000.0]))
    assert dict(last.items()) == {"cid": 1_700_000_000.0} and "bea" not in last


def test_behaviour_keeps_each_customers_order_and_counts():
    items = np.array(["p1", "p2", "o1"], dtype=object)
    rows = INDEX.positions(pd.Series(["dan", "bea", "dan"]))
    behaviour = Behaviours(INDEX, items, Lists(rows[:1], np.array([0]), len(INDEX)),
                           Lists(rows, np.array([1, 0, 0]), len(INDEX)),
                           Lists(rows[1:2], np.array([2]), len(INDEX), np.array([3])))
    dan, bea = behaviour["dan"], behaviour["bea"]
    assert (dan.purchased, dan.recent_views, dict(dan.redemptions)) == ({"p1"}, ["p2", "p1"], {})
    assert (bea.purchased, bea.recent_views, dict(bea.redemptions)) == (set(), ["p1"], {"o1": 3})
    assert set(behaviour) == {"dan", "bea"} and "ann" not in behaviour


def test_redemption_counts_stay_with_their_customer_whatever_order_they_come_in():
    items = np.array(["o1", "o2"], dtype=object)
    rows = INDEX.positions(pd.Series(["dan", "ann", "dan"]))  # not in the index's order
    empty = Lists(np.empty(0, np.int64), np.empty(0, np.int32), len(INDEX))
    behaviour = Behaviours(INDEX, items, empty, empty,
                           Lists(rows, np.array([0, 0, 1]), len(INDEX), np.array([3, 5, 7])))
    assert dict(behaviour["dan"].redemptions) == {"o1": 3, "o2": 7}
    assert dict(behaviour["ann"].redemptions) == {"o1": 5}

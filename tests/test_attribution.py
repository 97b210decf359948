"""Attribution and KPIs on a small fixed shop whose right answers are worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from features.contracts import CUSTOMERS, EVENTS, ITEMS
from features.exposures import exposure_rows
from features.validation import validate_table
from features.warehouse import Warehouse
from training.attribution import AttributionRule, attribute
from training.kpis import kpi_report

T0 = datetime(2024, 3, 4, 9, 0, tzinfo=UTC)  # a Monday
DAY = timedelta(days=1)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def exposure(exposure_id: str, customer: str, hours: float, items: list[tuple[str, str]],
             channel: str = "web", placement: str = "home", kind_of=None,
             exposure_type: str = "recommendation", status: str = "shown",
             rule: str | None = None) -> dict:
    kind_of = kind_of or (lambda item: "offer" if item.startswith("o") else "product")
    return {"exposure_id": exposure_id, "exposure_type": exposure_type, "customer_id": customer,
            "at": at(hours).timestamp(), "channel": channel, "placement": placement,
            "status": status, "rule": rule, "model_versions": {"recommender": "3"},
            "items": [(kind_of(i), i, s) for i, s in items], "context": None}


def event(event_id: str, customer: str, item: str, kind: str, hours: float, quantity: int = 1,
          price: float | None = None, recommendation_id: str | None = None,
          session: str | None = None) -> dict:
    return {"event_id": event_id, "customer_id": customer, "item_id": item, "event_type": kind,
            "timestamp": at(hours), "channel": "web", "session_id": session,
            "quantity": quantity, "price": price, "recommendation_id": recommendation_id,
            "decision_id": None, "context": None}


def build(tmp_path, exposures: list[dict], events: list[dict]) -> Warehouse:
    warehouse = Warehouse(tmp_path / "warehouse")
    items = pd.DataFrame({
        "item_id": ["p1", "p2", "p3", "p4", "o1"],
        "kind": ["product"] * 4 + ["offer"], "title": ["a", "b", "c", "d", "ten off"],
        "price": [10.0, 20.0, 5.0, 8.0, None], "offer_value": [None] * 4 + [10.0]})
    customers = pd.DataFrame({"customer_id": ["c1", "c2"], "first_seen": [T0 - DAY * 30] * 2,
                              "segment": ["loyal", "casual"]})
    for name, frame, contract in (("items", items, ITEMS), ("customers", customers, CUSTOMERS)):
        typed, report = validate_table(frame, contract, name)
        assert report.ok, report.describe()
        warehouse.upsert(name, typed)
    if events:
        typed, report = validate_table(pd.DataFrame(events), EVENTS, "events")
        assert report.ok, report.describe()
        warehouse.append_events(typed)
    warehouse.append_exposures(exposure_rows([(1, exposures)]), "test-log", 1)
    return warehouse


def credited(warehouse: Warehouse, rule: AttributionRule | None = None) -> pd.DataFrame:
    def read(connection) -> pd.DataFrame:
        attribute(connection, T0 - DAY, T0 + 30 * DAY, rule or AttributionRule())
        return connection.execute("SELECT * FROM attributed ORDER BY event_id").df()

    return warehouse.analyse(read).set_index("event_id")


def test_an_event_carrying_a_recommendation_id_is_credited_to_that_answer(tmp_path):
    warehouse = build(tmp_path, [exposure("r1", "c1", 0, [("p1", "for_you")])],
                      [event("e1", "c1", "p2", "click", 30, recommendation_id="r1")])
    row = credited(warehouse).loc["e1"]
    assert (row["exposure_id"], row["how"]) == ("r1", "direct")
    assert pd.isna(row["position"])  # p2 was not in the answer: credited, at no position


def test_an_untagged_click_within_the_window_is_credited_to_the_item_shown(tmp_path):
    warehouse = build(tmp_path, [exposure("r1", "c1", 0, [("p1", "for_you"), ("p2", "popular")])],
                      [event("e1", "c1", "p2", "click", 23.5)])
    row = credited(warehouse).loc["e1"]
    assert (row["exposure_id"], row["how"], row["position"], row["source"]) == (
        "r1", "window", 2, "popular")


def test_a_click_just_outside_the_click_window_is_not_credited(tmp_path):
    warehouse = build(tmp_path, [exposure("r1", "c1", 0, [("p1", "for_you")])],
                      [event("e1", "c1", "p1", "click", 24.01)])
    assert "e1" not in credited(warehouse).index


def test_a_purchase_within_the_purchase_window_is_credited_and_one_after_it_is_not(tmp_path):
    warehouse = build(tmp_path, [exposure("r1", "c1", 0, [("p1", "for_you")])],
                      [event("e1", "c1", "p1", "purchase", 24 * 7 - 1, quantity=2),
                       event("e2", "c1", "p1", "purchase", 24 * 7 + 1)])
    frame = credited(warehouse)
    assert frame.loc["e1", "revenue"] == 20.0  # 2 x the catalog price 10
    assert "e2" not in frame.index


def test_another_customers_purchase_of_the_item_shown_is_not_credited(tmp_path):
    warehouse = build(tmp_path, [exposure("r1", "c1", 0, [("p1", "for_you")])],
                      [event("e1", "c2", "p1", "purchase", 2),
                       event("e2", "c2", "p1", "click", 1, recommendation_id="r1")])
    assert credited(warehouse).empty  # not even with c1's id on it


def test_repeated_impressions_credit_the_last_touch_by_default_and_the_first_on_request(tmp_path):
    warehouse = build(tmp_path, [exposure("r1", "c1", 0, [("p1", "for_you")], placement="home"),
                                 exposure("r2", "c1", 5, [("p3", "new"), ("p1", "similar")],
                                          channel="app", placement="cart")],
                      [event("e1", "c1", "p1", "purchase", 6, price=9.0)])
    last = credited(warehouse).loc["e1"]
    assert (last["exposure_id"], last["channel"], last["placement"], last["position"],
            last["source"]) == ("r2", "app", "cart", 2, "similar")
    first = credited(warehouse, AttributionRule(touch="first_touch")).loc["e1"]
    assert (first["exposure_id"], first["position"]) == ("r1", 1)


def test_a_return_reverses_the_revenue_of_the_attributed_purchase(tmp_path):
    warehouse = build(tmp_path, [exposure("r1", "c1", 0, [("p2", "for_you")])],
                      [event("e1", "c1", "p2", "purchase", 1, quantity=3, price=18.0),
                       event("e2", "c1", "p2", "return", 50, quantity=1)])
    frame = credited(warehouse)
    assert frame.loc["e1", "revenue"] == 54.0
    assert (frame.loc["e2", "revenue"], frame.loc["e2", "exposure_id"]) == (-18.0, "r1")
    assert frame["revenue"].sum() == 36.0


@pytest.fixture
def small_shop(tmp_path) -> Warehouse:
    """Three answers and two messages to two customers over a week, and what they did."""
    exposures = [
        exposure("r1", "c1", 0, [("p1", "for_you"), ("p2", "popular"), ("o1", "expected_value")]),
        exposure("r2", "c2", 2, [("p1", "for_you"), ("p3", "new")], channel="app"),
        exposure("r3", "c1", 26, [("p4", "similar")], placement="cart"),
        exposure("m1", "c2", 3, [("o1", "offer")], channel="email", placement="cart_recovery",
                 exposure_type="message", status="sent"),
        exposure("m2", "c1", 4, [], channel="sms", placement="cart_recovery",
                 exposure_type="message", status="suppressed", rule="consent"),
    ]
    events = [
        event("e1", "c1", "p1", "click", 0.5, recommendation_id="r1"),
        event("e2", "c1", "p1", "add_to_cart", 0.6),
        event("e3", "c1", "p1", "purchase", 0.7, quantity=2, price=10.0, session="s1"),
        event("e4", "c2", "p3", "click", 2.5),
        event("e5", "c2", "p3", "purchase", 2.6, price=5.0, session="s2"),
        event("e6", "c2", "o1", "offer_redeemed", 3.5),
        event("e7", "c1", "p2", "purchase", 48, price=20.0, session="s3"),
        event("e8", "c2", "p4", "purchase", 5, price=8.0),  # never shown to c2
        event("e9", "c1", "p1", "return", 60),
    ]
    return build(tmp_path, exposures, events)


def report(warehouse: Warehouse, **options):
    start = datetime(2024, 3, 4, tzinfo=UTC)
    return kpi_report(warehouse, start, start + 7 * DAY, **options)


def test_kpis_by_channel_equal_the_hand_computed_values(small_shop):
    table = report(small_shop, by=("channel",), period="all").kpis.set_index("channel")
    web, app, email = table.loc["web"], table.loc["app"], table.loc["email"]
    assert (web["impressions"], web["exposures"], web["customers_reached"]) == (4, 2, 1)
    assert (web["clicks"], web["add_to_carts"], web["purchases"]) == (1, 1, 2)
    assert web["ctr"] == 0.25 and web["add_to_cart_rate"] == 0.25
    assert web["conversion_rate"] == 1.0
    assert web["attributed_revenue"] == 30.0  # 20 + 20, less the return of one p1 at 10
    assert web["revenue_share"] == pytest.approx(30 / 43)  # all revenue 20+5+20+8, less 10
    assert web["revenue_per_customer"] == 30.0 and web["average_order_value"] == 15.0
    assert web["offer_redemption_rate"] == 0.0
    assert web["catalog_coverage"] == pytest.approx(4 / 5)  # p1 p2 p4 o1 of 4 products, 1 offer
    assert web["popularity_bias"] == pytest.approx(0.25)  # p1 is the most popular product
    assert (app["impressions"], app["clicks"], app["purchases"], app["attributed_revenue"]) == (
        2, 1, 1, 5.0)
    assert app["catalog_coverage"] == 0.5 and app["popularity_bias"] == pytest.approx(5 / 6)
    assert email["offer_redemption_rate"] == 1.0 and email["ctr"] == 0.0


def test_the_funnel_counts_every_attributed_step(small_shop):
    funnel = report(small_shop).funnel.set_index("stage")
    assert funnel["count"].to_dict() == {"impression": 7, "click": 2, "add_to_cart": 1,
                                         "purchase": 3}
    assert funnel.loc["click", "rate_from_previous"] == pytest.approx(2 / 7)


def test_messages_count_decided_sent_suppressed_by_rule_and_converted(small_shop):
    result = report(small_shop, period="all")
    messages = result.messages.set_index("channel")
    assert messages.loc["email", ["decided", "sent", "suppressed", "converted"]].tolist() == [
        1, 1, 0, 1]  # c2 bought p4 two hours after the email
    assert messages.loc["sms", ["decided", "sent", "suppressed"]].tolist() == [1, 0, 1]
    assert result.suppressions.to_dict("records") == [{"rule": "consent", "suppressed": 1}]


def test_outcomes_count_on_the_day_of_the_exposure_that_earned_them(small_shop):
    table = report(small_shop, by=("placement",)).kpis
    home_monday = table[(table["placement"] == "home")].iloc[0]
    assert str(home_monday["period"]) == "2024-03-04"
    assert home_monday["attributed_revenue"] == 25.0 + 20.0 - 10.0  # e7 on Wednesday counts Monday


@pytest.mark.parametrize(("options", "message"), [
    ({"by": ("colour",)}, "cannot break KPIs down by 'colour': expected any of channel"),
    ({"period": "month"}, "period must be one of day, week, all, got 'month'"),
])
def test_a_wrong_report_request_names_the_value_and_what_would_do(small_shop, options, message):
    with pytest.raises(ValueError, match=message):
        report(small_shop, **options)


def test_weeks_start_on_monday_in_utc(small_shop):
    table = report(small_shop, period="week").kpis
    assert [str(p) for p in table["period"].unique()] == ["2024-03-04"]
    assert table["impressions"].sum() == 7

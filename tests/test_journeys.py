"""Journeys: the file format, and the engine against real models and a real online store —
entry, waits, branches, goals, holdout, priority between journeys, and each step exactly once."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, time, timedelta

import pytest
import yaml

from features.ingest import parse_events
from features.online.embedded import EmbeddedStore
from features.settings import Settings
from serving.engagement.journeys import (
    DEFAULT_JOURNEYS,
    JourneyPlan,
    JourneysError,
    from_trigger,
    load_journeys,
)
from serving.engagement.policy import Cap, CartAbandoned, CategoryBrowsing, ContactPolicy, QuietHours
from serving.engagement.scheduler import JourneyEngine
from serving.state import ServingState, build_state
from tests.conftest import copy_of_served, with_welcome_journey

NOON = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
OPEN_POLICY = ContactPolicy()
"""No quiet hours, no caps: each test adds the rule it is about."""


def plan(*journeys: dict) -> JourneyPlan:
    return JourneyPlan.model_validate({"journeys": list(journeys)})


CART_RECOVERY = {
    "name": "cart_recovery", "priority": 100,
    "entry": {"when": "cart_abandoned", "after_minutes": 30},
    "goal": {"event": "purchase"},
    "steps": [{"name": "push", "message": {"channel": "push", "send": "products", "items": 2}},
              {"wait": {"hours": 1}},
              {"name": "email", "message": {"channel": "email", "send": "offer", "items": 1}}]}


@pytest.fixture(scope="module")
def served(serving_dir) -> ServingState:
    """The registered models, with every offer open to anyone now."""
    state = build_state(Settings(data_dir=serving_dir))
    items = {i: (dataclasses.replace(item, valid_from=None, valid_to=None, segments=frozenset(),
                                     channels=frozenset()) if item.kind == "offer" else item)
             for i, item in state.shop.items.items()}
    return dataclasses.replace(state, shop=dataclasses.replace(state.shop, items=items))


def engine(served: ServingState, tmp_path, journeys: JourneyPlan,
           consents: frozenset[str] = frozenset({"push", "email"}),
           policy: ContactPolicy = OPEN_POLICY, store=None, **shop_changes) -> JourneyEngine:
    shop_changes.setdefault("timezones", {})  # the policy's zone unless a test sets one
    shop = dataclasses.replace(served.shop, consents={"shopper": consents}, **shop_changes)
    state = dataclasses.replace(served, shop=shop)
    store = store or EmbeddedStore(tmp_path / "online.db")
    return JourneyEngine(journeys, policy, store, lambda: state)


def products(served: ServingState, n: int) -> list[str]:
    return [i for i, item in served.shop.items.items() if item.kind == "product"][:n]


def send(journeys: JourneyEngine, kind: str, item: str, at: datetime,
         channel: str = "web") -> None:
    parsed = parse_events([{"event_id": uuid.uuid4().hex, "customer_id": "shopper",
                            "item_id": item, "event_type": kind, "timestamp": at.isoformat(),
                            "channel": channel}])
    assert not parsed.problems, parsed.problems
    journeys.store.ingest(parsed.events)


def statuses(outcomes) -> list[tuple[str, str, str | None]]:
    return [(o.journey, o.status, o.step) for o in outcomes]


# ---------------------------------------------------------------------------- the file
def test_the_shipped_journeys_load():
    shipped = load_journeys(DEFAULT_JOURNEYS)
    assert [j.name for j in shipped.journeys] == [
        "cart_recovery", "vip_early_access", "win_back", "post_purchase_cross_sell",
        "category_browsing"]
    assert shipped.journey("win_back").steps[2].branch[0].goto == "offer"


@pytest.mark.parametrize(("journey", "message"), [
    ({**CART_RECOVERY, "steps": [{"message": {"channel": "fax", "send": "offer"}}]},
     r"journeys.'cart_recovery'.steps\[1\].message.channel: channel must be one of email, sms, "
     r"push or best, or a list of email, sms, push; got 'fax'"),
    ({**CART_RECOVERY, "steps": [{"branch": [{"if": {"segment_in": ["vip"]}, "goto": "gone"}]}]},
     r"goto 'gone' names no step; the steps are step1"),
    ({**CART_RECOVERY, "steps": [{"wait": {"hours": 1, "until_local": "09:00"}}]},
     r"steps\[1\].wait: a wait is one of: .* this one has a duration and until_local"),
    ({**CART_RECOVERY, "entry": {"when": "event"}},
     r"journeys.'cart_recovery'.entry: when: event needs 'event'"),
    ({**CART_RECOVERY, "steps": [{"wait": {"hours": 1}, "exit": True}]},
     r"a step is exactly one of wait, branch, message, update, exit; this one has wait, exit"),
])
def test_a_wrong_file_names_the_file_the_journey_the_step_and_the_field(tmp_path, journey,
                                                                         message):
    path = tmp_path / "journeys.yaml"
    path.write_text(yaml.safe_dump({"journeys": [journey]}))
    with pytest.raises(JourneysError, match=message) as caught:
        load_journeys(path)
    assert str(path) in str(caught.value)


# ---------------------------------------------------------------------------- the engine
def test_an_abandoned_cart_enters_sends_waits_and_sends_again(served, tmp_path):
    journeys = engine(served, tmp_path, plan(CART_RECOVERY))
    send(journeys, "add_to_cart", products(served, 1)[0], NOON)
    assert journeys.tick(NOON + timedelta(minutes=29)) == []
    first = journeys.tick(NOON + timedelta(minutes=31))
    assert statuses(first) == [("cart_recovery", "entered", None),
                               ("cart_recovery", "sent", "push")]
    assert first[1].decision["channel"] == "push" and len(first[1].decision["items"]) == 2
    assert journeys.tick(NOON + timedelta(minutes=50)) == []  # waiting the hour
    second = journeys.tick(NOON + timedelta(minutes=92))
    assert statuses(second) == [("cart_recovery", "sent", "email"),
                                ("cart_recovery", "finished", None)]
    assert [d["step"] for _, d in journeys.store.outbox()] == ["push", "email"]


def test_a_purchase_ends_the_journey_as_converted_before_its_next_message(served, tmp_path):
    journeys = engine(served, tmp_path, plan(CART_RECOVERY))
    item = products(served, 1)[0]
    send(journeys, "add_to_cart", item, NOON)
    journeys.tick(NOON + timedelta(minutes=31))
    send(journeys, "purchase", item, NOON + timedelta(minutes=40))
    assert statuses(journeys.tick(NOON + timedelta(minutes=41))) == [
        ("cart_recovery", "converted", None)]
    assert journeys.tick(NOON + timedelta(minutes=95)) == []
    assert len(journeys.store.outbox()) == 1


def test_two_schedulers_execute_each_step_once(served, tmp_path):
    first = engine(served, tmp_path, plan(CART_RECOVERY))
    second = engine(served, tmp_path, plan(CART_RECOVERY), store=EmbeddedStore(
        tmp_path / "online.db"))  # another process on the same store
    send(first, "add_to_cart", products(served, 1)[0], NOON)
    later = NOON + timedelta(minutes=31)
    sent = [o for o in first.tick(later) + second.tick(later) if o.status == "sent"]
    assert len(sent) == 1 and len(first.store.outbox()) == 1


def test_a_step_the_commit_did_not_keep_runs_again_and_only_once(served, tmp_path):
    """A scheduler that dies between deciding and committing leaves the run where it was."""
    journeys = engine(served, tmp_path, plan(CART_RECOVERY))
    send(journeys, "add_to_cart", products(served, 1)[0], NOON)
    later = NOON + timedelta(minutes=31)
    real_commit = journeys.store.commit_many

    def crash(customers, change):
        for customer in customers:  # decided, then killed before the commit
            change(journeys.store.customer(customer))
        raise KeyboardInterrupt

    journeys.store.commit_many = crash
    with pytest.raises(KeyboardInterrupt):
        journeys.tick(later)
    journeys.store.commit_many = real_commit
    assert journeys.store.outbox() == []
    assert [o.status for o in journeys.tick(later)] == ["entered", "sent"]
    assert journeys.tick(later) == [] and len(journeys.store.outbox()) == 1


def test_the_holdout_enters_and_is_counted_but_gets_no_message(served, tmp_path):
    journeys = engine(served, tmp_path, plan({**CART_RECOVERY, "holdout": 0.9999}))
    send(journeys, "add_to_cart", products(served, 1)[0], NOON)
    outcomes = journeys.tick(NOON + timedelta(minutes=31))
    assert statuses(outcomes) == [("cart_recovery", "entered", None),
                                  ("cart_recovery", "suppressed", "push")]
    assert outcomes[1].detail.startswith("holdout")
    assert journeys.store.outbox() == []


def test_the_higher_priority_journey_takes_the_slot_and_the_other_is_suppressed(served,
                                                                                 tmp_path):
    browsing = {"name": "browsing", "priority": 1,
                "entry": {"when": "event", "event": "add_to_cart"}, "goal": None,
                "steps": [{"name": "tip", "message": {"channel": "email", "send": "content"}}]}
    journeys = engine(served, tmp_path, plan(browsing, CART_RECOVERY))
    send(journeys, "add_to_cart", products(served, 1)[0], NOON)
    outcomes = journeys.tick(NOON + timedelta(minutes=31))
    assert ("cart_recovery", "sent", "push") in statuses(outcomes)
    [lost] = [o for o in outcomes if o.journey == "browsing" and o.status == "suppressed"]
    assert lost.detail == "priority: cart_recovery holds this customer's message slot"


def test_a_branch_on_an_event_since_entry_and_an_update_step(served, tmp_path):
    looked = {"name": "looked", "entry": {"when": "event", "event": "add_to_cart"},
              "goal": None,
              "steps": [{"wait": {"days": 1}},
                        {"branch": [{"if": {"event_since_entry": "view"}, "goto": "keen"}]},
                        {"exit": True},
                        {"name": "keen", "update": {"keen": "yes"}}]}
    journeys = engine(served, tmp_path, plan(looked))
    item = products(served, 1)[0]
    send(journeys, "add_to_cart", item, NOON)
    journeys.tick(NOON + timedelta(minutes=1))
    send(journeys, "view", item, NOON + timedelta(hours=2))
    journeys.tick(NOON + timedelta(hours=2, minutes=1))  # the view makes it due; still waiting
    assert statuses(journeys.tick(NOON + timedelta(days=1, minutes=2))) == [
        ("looked", "finished", None)]
    assert journeys.store.customer("shopper").attributes == {"keen": "yes"}


def test_quiet_hours_postpone_a_message_and_consent_suppresses_it(served, tmp_path):
    quiet = ContactPolicy(quiet_hours=QuietHours(start=time(21), end=time(8), timezone="UTC"))
    journeys = engine(served, tmp_path, plan(CART_RECOVERY), policy=quiet)
    late = NOON.replace(hour=21, minute=10)
    send(journeys, "add_to_cart", products(served, 1)[0], late)
    outcomes = journeys.tick(late + timedelta(minutes=31))
    assert statuses(outcomes)[-1] == ("cart_recovery", "waiting", "push")
    morning = late.replace(hour=8, minute=5) + timedelta(days=1)
    assert ("cart_recovery", "sent", "push") in statuses(journeys.tick(morning))
    unconsented = engine(served, tmp_path / "other", plan(CART_RECOVERY),
                         consents=frozenset())
    send(unconsented, "add_to_cart", products(served, 1)[0], NOON)
    [_, stopped] = unconsented.tick(NOON + timedelta(minutes=31))
    assert stopped.status == "suppressed" and stopped.detail.startswith("consent")


def test_best_channel_is_where_the_customer_last_reacted(served, tmp_path):
    best = {**CART_RECOVERY, "steps": [
        {"name": "nudge", "message": {"channel": "best", "send": "products"}}]}
    journeys = engine(served, tmp_path, plan(best))
    item = products(served, 1)[0]
    send(journeys, "click", item, NOON - timedelta(days=2), channel="email")
    send(journeys, "add_to_cart", item, NOON)
    sent = [o for o in journeys.tick(NOON + timedelta(minutes=31)) if o.status == "sent"]
    assert sent[0].decision["channel"] == "email"


def test_a_lapsing_customer_enters_once_per_lapse(served, tmp_path):
    win_back = {"name": "win_back", "entry": {"when": "lapsing", "days_without_purchase": 30},
                "steps": [{"name": "hello", "message": {"channel": "email",
                                                         "send": "products"}}]}
    bought = (NOON - timedelta(days=40)).timestamp()
    journeys = engine(served, tmp_path, plan(win_back), last_purchase={"shopper": bought})
    assert statuses(journeys.tick(NOON)) == [("win_back", "entered", None),
                                             ("win_back", "sent", "hello"),
                                             ("win_back", "finished", None)]
    assert journeys.tick(NOON + timedelta(days=9)) == []  # re-entry needs a new lapse


def test_the_due_index_finds_exactly_the_customers_with_something_to_do(tmp_path):
    store = EmbeddedStore(tmp_path / "online.db")
    parsed = parse_events([{"event_id": "e1", "customer_id": "a", "item_id": "p1",
                            "event_type": "view", "timestamp": NOON.isoformat(),
                            "channel": "web"}])
    store.ingest(parsed.events)
    assert store.due_journeys(NOON.timestamp()) == ["a"]
    assert store.due_journeys(NOON.timestamp() - 1) == []


def test_journeys_show_prints_each_journey_step_by_step(tmp_path):
    from tests.test_cli import run

    shown = run("journeys", "show", "--data-dir", str(tmp_path))
    assert shown.exit_code == 0, shown.output
    assert "cart_recovery (priority 100, 10% held out)" in shown.output
    assert "3. looked: if event_since_entry view go to offer; else the next step" in shown.output


def test_journeys_show_refuses_a_wrong_file_with_its_problems(tmp_path):
    from tests.test_cli import run

    (tmp_path / "journeys.yaml").write_text(yaml.safe_dump({"journeys": [
        {**CART_RECOVERY, "priority": "high"}]}))
    shown = run("journeys", "show", "--data-dir", str(tmp_path))
    assert shown.exit_code == 2
    assert "journeys.'cart_recovery'.priority: Input should be a valid integer" in shown.output


# ---------------------------------------------------------------------------- trigger rules
CART = CartAbandoned(name="cart", when="cart_abandoned", after_minutes=30, action="offer",
                     channels=["push", "email"], expires_after_hours=24, cooldown_hours=72)
BROWSING = CategoryBrowsing(name="browsing", when="category_browsing", views=3, within_days=7,
                            action="content", channels=["email"])
CAPPED = ContactPolicy(quiet_hours=QuietHours(start=time(21), end=time(8), timezone="UTC"),
                       caps={"email": Cap(max=2, per_days=7)}, cross_channel_memory_hours=72)
TRIGGERS = JourneyPlan(journeys=[from_trigger(CART), from_trigger(BROWSING)])


def sent(outcomes) -> list:
    return [o for o in outcomes if o.status == "sent"]


def suppressed(outcomes) -> list:
    return [o for o in outcomes if o.status == "suppressed"]


def test_a_trigger_rule_is_a_one_step_journey_that_sends_once_per_cooldown(served, tmp_path):
    journeys = engine(served, tmp_path, TRIGGERS, policy=CAPPED)
    send(journeys, "add_to_cart", products(served, 1)[0], NOON)
    [outcome] = sent(journeys.tick(NOON + timedelta(minutes=31)))
    decision = outcome.decision
    assert decision["channel"] == "push" and decision["action"] == "offer" and decision["items"]
    assert "cart of 1 item(s)" in decision["reason"]
    send(journeys, "add_to_cart", products(served, 2)[1], NOON + timedelta(hours=2))
    assert sent(journeys.tick(NOON + timedelta(hours=3))) == []  # within the 72 h cooldown
    assert len(journeys.store.outbox()) == 1


def test_a_cart_bought_since_enters_no_one(served, tmp_path):
    journeys = engine(served, tmp_path, TRIGGERS)
    a, b = products(served, 2)
    send(journeys, "add_to_cart", a, NOON)
    send(journeys, "add_to_cart", b, NOON + timedelta(minutes=1))
    send(journeys, "purchase", a, NOON + timedelta(minutes=5))
    assert journeys.tick(NOON + timedelta(hours=1)) == []


def test_the_first_channel_of_the_list_the_customer_consented_to_is_used(served, tmp_path):
    journeys = engine(served, tmp_path, TRIGGERS, consents=frozenset({"email"}))
    send(journeys, "add_to_cart", products(served, 1)[0], NOON)
    [outcome] = sent(journeys.tick(NOON + timedelta(minutes=31)))
    assert outcome.decision["channel"] == "email"


def test_without_any_consent_the_message_is_suppressed_by_the_consent_rule(served, tmp_path):
    journeys = engine(served, tmp_path, TRIGGERS, consents=frozenset())
    send(journeys, "add_to_cart", products(served, 1)[0], NOON)
    [outcome] = suppressed(journeys.tick(NOON + timedelta(minutes=31)))
    assert "no consent for push" in outcome.detail
    assert journeys.store.outbox() == []


def test_a_reached_cap_stops_the_message(served, tmp_path):
    journeys = engine(served, tmp_path, TRIGGERS, consents=frozenset({"email"}), policy=CAPPED)
    for day in (1, 2):  # two emails this week already, the cap
        journeys.store.record_decision(
            {"firing_key": f"earlier:{day}", "customer_id": "shopper", "trigger": "earlier",
             "channel": "email", "items": []}, (NOON - timedelta(days=day)).timestamp())
    send(journeys, "add_to_cart", products(served, 1)[0], NOON)
    [outcome] = suppressed(journeys.tick(NOON + timedelta(minutes=31)))
    assert "cap reached" in outcome.detail


def test_a_stale_cart_is_not_chased(served, tmp_path):
    journeys = engine(served, tmp_path, TRIGGERS)
    send(journeys, "add_to_cart", products(served, 1)[0], NOON)
    assert journeys.tick(NOON + timedelta(days=2)) == []
    assert journeys.store.outbox() == []


def test_an_offer_just_shown_in_the_app_is_not_pushed_again(served, tmp_path):
    journeys = engine(served, tmp_path, TRIGGERS)
    send(journeys, "add_to_cart", products(served, 1)[0], NOON)
    [first] = sent(journeys.tick(NOON + timedelta(minutes=31)))
    shown = first.decision["items"][0]["item_id"]

    again = engine(served, tmp_path / "again", TRIGGERS)
    send(again, "offer_shown", shown, NOON, channel="app")
    send(again, "add_to_cart", products(served, 1)[0], NOON)
    [outcome] = sent(again.tick(NOON + timedelta(minutes=31)))
    assert shown not in [item["item_id"] for item in outcome.decision["items"]]


def test_browsing_one_category_without_buying_sends_content_about_it(served, tmp_path):
    journeys = engine(served, tmp_path, TRIGGERS)
    by_top: dict[str, list[str]] = {}
    for item_id, item in served.shop.items.items():
        if item.kind == "product" and item.top in served.shop.content_by_top:
            by_top.setdefault(item.top, []).append(item_id)
    top, items = next((t, i) for t, i in by_top.items() if len(i) >= 3)
    for minutes, item in enumerate(items[:2]):
        send(journeys, "view", item, NOON + timedelta(minutes=minutes))
    assert sent(journeys.tick(NOON + timedelta(minutes=5))) == []
    send(journeys, "view", items[2], NOON + timedelta(minutes=6))
    [outcome] = sent(journeys.tick(NOON + timedelta(minutes=7)))
    assert outcome.decision["channel"] == "email" and outcome.decision["action"] == "content"
    assert all(served.shop.items[i["item_id"]].top == top for i in outcome.decision["items"])


def test_the_experiments_holdout_gets_no_journey_message(served, tmp_path):
    from features.experiments import ExperimentPlan, assign

    everyone_held = ExperimentPlan.model_validate({"holdout": {"share": 0.9999}})
    journeys = engine(served, tmp_path, TRIGGERS)
    journeys.assignment = lambda customer, now: assign(everyone_held, customer, now)
    send(journeys, "add_to_cart", products(served, 1)[0], NOON)
    [outcome] = suppressed(journeys.tick(NOON + timedelta(minutes=31)))
    assert outcome.detail.startswith("holdout: the customer is in the holdout")
    assert journeys.store.outbox() == []


def test_the_shipped_journeys_send_something_on_the_built_in_shop(serving_dir, tmp_path):
    """Cart recovery as shipped, on the synthetic shop as generated (no offer opened up): some
    consenting customer with an abandoned cart gets a message."""
    from serving.engagement.policy import DEFAULT_POLICY, load_policy

    state = build_state(Settings(data_dir=serving_dir))
    shipped = JourneyPlan(journeys=[load_journeys(DEFAULT_JOURNEYS).journey("cart_recovery")])
    noon = state.shop.as_of.normalize().to_pydatetime() - timedelta(days=3) + timedelta(hours=12)
    costly = sorted((i for i in state.shop.items.values() if i.kind == "product" and i.price),
                    key=lambda i: -i.price)[:3]
    store = EmbeddedStore(tmp_path / "online.db")
    journeys = JourneyEngine(shipped, load_policy(DEFAULT_POLICY), store, lambda: state)
    for customer in [c for c, channels in state.shop.consents.items() if "push" in channels][:40]:
        for item in costly:
            parsed = parse_events([{"event_id": uuid.uuid4().hex, "customer_id": customer,
                                    "item_id": item.item_id, "event_type": "add_to_cart",
                                    "timestamp": noon.isoformat(), "channel": "web"}])
            store.ingest(parsed.events)
    outcomes = journeys.tick(noon + timedelta(hours=1))
    assert sent(outcomes), {o.detail for o in outcomes}
    assert all(o.decision["items"] and o.decision["channel"] == "push" for o in sent(outcomes))


# ---------------------------------------------------------------------------- adaptive contact
QUIET_LONDON = ContactPolicy(quiet_hours=QuietHours(start=time(21), end=time(8),
                                                    timezone="Europe/London"))


def test_quiet_hours_follow_the_customers_own_time_zone(served, tmp_path):
    """07:30 UTC in March is 07:30 in London (quiet) but 08:30 in Warsaw (not)."""
    morning = NOON.replace(hour=7, minute=0)
    for zone, expected in (("Europe/London", "waiting"), ("Europe/Warsaw", "sent")):
        journeys = engine(served, tmp_path / zone.replace("/", "_"), plan(CART_RECOVERY),
                          policy=QUIET_LONDON, timezones={"shopper": zone})
        send(journeys, "add_to_cart", products(served, 1)[0], morning - timedelta(minutes=31))
        outcomes = journeys.tick(morning + timedelta(minutes=30))
        assert outcomes[1].status == expected, (zone, outcomes)
        if expected == "waiting":
            assert "Europe/London" in outcomes[1].detail


def test_a_local_time_wait_waits_for_the_customers_clock(served, tmp_path):
    ten = {**CART_RECOVERY, "entry": {"when": "event", "event": "add_to_cart"},
           "steps": [{"wait": {"until_local": "10:00"}},
                     {"name": "hello", "message": {"channel": "email", "send": "products"}}]}
    journeys = engine(served, tmp_path, plan(ten), timezones={"shopper": "America/New_York"})
    send(journeys, "add_to_cart", products(served, 1)[0], NOON)
    journeys.tick(NOON + timedelta(minutes=1))  # 07:01 in New York (EST, UTC-5)
    assert sent(journeys.tick(NOON + timedelta(hours=2, minutes=59))) == []  # 09:59 there
    assert sent(journeys.tick(NOON + timedelta(hours=3, minutes=1)))  # 10:01 there


def test_fatigue_rests_a_channel_the_customer_ignores_and_a_reaction_restores_it(served,
                                                                                tmp_path):
    from serving.engagement.policy import Fatigue

    tired = ContactPolicy(fatigue=Fatigue(after_unanswered=2, rest_days=14))
    weekly = {"name": "weekly", "entry": {"when": "event", "event": "view"}, "goal": None,
              "reentry": {"after_days": 0},
              "steps": [{"name": "news", "message": {"channel": "email", "send": "products"}}]}
    journeys = engine(served, tmp_path, plan(weekly), policy=tired)
    item = products(served, 1)[0]
    outcomes = []
    for day in range(3):  # a view a day, each entering the journey again; no reaction
        moment = NOON + timedelta(days=day)
        send(journeys, "view", item, moment)
        outcomes += journeys.tick(moment + timedelta(minutes=1))
    assert [o.status for o in outcomes if o.step == "news"] == ["sent", "sent", "suppressed"]
    assert "fatigue: 2 email message(s) in a row" in outcomes[-2].detail
    send(journeys, "click", item, NOON + timedelta(days=3), channel="email")  # a reaction
    send(journeys, "view", item, NOON + timedelta(days=3, minutes=1))
    assert sent(journeys.tick(NOON + timedelta(days=3, minutes=2)))


def test_best_channel_falls_back_to_the_segments_most_engaged_channel(served, tmp_path):
    best = {**CART_RECOVERY, "steps": [
        {"name": "nudge", "message": {"channel": "best", "send": "products"}}]}
    journeys = engine(served, tmp_path, plan(best), consents=frozenset({"email", "push"}),
                      segments={"shopper": "loyal"},
                      segment_channels={"loyal": ("push", "email")})
    send(journeys, "add_to_cart", products(served, 1)[0], NOON)
    [outcome] = sent(journeys.tick(NOON + timedelta(minutes=31)))
    assert outcome.decision["channel"] == "push"  # no reaction of their own yet


def test_a_cart_message_sends_the_products_in_the_cart_latest_first(served, tmp_path):
    reminder = {**CART_RECOVERY, "steps": [
        {"name": "yours", "message": {"channel": "push", "send": "cart", "items": 3}}]}
    journeys = engine(served, tmp_path, plan(reminder))
    first, second = products(served, 2)
    send(journeys, "add_to_cart", first, NOON)
    send(journeys, "add_to_cart", second, NOON + timedelta(minutes=1))
    [outcome] = sent(journeys.tick(NOON + timedelta(minutes=32)))
    assert [i["item_id"] for i in outcome.decision["items"]] == [second, first]
    assert {i["source"] for i in outcome.decision["items"]} == {"cart"}


# ---------------------------------------------------------------------------- the scheduler process
@pytest.mark.slow
def test_kill_9_of_the_scheduler_loses_no_step_and_repeats_none(serving_dir, tmp_path):
    """600 customers enter at once; the scheduler process is killed with SIGKILL after its
    first batch lands, then started again: every customer gets their message exactly once."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    data = with_welcome_journey(copy_of_served(serving_dir, tmp_path / "data"))
    store = EmbeddedStore(data / "online.db")
    customers = [f"k{i:04d}" for i in range(600)]
    now = datetime.now(UTC)
    item = next(i for i, kind in zip(*served_items(data), strict=True) if kind == "product")
    for customer in customers:
        store.record_consent(customer, "email", True, now.timestamp() - 60)
    store.ingest(parse_events([{"event_id": uuid.uuid4().hex, "customer_id": c, "item_id": item,
                                "event_type": "add_to_cart", "timestamp": now.isoformat(),
                                "channel": "web"} for c in customers]).events)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "NEXTBEST_DATA_DIR": str(data)}

    def scheduler() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "serving.cli", "worker",
                                 "--interval", "0.05"], cwd=root, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    first = scheduler()
    deadline = time.monotonic() + 120
    while not store.outbox() and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    landed = len(store.outbox(limit=10_000))
    assert 0 < landed < len(customers), "the kill should land between batches"
    second = scheduler()
    try:
        while len(store.outbox(limit=10_000)) < len(customers) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # a duplicate, if any, would come now
    finally:
        second.terminate()
        second.wait(timeout=30)
    decisions = [d for _, d in store.outbox(limit=10_000)]
    assert sorted(d["customer_id"] for d in decisions) == customers
    assert all(store.customer(c).journeys["welcome"]["status"] == "finished" for c in customers)


def served_items(data) -> tuple[list[str], list[str]]:
    from features.warehouse import Warehouse

    items = Warehouse(data / "warehouse").items()
    return items["item_id"].tolist(), items["kind"].tolist()


def test_idle_carts_are_swept_once_a_minute_not_on_every_pass(served, tmp_path):
    journeys = engine(served, tmp_path, plan(CART_RECOVERY))
    send(journeys, "add_to_cart", products(served, 1)[0], NOON)

    def looked_at(state):  # the add's own check is done: only the sweep finds the idle cart
        state.journey_check = None
        return []

    journeys.store.commit("shopper", looked_at)
    assert journeys.tick(NOON + timedelta(minutes=29, seconds=50)) == []  # swept: not idle yet
    assert journeys.tick(NOON + timedelta(minutes=30, seconds=30)) == []  # idle, not swept
    assert statuses(journeys.tick(NOON + timedelta(minutes=31)))[0] == (
        "cart_recovery", "entered", None)

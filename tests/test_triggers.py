"""Behavioural triggers against real models and a real online store: cart abandonment and
category browsing, under consent, quiet hours, caps and cross-channel memory."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, time, timedelta

import pytest

from features.ingest import parse_events
from features.online.embedded import EmbeddedStore
from features.policy import Cap, CartAbandoned, CategoryBrowsing, ContactPolicy, QuietHours
from features.settings import Settings
from serving.pipeline import ServingState
from serving.service import build_state
from serving.triggers import TriggerEngine

NOON = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
CART = CartAbandoned(name="cart", when="cart_abandoned", after_minutes=30, action="offer",
                     channels=["push", "email"], expires_after_hours=24, cooldown_hours=72)
BROWSING = CategoryBrowsing(name="browsing", when="category_browsing", views=3, within_days=7,
                            action="content", channels=["email"])
POLICY = ContactPolicy(quiet_hours=QuietHours(start=time(21), end=time(8), timezone="UTC"),
                       caps={"email": Cap(max=2, per_days=7)}, cross_channel_memory_hours=72,
                       triggers=[CART, BROWSING])


@pytest.fixture(scope="module")
def served(serving_dir) -> ServingState:
    """The registered models, with every offer open to anyone now, and consents set per test."""
    state = build_state(Settings(data_dir=serving_dir))
    items = {i: (dataclasses.replace(item, valid_from=None, valid_to=None, segments=frozenset(),
                                     channels=frozenset(), min_basket=0.0)
                 if item.kind == "offer" else item) for i, item in state.shop.items.items()}
    return dataclasses.replace(state, shop=dataclasses.replace(state.shop, items=items))


def engine(served: ServingState, tmp_path, consents: frozenset[str] = frozenset({"push", "email"}),
           policy: ContactPolicy = POLICY) -> TriggerEngine:
    shop = dataclasses.replace(served.shop, consents={"shopper": consents})
    state = dataclasses.replace(served, shop=shop)
    return TriggerEngine(policy, EmbeddedStore(tmp_path / "online.db"), lambda: state)


def products(served: ServingState, n: int) -> list[str]:
    return [i for i, item in served.shop.items.items() if item.kind == "product"][:n]


def send(triggers: TriggerEngine, kind: str, item: str, at: datetime, channel: str = "web") -> None:
    parsed = parse_events([{"event_id": uuid.uuid4().hex, "customer_id": "shopper",
                            "item_id": item, "event_type": kind, "timestamp": at.isoformat(),
                            "channel": channel}])
    assert not parsed.problems
    triggers.store.ingest(parsed.events)


def fired(outcomes) -> list:
    return [o for o in outcomes if o.status == "fired"]


def test_an_abandoned_cart_fires_once_after_its_delay(served, tmp_path):
    triggers = engine(served, tmp_path)
    send(triggers, "add_to_cart", products(served, 1)[0], NOON)
    assert triggers.tick(NOON + timedelta(minutes=29)) == []
    first = triggers.tick(NOON + timedelta(minutes=31))
    assert [o.status for o in first] == ["fired"]
    decision = first[0].decision
    assert decision["channel"] == "push" and decision["action"] == "offer" and decision["items"]
    assert "cart of 1 item(s)" in decision["reason"]
    assert [o.status for o in triggers.tick(NOON + timedelta(minutes=40))] == ["already_fired"]
    assert len(triggers.store.outbox()) == 1


def test_two_evaluators_of_one_firing_write_one_decision(served, tmp_path):
    first, second = engine(served, tmp_path), engine(served, tmp_path)  # e.g. two workers
    send(first, "add_to_cart", products(served, 1)[0], NOON)
    later = NOON + timedelta(minutes=31)
    statuses = sorted(o.status for o in first.tick(later) + second.tick(later))
    assert statuses == ["already_fired", "fired"]
    assert len(first.store.outbox()) == 1


def test_a_cart_bought_since_does_not_fire(served, tmp_path):
    triggers = engine(served, tmp_path)
    a, b = products(served, 2)
    send(triggers, "add_to_cart", a, NOON)
    send(triggers, "add_to_cart", b, NOON + timedelta(minutes=1))
    send(triggers, "purchase", a, NOON + timedelta(minutes=5))
    assert triggers.tick(NOON + timedelta(hours=1)) == []


def test_it_uses_the_first_channel_the_customer_consented_to(served, tmp_path):
    triggers = engine(served, tmp_path, consents=frozenset({"email"}))
    send(triggers, "add_to_cart", products(served, 1)[0], NOON)
    [outcome] = triggers.tick(NOON + timedelta(minutes=31))
    assert outcome.decision["channel"] == "email"


def test_without_any_consent_nothing_is_sent(served, tmp_path):
    triggers = engine(served, tmp_path, consents=frozenset())
    send(triggers, "add_to_cart", products(served, 1)[0], NOON)
    [outcome] = triggers.tick(NOON + timedelta(minutes=31))
    assert outcome.status == "suppressed" and "no consent for push" in outcome.detail
    assert triggers.store.outbox() == []


def test_quiet_hours_delay_the_message_until_they_end(served, tmp_path):
    triggers = engine(served, tmp_path)
    evening = NOON.replace(hour=20, minute=50)
    send(triggers, "add_to_cart", products(served, 1)[0], evening)
    [waiting] = triggers.tick(evening + timedelta(minutes=31))  # 21:21, quiet
    assert waiting.status == "waiting" and triggers.store.outbox() == []
    [outcome] = triggers.tick(evening.replace(hour=8, minute=5) + timedelta(days=1))
    assert outcome.status == "fired"


def test_a_reached_cap_stops_the_message(served, tmp_path):
    triggers = engine(served, tmp_path, consents=frozenset({"email"}))
    for day in (1, 2):  # two emails this week already, the cap
        triggers.store.record_decision(
            {"firing_key": f"earlier:{day}", "customer_id": "shopper", "trigger": "earlier",
             "channel": "email", "items": []}, (NOON - timedelta(days=day)).timestamp())
    send(triggers, "add_to_cart", products(served, 1)[0], NOON)
    [outcome] = triggers.tick(NOON + timedelta(minutes=31))
    assert outcome.status == "suppressed" and "cap reached" in outcome.detail


def test_a_stale_cart_is_not_chased(served, tmp_path):
    triggers = engine(served, tmp_path)
    send(triggers, "add_to_cart", products(served, 1)[0], NOON)
    [outcome] = triggers.tick(NOON + timedelta(days=2))
    assert outcome.status == "expired" and triggers.store.outbox() == []


def test_an_offer_just_shown_in_the_app_is_not_pushed_again(served, tmp_path):
    triggers = engine(served, tmp_path)
    send(triggers, "add_to_cart", products(served, 1)[0], NOON)
    first_choice = triggers.evaluate(CART, "shopper", NOON + timedelta(minutes=31)).decision
    shown = first_choice["items"][0]["item_id"]

    triggers = engine(served, tmp_path / "again")
    send(triggers, "offer_shown", shown, NOON, channel="app")
    send(triggers, "add_to_cart", products(served, 1)[0], NOON)
    [outcome] = triggers.tick(NOON + timedelta(minutes=31))
    assert shown not in [item["item_id"] for item in outcome.decision["items"]]


def test_browsing_one_category_without_buying_sends_content_about_it(served, tmp_path):
    triggers = engine(served, tmp_path)
    by_top: dict[str, list[str]] = {}
    for item_id, item in served.shop.items.items():
        if item.kind == "product" and item.top in served.shop.content_by_top:
            by_top.setdefault(item.top, []).append(item_id)
    top, items = next((t, i) for t, i in by_top.items() if len(i) >= 3)
    for minutes, item in enumerate(items[:2]):
        send(triggers, "view", item, NOON + timedelta(minutes=minutes))
    assert fired(triggers.on_events(["shopper"], NOON + timedelta(minutes=5))) == []
    send(triggers, "view", items[2], NOON + timedelta(minutes=6))
    [outcome] = fired(triggers.on_events(["shopper"], NOON + timedelta(minutes=7)))
    assert outcome.decision["channel"] == "email" and outcome.decision["action"] == "content"
    assert all(served.shop.items[i["item_id"]].top == top for i in outcome.decision["items"])


def test_the_shipped_policy_sends_something_on_the_built_in_shop(serving_dir, tmp_path):
    """The default policy's cart-abandonment offer, on the synthetic shop as generated (no offer
    opened up): some consenting customer with an abandoned cart gets a message."""
    from features.policy import DEFAULT_POLICY, load_policy

    state = build_state(Settings(data_dir=serving_dir))
    policy = load_policy(DEFAULT_POLICY)
    rule = next(r for r in policy.triggers if isinstance(r, CartAbandoned))
    noon = state.shop.as_of.normalize().to_pydatetime() - timedelta(days=3) + timedelta(hours=12)
    costly = sorted((i for i in state.shop.items.values() if i.kind == "product" and i.price),
                    key=lambda i: -i.price)[:3]
    store = EmbeddedStore(tmp_path / "online.db")
    triggers = TriggerEngine(policy, store, lambda: state)
    outcomes = []
    for customer in [c for c, channels in state.shop.consents.items()
                     if channels & set(c.value for c in rule.channels)][:40]:
        for item in costly:
            parsed = parse_events([{"event_id": uuid.uuid4().hex, "customer_id": customer,
                                    "item_id": item.item_id, "event_type": "add_to_cart",
                                    "timestamp": noon.isoformat(), "channel": "web"}])
            store.ingest(parsed.events)
        outcomes.append(triggers.evaluate(rule, customer, noon + timedelta(hours=1)))
    sent = fired(outcomes)
    assert sent, {o.detail for o in outcomes}
    assert all(o.decision["items"] and o.decision["channel"] in ("push", "email", "sms")
               for o in sent)

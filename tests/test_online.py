"""The online store contract: every backend passes the same suite (embedded SQLite, real Redis)."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.ingest import parse_events
from features.online.embedded import EmbeddedStore
from features.online.redis_store import RedisStore
from features.online.state import CustomerState
from features.online.store import OnlineStore
from features.warehouse import Warehouse
from tests.conftest import require_service

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def event(kind: str, item: str = "p1", customer: str = "c1", minutes: float = 0,
          channel: str = "web", event_id: str | None = None) -> dict:
    return {"event_id": event_id or uuid.uuid4().hex, "customer_id": customer, "item_id": item,
            "event_type": kind, "timestamp": (T0 + timedelta(minutes=minutes)).isoformat(),
            "channel": channel}


def valid(*raw: dict) -> list[dict]:
    parsed = parse_events(list(raw))
    assert not parsed.problems, parsed.problems
    return parsed.events


@pytest.fixture(params=["embedded", "redis"])
def store(request, tmp_path) -> OnlineStore:
    if request.param == "embedded":
        backend = EmbeddedStore(tmp_path / "online.db")
        yield backend
    else:
        require_service("Redis", "127.0.0.1", 6379)
        backend = RedisStore("redis://127.0.0.1:6379/0", prefix=f"nextbest-test-{uuid.uuid4().hex}:")
        yield backend
        backend.clear()
    backend.close()


def test_a_resent_event_is_counted_once(store):
    batch = valid(event("view"), event("add_to_cart", minutes=1))
    assert store.ingest(batch).accepted == 2
    again = store.ingest(batch)
    assert (again.accepted, again.duplicates) == (0, 2)
    assert store.customer("c1").counts == {"view": 1, "add_to_cart": 1}


def test_duplicates_inside_one_batch_are_counted_once(store):
    one = valid(event("purchase", event_id="e-1"))[0]
    result = store.ingest([one, one])
    assert (result.accepted, result.duplicates) == (1, 1)


def test_state_follows_the_funnel(store):
    store.ingest(valid(event("view", "p1"), event("view", "p2", minutes=1),
                       event("add_to_cart", "p2", minutes=2), event("add_to_cart", "p3", minutes=3),
                       event("purchase", "p2", minutes=4), event("offer_redeemed", "o1", minutes=5)))
    state = store.customer("c1")
    assert state.recent_views() == ["p2", "p1"]
    assert set(state.cart) == {"p3"} and set(state.purchased) == {"p2"}
    assert state.redemptions == {"o1": 1}


def test_a_late_event_does_not_undo_a_newer_one(store):
    store.ingest(valid(event("add_to_cart", "p1", minutes=10)))
    store.ingest(valid(event("remove_from_cart", "p1", minutes=5)))  # arrived late
    assert "p1" in store.customer("c1").cart


def test_an_unknown_customer_has_an_empty_state(store):
    state = store.customer("nobody")
    assert state == CustomerState("nobody")


def test_one_customer_is_read_as_the_batch_read_gives_it(store):
    """``customer`` is the serving path's own lookup; it must agree with ``customers``."""
    store.ingest(valid(event("view", "p1"), event("add_to_cart", "p2", minutes=1)))
    batch = store.customers(["c1", "nobody"])
    assert store.customer("c1") == batch["c1"] != CustomerState("c1")
    assert store.customer("nobody") == batch["nobody"] == CustomerState("nobody")


def test_open_carts_are_found_by_how_long_they_sat(store):
    store.ingest(valid(event("add_to_cart", customer="old"),
                       event("add_to_cart", customer="new", minutes=50),
                       event("add_to_cart", customer="bought"),
                       event("purchase", customer="bought", minutes=1)))
    assert store.open_carts((T0 + timedelta(minutes=30)).timestamp()) == ["old"]


def test_a_decision_is_written_once_per_firing_key(store):
    decision = {"firing_key": "cart:c1:1", "customer_id": "c1", "trigger": "cart", "channel": "email",
                "items": [{"item_id": "o1"}]}
    assert store.record_decision(decision, T0.timestamp()) is True
    assert store.record_decision(decision, T0.timestamp()) is False
    assert [d["firing_key"] for _, d in store.outbox()] == ["cart:c1:1"]
    state = store.customer("c1")
    assert state.contacts == [("email", "cart", T0.timestamp())]
    assert state.shown["o1"] == ("email", T0.timestamp())


def test_the_outbox_reads_on_from_a_position(store):
    for i in range(3):
        store.record_decision({"firing_key": f"k{i}", "customer_id": f"c{i}", "trigger": "t",
                               "channel": "email", "items": []}, T0.timestamp())
    first = store.outbox(limit=1)
    rest = store.outbox(after=first[0][0])
    assert [d["firing_key"] for _, d in first + rest] == ["k0", "k1", "k2"]


def test_events_reach_the_warehouse_exactly_once(store, warehouse):
    batch = valid(*(event("view", f"p{i}", minutes=i) for i in range(5)))
    store.ingest(batch)
    assert store.flush_to(warehouse) == 5
    assert store.flush_to(warehouse) == 0
    store.ingest(batch)  # a retry after the flush: still a duplicate
    store.flush_to(warehouse)
    stored = warehouse.events()
    assert sorted(stored["event_id"]) == sorted(e["event_id"] for e in batch)
    assert str(stored["timestamp"].dt.tz) == "UTC"


def test_a_crash_between_append_and_forget_repeats_only_a_no_op(store, warehouse):
    store.ingest(valid(event("purchase")))
    positions, events = store.pending_events(10)
    store.flush_to(warehouse)
    store.forget_events(positions)  # already gone: harmless
    assert len(warehouse.events()) == 1


def test_concurrent_writers_lose_no_update(store):
    batches = [valid(*(event("view", f"p{i}", customer="shared") for _ in range(5)))
               for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(store.ingest, batches))
    assert sum(r.accepted for r in results) == 40
    assert store.customer("shared").counts == {"view": 40}


class WriterInBetween(EmbeddedStore):
    """An embedded store where another writer (a second connection, as another worker process
    would be) records ``meanwhile`` after this one has read the states and before it takes the
    write lock: the moment the store's work outside the lock must not lose."""

    meanwhile: list[dict] = []

    @contextmanager
    def _write(self):
        if self.meanwhile:
            EmbeddedStore(self.path).ingest(self.meanwhile)
            self.meanwhile = []
        with super()._write() as db:
            yield db


def test_a_state_changed_by_another_writer_meanwhile_keeps_both_changes(tmp_path):
    store = WriterInBetween(tmp_path / "online.db")
    store.ingest(valid(event("view", "p0")))
    store.meanwhile = valid(event("add_to_cart", "p1", minutes=1))
    result = store.ingest(valid(event("add_to_cart", "p2", minutes=2)))
    state = store.customer("c1")
    assert set(state.cart) == {"p1", "p2"}
    assert state.counts == {"view": 1, "add_to_cart": 2}
    assert result.states["c1"] == state


def test_an_event_another_writer_recorded_meanwhile_counts_once(tmp_path):
    store = WriterInBetween(tmp_path / "online.db")
    both = valid(event("view", "p1", event_id="e-1"), event("view", "p2", minutes=1))
    store.meanwhile = both[:1]
    result = store.ingest(both)
    assert (result.accepted, result.duplicates) == (1, 1)
    assert store.customer("c1").counts == {"view": 2}
    assert [item for item, _ in store.customer("c1").views] == ["p2", "p1"]


def test_state_survives_reopening(store, tmp_path):
    store.ingest(valid(event("purchase", "p9")))
    reopened = (EmbeddedStore(store.path) if isinstance(store, EmbeddedStore)
                else RedisStore(store.url, prefix=store.prefix))
    assert "p9" in reopened.customer("c1").purchased
    assert reopened.pending_events(10)[1][0]["item_id"] == "p9"


kinds = st.sampled_from(["view", "add_to_cart", "remove_from_cart", "purchase", "offer_redeemed"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(kinds, st.sampled_from(["p1", "p2", "p3"]), st.integers(0, 100)),
                min_size=1, max_size=20))
def test_ingesting_any_events_twice_changes_nothing(tmp_path_factory, steps):
    store = EmbeddedStore(tmp_path_factory.mktemp("prop") / "online.db")
    batch = valid(*(event(kind, item, minutes=m) for kind, item, m in steps))
    store.ingest(batch)
    once = store.customer("c1")
    store.ingest(list(reversed(batch)))
    assert store.customer("c1") == once


def test_many_customers_are_read_at_once(store):
    store.ingest(valid(event("view", customer="a"), event("purchase", customer="b")))
    states = store.customers(["a", "b", "nobody"])
    assert states["a"].counts == {"view": 1} and states["b"].counts == {"purchase": 1}
    assert states["nobody"] == CustomerState("nobody")


def test_the_latest_consent_is_kept_whatever_order_it_arrives_in(store):
    store.record_consent("c1", "email", False, 200.0)
    late = store.record_consent("c1", "email", True, 100.0)  # decided earlier, arrived later
    assert late.consent["email"] == (False, 200.0)
    store.ingest(valid(event("view", customer="c1")))  # events leave consent as it is
    assert store.customer("c1").consent == {"email": (False, 200.0)}
    store.record_consent("c1", "email", True, 300.0)
    assert store.customer("c1").consent["email"] == (True, 300.0)


# ---------------------------------------------------------------------------- bounded state
KINDS = ["view", "click", "add_to_cart", "remove_from_cart", "purchase", "offer_shown",
         "impression", "offer_redeemed"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 5000), st.floats(0, 1e6)),
                max_size=2500),
       st.lists(st.tuples(st.integers(0, 5000), st.floats(0, 1e6)), max_size=400))
def test_no_sequence_of_events_or_messages_grows_a_state_past_its_limits(events, messages):
    from features.online.state import LIMITS, apply_event, record_contact

    state = CustomerState("c1")
    for kind, item, at in events:
        apply_event(state, {"event_type": kind, "item_id": f"i{item}", "at": at,
                            "channel": "web"})
    for item, at in messages:
        record_contact(state, "email", "t", [f"i{item}"], f"k{item}:{at}", at)
    for name, limit in LIMITS.items():
        assert len(getattr(state, name)) <= limit, name
    assert len(state.counts) <= len(KINDS)


def test_a_huge_cart_keeps_the_newest_items_and_a_small_state():
    from features.online.state import LIMITS, apply_event

    state = CustomerState("c1")
    for i in range(50_000):
        apply_event(state, {"event_type": "add_to_cart", "item_id": f"p{i:06d}", "at": float(i),
                            "channel": "web"})
    assert sorted(state.cart) == [f"p{i:06d}" for i in range(50_000 - LIMITS["cart"], 50_000)]
    assert len(state.to_json()) < 20_000


# ---------------------------------------------------------------------------- circuit breaker
def test_after_a_failure_the_breaker_answers_at_once_until_its_cooldown_ends():
    from features.online.breaker import Breaker
    from features.online.store import OnlineStateUnavailable

    now = [100.0]
    breaker = Breaker(cooldown_seconds=5, clock=lambda: now[0])
    asked = []

    def failing():
        asked.append(now[0])
        raise OnlineStateUnavailable("redis at x is unreachable: timed out")

    for _ in range(3):
        with pytest.raises(OnlineStateUnavailable, match="redis at x is unreachable"):
            breaker.call(failing)
    assert asked == [100.0]  # asked once; the next two failed at once
    now[0] = 105.5
    assert breaker.call(lambda: "answered") == "answered"


def an_exposure(number: int) -> dict:
    return {"exposure_id": f"r{number}", "exposure_type": "recommendation", "customer_id": "c1",
            "at": 1_700_000_000.0 + number, "channel": "web", "placement": "home",
            "status": "shown", "rule": None, "model_versions": {"recommender": "1"},
            "items": [("product", "p1", "for_you"), ("offer", "o1", "expected_value")],
            "context": None}


def test_exposures_move_to_the_warehouse_once_in_the_order_logged(store, tmp_path):
    warehouse = Warehouse(tmp_path / "warehouse")
    store.log_exposures([an_exposure(1), an_exposure(2)])
    store.log_exposures([an_exposure(3)])
    positions = [p for p, _ in store.pending_exposures(100)]
    assert positions == sorted(positions) and len(positions) == 2
    assert store.flush_exposures_to(warehouse) == 6  # two rows per exposure
    assert store.pending_exposures(100) == [] and store.flush_exposures_to(warehouse) == 0
    stored = warehouse.exposures().sort_values(["exposure_id", "position"])
    assert stored["exposure_id"].tolist() == ["r1", "r1", "r2", "r2", "r3", "r3"]
    assert stored["item_kind"].tolist()[:2] == ["product", "offer"]


def test_the_log_id_stays_with_the_store(store):
    assert store.log_id == store.log_id and len(store.log_id) == 32


def test_the_journey_index_and_a_commit_with_its_decisions(store):
    """What the journey scheduler relies on, in both backends: an event makes its customer due
    at once; a commit stores the run's next due time and its decisions together; a change that
    returns None writes nothing."""
    [view] = valid(event("view"))
    store.ingest([view])
    assert store.due_journeys(view["at"]) == ["c1"] and store.due_journeys(view["at"] - 1) == []
    later = view["at"] + 3600
    decision = {"firing_key": "welcome:c1:1", "customer_id": "c1", "channel": "email"}

    def enter(state):
        state.journey_check = None
        state.journeys["welcome"] = {"step": 1, "due": later, "entered": view["at"], "key": "k",
                                     "status": "active", "ended": None, "held_out": False}
        return [decision]

    assert store.commit("c1", enter) == [decision]
    assert store.due_journeys(later - 1) == [] and store.due_journeys(later) == ["c1"]
    assert [d for _, d in store.outbox()] == [decision]
    assert store.commit("c1", lambda state: None) is None
    assert store.customer("c1").journeys["welcome"]["due"] == later


def test_commit_many_stores_only_the_customers_a_change_kept(store):
    def change(state):
        if state.customer_id == "c2":
            return None
        state.attributes["seen"] = "yes"
        return [{"firing_key": f"k:{state.customer_id}", "customer_id": state.customer_id}]

    done = store.commit_many(["c1", "c2", "c3"], change)
    assert sorted(done) == ["c1", "c3"]
    assert [d["customer_id"] for _, d in store.outbox()] == ["c1", "c3"]
    assert store.customer("c2").attributes == {}
    assert store.customer("c3").attributes == {"seen": "yes"}

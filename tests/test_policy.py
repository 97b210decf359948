"""The contact policy file: what marketers write, and the verdicts it gives."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from features.online.state import CustomerState
from serving.engagement.policy import (
    DEFAULT_POLICY,
    Cap,
    ContactPolicy,
    PolicyError,
    QuietHours,
    contact_verdict,
    load_policy,
    local_midnight,
    recently_shown,
    verdict_rule,
)

NOON = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
POLICY = ContactPolicy(quiet_hours=QuietHours(start=time(21), end=time(8), timezone="UTC"),
                       caps={"email": Cap(max=2, per_days=7)}, cross_channel_memory_hours=72)
EVERYTHING = frozenset({"email", "sms", "push"})


def test_the_built_in_policy_loads_and_leaves_messages_to_the_journeys():
    policy = load_policy(DEFAULT_POLICY)
    assert policy.quiet_hours is not None and policy.caps and policy.triggers == []


def test_a_wrong_policy_file_names_the_file_and_each_field(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("caps:\n  fax: {max: 2, per_days: 7}\n  email: {max: -1, per_days: 7}\n"
                    "quiet_hours: {start: '21:00', end: '08:00', timezone: Mars/Olympus}\n")
    with pytest.raises(PolicyError) as error:
        load_policy(path)
    message = str(error.value)
    assert str(path) in message and "caps.fax" in message and "caps.email.max" in message
    assert "unknown time zone 'Mars/Olympus'" in message


def test_a_trigger_cannot_send_on_a_storefront_channel(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("triggers:\n  - {name: x, when: cart_abandoned, action: offer, channels: [web]}\n")
    with pytest.raises(PolicyError, match="web cannot carry a message"):
        load_policy(path)


def test_no_consent_means_no_contact():
    verdict = contact_verdict(POLICY, CustomerState("c"), frozenset({"sms"}), "email", NOON)
    assert verdict == "no consent for email"


@pytest.mark.parametrize("hour, quiet", [(20, False), (21, True), (23, True), (0, True), (7, True),
                                         (8, False), (12, False)])
def test_quiet_hours_wrap_past_midnight(hour, quiet):
    moment = NOON.replace(hour=hour)
    verdict = contact_verdict(POLICY, CustomerState("c"), EVERYTHING, "email", moment)
    assert (verdict is not None and verdict.startswith("quiet hours")) is quiet


def test_quiet_hours_are_local_to_their_time_zone():
    new_york = QuietHours(start=time(21), end=time(8), timezone="America/New_York")
    assert new_york.contains(datetime(2026, 3, 2, 3, 0, tzinfo=UTC))  # 22:00 in New York
    assert not new_york.contains(datetime(2026, 3, 2, 15, 0, tzinfo=UTC))


def test_a_full_cap_blocks_the_channel_until_the_window_moves_on():
    state = CustomerState("c", contacts=[("email", "t", (NOON - timedelta(days=d)).timestamp())
                                         for d in (1, 6)])
    assert contact_verdict(POLICY, state, EVERYTHING, "email", NOON).startswith("cap reached")
    assert contact_verdict(POLICY, state, EVERYTHING, "email", NOON + timedelta(days=2)) is None
    assert contact_verdict(POLICY, state, EVERYTHING, "sms", NOON) is None  # caps are per channel


@given(st.integers(0, 10), st.integers(0, 10))
def test_a_cap_is_never_exceeded(cap, sent):
    policy = ContactPolicy(caps={"push": Cap(max=cap, per_days=1)})
    state = CustomerState("c", contacts=[("push", "t", NOON.timestamp() - 60)] * sent)
    allowed = contact_verdict(policy, state, EVERYTHING, "push", NOON) is None
    assert allowed == (sent < cap)


def test_cross_channel_memory_forgets_after_its_window():
    state = CustomerState("c", shown={"o1": ("app", (NOON - timedelta(hours=10)).timestamp()),
                                      "o2": ("app", (NOON - timedelta(hours=100)).timestamp())})
    assert recently_shown(POLICY, state, NOON) == {"o1"}


def test_a_consent_withdrawn_since_the_customers_table_wins_over_it():
    state = CustomerState("c", consent={"email": (False, NOON.timestamp())})
    assert contact_verdict(POLICY, state, EVERYTHING, "email", NOON) == "consent for email withdrawn"


def test_a_consent_given_since_the_customers_table_wins_over_it():
    state = CustomerState("c", consent={"email": (True, NOON.timestamp())})
    assert contact_verdict(POLICY, state, frozenset(), "email", NOON) is None
    assert contact_verdict(POLICY, state, frozenset(), "sms", NOON) == "no consent for sms"


def test_a_daily_cap_counts_the_customers_own_calendar_day():
    policy = ContactPolicy(daily_caps={"email": 1})
    evening = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)  # 23:30 in Tokyo, 14:30 in London
    state = CustomerState("c", contacts=[("email", "t", evening.timestamp())])
    later = evening + timedelta(hours=1)                 # 00:30 the next day in Tokyo
    assert contact_verdict(policy, state, EVERYTHING, "email", later, "Asia/Tokyo") is None
    verdict = contact_verdict(policy, state, EVERYTHING, "email", later, "Europe/London")
    assert verdict.startswith("cap reached: 1 email message(s) today (max 1 a day, Europe/London)")
    assert verdict_rule(verdict) == "cap"


def test_a_daily_cap_on_all_channels_counts_every_channel():
    policy = ContactPolicy(daily_caps={"all": 2, "sms": 5})
    state = CustomerState("c", contacts=[("email", "t", NOON.timestamp() - 60),
                                         ("push", "t", NOON.timestamp() - 30)])
    assert "on all channels" in contact_verdict(policy, state, EVERYTHING, "sms", NOON)
    assert contact_verdict(policy, state, EVERYTHING, "sms", NOON + timedelta(days=1)) is None


def test_a_customer_without_a_zone_has_the_quiet_hours_day():
    policy = ContactPolicy(quiet_hours=QuietHours(start=time(23), end=time(1),
                                                  timezone="America/New_York"),
                           daily_caps={"push": 1})
    sent = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)        # 22:00 on the 1st in New York
    state = CustomerState("c", contacts=[("push", "t", sent.timestamp())])
    assert contact_verdict(policy, state, EVERYTHING, "push", sent + timedelta(hours=4)) is None
    assert contact_verdict(policy, state, EVERYTHING, "push",
                           sent + timedelta(minutes=30)).startswith("cap reached")


@given(st.integers(0, 4), st.integers(0, 6), st.sampled_from(["UTC", "Asia/Kolkata",
                                                                "America/Los_Angeles"]))
def test_a_daily_cap_is_never_exceeded_within_a_local_day(cap, sent, zone):
    policy = ContactPolicy(daily_caps={"email": cap})
    start = local_midnight(NOON, zone)
    state = CustomerState("c", contacts=[("email", "t", (start + timedelta(minutes=1)).timestamp())]
                          * sent)
    allowed = contact_verdict(policy, state, EVERYTHING, "email", start + timedelta(hours=20),
                              zone) is None
    assert allowed == (sent < cap)


def test_a_daily_cap_on_a_storefront_channel_is_refused(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("daily_caps: {web: 1, email: -2}\n")
    with pytest.raises(PolicyError) as error:
        load_policy(path)
    assert "daily_caps" in str(error.value) and "web cannot carry a message" in str(error.value)

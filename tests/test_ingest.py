"""Events sent in real time are checked by the same rules as event files."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.contracts import EVENTS
from features.event_time import TimeWindow
from features.ingest import parse_events
from features.validation import validate_table

NOW = datetime(2026, 3, 2, 12, 30, tzinfo=UTC)
WINDOW = TimeWindow(datetime(1990, 1, 1, tzinfo=UTC), NOW, timedelta(minutes=10))

GOOD = {"event_id": "e1", "customer_id": "c1", "item_id": "p1", "event_type": "view",
        "timestamp": "2026-03-02T12:00:00+01:00", "channel": "app"}


def test_a_good_event_is_normalized_to_utc_with_defaults():
    [event] = parse_events([GOOD]).events
    assert event["timestamp"] == "2026-03-02T11:00:00.000000Z"
    assert event["quantity"] == 1 and event["price"] is None and event["session_id"] is None
    assert event["at"] == pd.Timestamp("2026-03-02T11:00:00Z").timestamp()


def test_unknown_fields_are_kept_in_context_and_context_may_be_an_object():
    [event] = parse_events([{**GOOD, "context": {"page": "home"}, "referrer": "mail"}]).events
    assert json.loads(event["context"]) == {"page": "home", "referrer": "mail"}


def test_each_problem_names_the_index_the_field_and_the_value():
    parsed = parse_events([GOOD, {**GOOD, "event_id": "e2", "quantity": 0, "channel": "fax"}])
    assert parsed.rejected == [1] and len(parsed.events) == 1
    assert [str(p) for p in parsed.problems] == [
        "events[1].channel: got 'fax', expected one of web, app, email, sms, push, store",
        "events[1].quantity: got '0', expected a whole number >= 1"]


def test_a_timestamp_without_a_zone_is_refused():
    parsed = parse_events([{**GOOD, "timestamp": "2026-03-02T12:00:00"}])
    assert parsed.problems[0].field == "timestamp"


def test_an_event_dated_past_the_tolerance_is_refused_with_now_and_the_tolerance():
    parsed = parse_events([{**GOOD, "timestamp": "2030-01-01T00:00:00Z"}], window=WINDOW)
    assert [str(p) for p in parsed.problems] == [
        "events[0].timestamp: got '2030-01-01T00:00:00Z', expected a time no later than "
        "2026-03-02T12:40:00Z (now, 2026-03-02T12:30:00Z, plus the 10-minute tolerance of "
        "NEXTBEST_FUTURE_TOLERANCE_MINUTES): events are sent once they happened"]


def test_an_event_within_the_tolerance_is_accepted():
    parsed = parse_events([{**GOOD, "timestamp": "2026-03-02T12:39:00Z"}], window=WINDOW)
    assert not parsed.problems and len(parsed.events) == 1


@pytest.mark.parametrize("timestamp", ["1989-12-31T23:59:59Z", "0001-01-01T00:00:00+01:00",
                                       "9999-12-31T23:59:59Z", "2263-01-01T00:00:00Z"])
def test_times_no_shop_could_have_are_refused_not_crashed_on(timestamp):
    parsed = parse_events([{**GOOD, "timestamp": timestamp}], window=WINDOW)
    assert parsed.rejected == [0] and parsed.problems[0].field == "timestamp"


def test_a_file_row_dated_in_the_future_is_refused_in_the_same_words():
    _, report = validate_table(pd.DataFrame([{**GOOD, "timestamp": "2030-01-01T00:00:00Z"}]),
                               EVENTS, "events.csv", window=WINDOW)
    [problem] = report.problems
    assert str(problem) == ("events.csv, row 1, column 'timestamp': got '2030-01-01T00:00:00Z', "
                            f"expected {WINDOW.too_late}")


@pytest.mark.parametrize("field, value", [("event_id", {"a": 1}), ("customer_id", ["c1"]),
                                          ("item_id", True), ("quantity", True),
                                          ("price", {"amount": 3})])
def test_a_value_of_the_wrong_json_type_is_refused_not_turned_into_text(field, value):
    parsed = parse_events([{**GOOD, field: value}], window=WINDOW)
    assert parsed.rejected == [0] and parsed.problems[0].field == field


def test_a_repeated_event_id_in_a_batch_is_a_retry_whatever_its_json_type():
    parsed = parse_events([{**GOOD, "event_id": 7}, {**GOOD, "event_id": "7"}])
    assert len(parsed.events) == 1 and parsed.repeated == 1 and not parsed.problems


def test_the_problem_list_is_capped_but_every_bad_event_is_rejected():
    parsed = parse_events([{"event_id": f"e{i}"} for i in range(50)], max_problems=10)
    assert len(parsed.problems) == 10 and len(parsed.rejected) == 50


cells = {
    "event_id": st.sampled_from(["e1", "e2", "", None, "  ", 7, {"a": 1}, True, [1]]),
    "customer_id": st.sampled_from(["c1", "", None, 42]),
    "item_id": st.sampled_from(["p1", None, "p 2"]),
    "event_type": st.sampled_from(["view", "purchase", "VIEW", "teleport", "", None]),
    "timestamp": st.sampled_from(["2026-03-02T12:00:00Z", "2026-03-02T12:00:00+02:00",
                                  "2026-03-02 12:00:00.123456Z", "2026-03-02T12:00:00",
                                  "yesterday", "2026-13-40T00:00:00Z", "", None,
                                  "2030-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
                                  "1970-01-01T00:00:00Z", "2026-03-02T12:39:59Z"]),
    "channel": st.sampled_from(["web", "app", "fax", None]),
    "quantity": st.sampled_from([None, 1, 3, 0, -2, 1.5, "4", "x", 2.0, 1e100, True]),
    "price": st.sampled_from([None, 0, 9.99, -1, "12.5", "abc", float("inf")]),
    "context": st.sampled_from([None, '{"page": "home"}', "[1, 2]", "not json"]),
    "page": st.sampled_from([None, "home"]),
}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.fixed_dictionaries(cells), min_size=1, max_size=6))
def test_the_per_event_check_agrees_with_file_validation(rows):
    # a repeated event_id is a retry for the service but a problem in a file: keep ids apart
    unique = [dict(row, event_id=f"{row['event_id']}-{i}") if isinstance(row["event_id"], str)
              and row["event_id"].strip() else dict(row, event_id=row["event_id"] + 100 * i)
              if isinstance(row["event_id"], int) else row for i, row in enumerate(rows)]
    _, report = validate_table(pd.DataFrame(unique), EVENTS, "events", window=WINDOW)
    parsed = parse_events(unique, window=WINDOW)
    assert parsed.rejected == report.bad_rows.tolist()

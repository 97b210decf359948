"""Events sent in real time are checked by the same rules as event files."""

from __future__ import annotations

import json

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from features.contracts import EVENTS
from features.ingest import parse_events
from features.validation import validate_table

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


def test_a_repeated_event_id_in_a_batch_is_a_retry_whatever_its_json_type():
    parsed = parse_events([{**GOOD, "event_id": 7}, {**GOOD, "event_id": "7"}])
    assert len(parsed.events) == 1 and parsed.repeated == 1 and not parsed.problems


def test_the_problem_list_is_capped_but_every_bad_event_is_rejected():
    parsed = parse_events([{"event_id": f"e{i}"} for i in range(50)], max_problems=10)
    assert len(parsed.problems) == 10 and len(parsed.rejected) == 50


cells = {
    "event_id": st.sampled_from(["e1", "e2", "", None, "  ", 7]),
    "customer_id": st.sampled_from(["c1", "", None, 42]),
    "item_id": st.sampled_from(["p1", None, "p 2"]),
    "event_type": st.sampled_from(["view", "purchase", "VIEW", "teleport", "", None]),
    "timestamp": st.sampled_from(["2026-03-02T12:00:00Z", "2026-03-02T12:00:00+02:00",
                                  "2026-03-02 12:00:00.123456Z", "2026-03-02T12:00:00",
                                  "yesterday", "2026-13-40T00:00:00Z", "", None]),
    "channel": st.sampled_from(["web", "app", "fax", None]),
    "quantity": st.sampled_from([None, 1, 3, 0, -2, 1.5, "4", "x", 2.0, 1e100]),
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
    _, report = validate_table(pd.DataFrame(unique), EVENTS, "events")
    parsed = parse_events(unique)
    assert parsed.rejected == report.bad_rows.tolist()

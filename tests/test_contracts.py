"""The data contracts: good files load typed, bad files are reported cell by cell."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.contracts import CUSTOMERS, EVENTS, ITEMS
from features.loading import DataFileError, check_frame, load_table
from features.validation import validate_table

HEADER = "event_id,customer_id,item_id,event_type,timestamp,channel,session_id,quantity,price"
GOOD_ROW = "e1,c1,p1,purchase,2024-05-01T12:00:00Z,web,s1,2,9.5"


def write(tmp_path: Path, name: str, *lines: str) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def problems_of(path: Path, contract=EVENTS) -> list[str]:
    with pytest.raises(DataFileError) as caught:
        load_table(path, contract)
    return [str(p) for p in caught.value.report.problems]


def test_a_good_events_file_loads_with_contract_types(tmp_path):
    path = write(tmp_path, "events.csv", HEADER, GOOD_ROW)
    loaded = load_table(path, EVENTS)
    row = loaded.frame.iloc[0]
    assert loaded.report.ok
    assert row["timestamp"] == pd.Timestamp("2024-05-01T12:00:00Z")
    assert str(loaded.frame["timestamp"].dtype) == "datetime64[us, UTC]"
    assert (row["quantity"], row["price"]) == (2, 9.5)


def test_optional_columns_take_their_defaults(tmp_path):
    path = write(tmp_path, "events.csv", "event_id,customer_id,item_id,event_type,timestamp,channel",
                 "e1,c1,p1,view,2024-05-01T12:00:00+02:00,app")
    frame = load_table(path, EVENTS).frame
    assert frame.loc[0, "quantity"] == 1
    assert frame.loc[0, "timestamp"] == pd.Timestamp("2024-05-01T10:00:00Z")


def test_an_unknown_event_type_names_file_row_column_value_and_the_allowed_values(tmp_path):
    path = write(tmp_path, "events.csv", HEADER, GOOD_ROW, "e2,c1,p1,buy,2024-05-01T12:00:00Z,web,s1,1,1")
    assert problems_of(path) == [
        f"{path}, row 2, column 'event_type': got 'buy', expected one of view, click, add_to_cart, "
        "remove_from_cart, purchase, return, impression, offer_shown, offer_redeemed"
    ]


def test_a_timestamp_without_timezone_is_rejected(tmp_path):
    path = write(tmp_path, "events.csv", HEADER, "e1,c1,p1,view,2024-05-01 12:00:00,web,s1,1,1")
    assert problems_of(path) == [
        f"{path}, row 1, column 'timestamp': got '2024-05-01 12:00:00', expected a "
        "timezone-aware timestamp such as 2024-05-01T12:00:00Z"
    ]


def test_a_naive_parquet_timestamp_column_is_a_file_level_problem(tmp_path):
    path = tmp_path / "events.parquet"
    frame = pd.DataFrame({"event_id": ["e1"], "customer_id": ["c1"], "item_id": ["p1"],
                          "event_type": ["view"], "timestamp": [pd.Timestamp("2024-05-01")],
                          "channel": ["web"]})
    frame.to_parquet(path)
    assert problems_of(path) == [
        f"{path}, column 'timestamp': expected a timezone-aware timestamp such as "
        "2024-05-01T12:00:00Z (the column has no timezone)"
    ]


def test_numbers_are_checked_for_type_integrality_and_range(tmp_path):
    path = write(tmp_path, "events.csv", HEADER,
                 "e1,c1,p1,purchase,2024-05-01T12:00:00Z,web,s1,1.5,abc",
                 "e2,c1,p1,purchase,2024-05-01T12:00:00Z,web,s1,0,-1")
    assert problems_of(path) == [
        f"{path}, row 1, column 'quantity': got '1.5', expected a whole number",
        f"{path}, row 1, column 'price': got 'abc', expected a number",
        f"{path}, row 2, column 'quantity': got '0', expected a whole number >= 1",
        f"{path}, row 2, column 'price': got '-1', expected a number >= 0",
    ]


def test_a_missing_required_column_is_reported_once_for_the_file(tmp_path):
    path = write(tmp_path, "events.csv", "event_id,item_id,event_type,timestamp,channel",
                 "e1,p1,view,2024-05-01T12:00:00Z,web")
    assert problems_of(path) == [
        f"{path}, column 'customer_id': expected a column named 'customer_id' (Who did it.)"
    ]


def test_an_empty_required_cell_is_reported(tmp_path):
    path = write(tmp_path, "events.csv", HEADER, "e1,,p1,view,2024-05-01T12:00:00Z,web,s1,1,1")
    assert problems_of(path) == [
        f"{path}, row 1, column 'customer_id': expected a value (customer_id is required)"
    ]


def test_a_repeated_event_id_within_a_file_is_reported_on_its_second_row(tmp_path):
    path = write(tmp_path, "events.csv", HEADER, GOOD_ROW, GOOD_ROW)
    assert problems_of(path) == [
        f"{path}, row 2, column 'event_id': got 'e1', expected a unique event_id "
        "(this one appears on an earlier row)"
    ]


def test_unknown_columns_are_kept_in_context_and_reported(tmp_path):
    path = write(tmp_path, "events.csv", HEADER + ",page,referrer",
                 GOOD_ROW + ",home,newsletter")
    loaded = load_table(path, EVENTS)
    assert loaded.report.unknown_columns == ["page", "referrer"]
    assert json.loads(loaded.frame.loc[0, "context"]) == {"page": "home", "referrer": "newsletter"}
    assert "page, referrer" in loaded.report.describe()


def test_context_must_be_a_json_object(tmp_path):
    path = write(tmp_path, "events.csv", HEADER + ",context", GOOD_ROW + ",[1]")
    assert problems_of(path) == [
        f"{path}, row 1, column 'context': got '[1]', expected a JSON object such as "
        '{"page": "home"}'
    ]


def test_the_report_lists_up_to_the_limit_but_counts_every_problem(tmp_path):
    rows = [f"e{i},c1,p1,nope,2024-05-01T12:00:00Z,web,s1,1,1" for i in range(30)]
    path = write(tmp_path, "events.csv", HEADER, *rows)
    with pytest.raises(DataFileError) as caught:
        load_table(path, EVENTS, max_problems=5)
    report = caught.value.report
    assert (len(report.problems), report.n_problems) == (5, 30)
    assert "... and 25 more" in report.describe()


def test_an_offer_needs_a_value_and_a_window_that_ends_after_it_starts(tmp_path):
    path = write(tmp_path, "items.csv", "item_id,kind,title,offer_value,valid_from,valid_to",
                 "o1,offer,10 off,,2024-01-01T00:00:00Z,2024-02-01T00:00:00Z",
                 "o2,offer,5 off,5,2024-03-01T00:00:00Z,2024-02-01T00:00:00Z")
    assert problems_of(path, ITEMS) == [
        f"{path}, row 1, column 'offer_value': expected a value for every offer "
        "(what it is worth to the customer)",
        f"{path}, row 2, column 'valid_to': got '2024-02-01T00:00:00Z', expected a time after "
        "valid_from",
    ]


def test_list_cells_are_checked_element_by_element(tmp_path):
    path = write(tmp_path, "items.csv", "item_id,kind,title,offer_value,eligible_channels",
                 "o1,offer,10 off,10,web|fax")
    assert problems_of(path, ITEMS) == [
        f"{path}, row 1, column 'eligible_channels': got 'web|fax', expected '|'-separated "
        "values, each one of web, app, email, sms, push, store"
    ]


def test_customer_booleans_accept_common_spellings(tmp_path):
    path = write(tmp_path, "customers.csv", "customer_id,first_seen,consent_email,consent_sms",
                 "c1,2024-01-01T00:00:00Z,yes,0", "c2,2024-01-01T00:00:00Z,TRUE,maybe")
    assert problems_of(path, CUSTOMERS) == [
        f"{path}, row 2, column 'consent_sms': got 'maybe', expected true or false"
    ]


def test_quarantine_loads_good_rows_and_writes_bad_ones_with_reasons(tmp_path):
    path = write(tmp_path, "events.csv", HEADER, GOOD_ROW,
                 "e2,c1,p1,buy,2024-05-01T12:00:00Z,web,s1,1,1")
    loaded = load_table(path, EVENTS, on_error="quarantine", quarantine_dir=tmp_path / "q")
    assert loaded.frame["event_id"].tolist() == ["e1"]
    side = pd.read_csv(loaded.quarantine_path, dtype=str)
    assert side["_row"].tolist() == ["2"]
    assert side["event_id"].tolist() == ["e2"]
    assert side["_problems"].iloc[0].startswith("event_type: expected one of view")


def test_quarantine_still_rejects_a_file_missing_a_required_column(tmp_path):
    path = write(tmp_path, "events.csv", "event_id,item_id", "e1,p1")
    with pytest.raises(DataFileError, match="(?s)rejected: .*customer_id"):
        load_table(path, EVENTS, on_error="quarantine", quarantine_dir=tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_an_unknown_on_error_mode_is_refused():
    with pytest.raises(ValueError, match="on_error must be 'reject' or 'quarantine', got 'skip'"):
        check_frame(pd.DataFrame(), EVENTS, "x", on_error="skip")


def test_a_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataFileError, match="nope.csv: no such file"):
        load_table(tmp_path / "nope.csv", EVENTS)


def test_every_generated_table_satisfies_its_contract(tiny_shop):
    for frame, contract in ((tiny_shop.events, EVENTS), (tiny_shop.items, ITEMS),
                            (tiny_shop.customers, CUSTOMERS)):
        _, report = validate_table(frame, contract, contract.name)
        assert report.ok, report.describe()


cell = st.one_of(st.none(), st.text(max_size=12), st.integers(-5, 5).map(str),
                 st.sampled_from(["view", "web", "2024-05-01T12:00:00Z", "1.5", "{}"]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.fixed_dictionaries({c: cell for c in EVENTS.column_names + ["extra"]}),
                min_size=1, max_size=8))
def test_validation_never_crashes_and_flags_exactly_the_rows_it_drops(rows):
    frame = pd.DataFrame(rows)
    typed, report = validate_table(frame, EVENTS, "fuzz.csv")
    assert len(typed) == len(frame)
    assert set(report.bad_rows) <= set(range(len(frame)))
    assert report.ok == (report.n_problems == 0)
    good = np.setdiff1d(np.arange(len(frame)), report.bad_rows)
    assert typed.iloc[good]["event_type"].isin([t for t in EVENTS.column("event_type").allowed]).all()


def test_a_csv_line_too_long_for_its_cells_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "events.csv"
    with open(path, "w") as handle:
        handle.write(HEADER + "\n" + GOOD_ROW + "\n")
        handle.write(GOOD_ROW.replace("web", "web" + "x" * 3_000_000) + "\n")
    with pytest.raises(DataFileError, match=r"row 2: the line is longer than its cells could be, "
                                            r"each at most 65,536 bytes"):
        load_table(path, EVENTS)


def test_a_parquet_column_of_huge_cells_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "items.parquet"
    pd.DataFrame({"item_id": ["a"], "kind": ["product"], "title": ["t" * 200_000]}).to_parquet(path)
    with pytest.raises(DataFileError, match="column 'title' holds cells larger than 65,536 bytes"):
        load_table(path, ITEMS)


def test_a_cell_over_the_limit_and_a_context_too_large_are_problems_of_their_row(tmp_path):
    path = tmp_path / "events.csv"
    context = '"{""blob"": ""' + "x" * 5000 + '""}"'
    path.write_text(HEADER + ",context\n" + GOOD_ROW + ",\n"
                    + GOOD_ROW.replace("e1", "e2") + f",{context}\n")
    with pytest.raises(DataFileError) as error:
        load_table(path, EVENTS)
    assert "row 2, column 'context'" in str(error.value)
    assert "at most 4,096 bytes of context (NEXTBEST_MAX_CONTEXT_BYTES)" in str(error.value)


def test_a_customer_time_zone_must_be_an_iana_name(tmp_path):
    path = write(tmp_path, "customers.csv", "customer_id,first_seen,timezone",
                 "c1,2024-01-01T00:00:00Z,Europe/London", "c2,2024-01-01T00:00:00Z,",
                 "c3,2024-01-01T00:00:00Z,GMT+1 Paris")
    assert problems_of(path, CUSTOMERS) == [
        f"{path}, row 3, column 'timezone': got 'GMT+1 Paris', expected an IANA time zone such "
        "as Europe/London or America/New_York"]

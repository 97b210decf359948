"""The warehouse: idempotent, atomic appends; upserts by key; point-in-time reads."""

from __future__ import annotations

import multiprocessing
import os
import threading
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from features.loading import DataFileError
from features.warehouse import FAN_IN, JOURNAL, Warehouse


def test_appending_the_same_events_twice_stores_them_once(warehouse, tiny_shop):
    first = warehouse.append_events(tiny_shop.events)
    second = warehouse.append_events(tiny_shop.events)
    assert (first.added, first.existing) == (len(tiny_shop.events), 0)
    assert (second.added, second.existing) == (0, len(tiny_shop.events))
    assert warehouse.counts()["events"] == len(tiny_shop.events)


def test_an_overlapping_batch_adds_only_the_new_events(warehouse, tiny_shop):
    events = tiny_shop.events
    warehouse.append_events(events.iloc[:100])
    result = warehouse.append_events(events.iloc[50:150])
    assert (result.added, result.existing) == (50, 50)
    stored = warehouse.events(columns=["event_id"])["event_id"]
    assert stored.is_unique and len(stored) == 150


def test_events_read_back_equal_what_was_written(warehouse, tiny_shop):
    warehouse.append_events(tiny_shop.events)
    back = warehouse.events().sort_values("event_id").reset_index(drop=True)
    expected = tiny_shop.events.sort_values("event_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(back, expected, check_dtype=False)


def test_a_crash_while_writing_leaves_the_previous_state_readable(warehouse, tiny_shop, monkeypatch):
    warehouse.append_events(tiny_shop.events.iloc[:200])

    def crash_half_way(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", crash_half_way)
    with pytest.raises(OSError, match="disk full"):
        warehouse.append_events(tiny_shop.events.iloc[200:400])
    monkeypatch.undo()
    assert warehouse.counts()["events"] == 200
    assert len(warehouse.events()) == 200
    assert not list(warehouse.events_dir.glob(".tmp-*"))
    assert warehouse.append_events(tiny_shop.events.iloc[200:400]).added == 200


def test_a_leftover_temporary_file_is_invisible_to_readers(warehouse, tiny_shop):
    warehouse.append_events(tiny_shop.events.iloc[:10])
    (warehouse.events_dir / ".tmp-deadbeef.parquet").write_bytes(b"garbage")
    assert len(warehouse.events()) == 10


def _append(root: str, path: str) -> int:
    return Warehouse(Path(root)).append_events(pd.read_parquet(path)).added


def test_two_processes_appending_the_same_batch_store_it_once(tmp_path, tiny_shop):
    batch = tmp_path / "batch.parquet"
    tiny_shop.events.to_parquet(batch)
    root = tmp_path / "shared"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        added = pool.starmap(_append, [(str(root), str(batch))] * 2)
    assert sorted(added) == [0, len(tiny_shop.events)]
    assert Warehouse(root).counts()["events"] == len(tiny_shop.events)


def test_upsert_replaces_rows_with_the_same_key(warehouse, tiny_shop):
    warehouse.upsert("items", tiny_shop.items)
    changed = tiny_shop.items.iloc[:2].copy()
    changed["title"] = ["Renamed A", "Renamed B"]
    result = warehouse.upsert("items", changed)
    items = warehouse.items().set_index("item_id")
    assert (result.added, result.existing) == (0, 2)
    assert items.loc[changed["item_id"], "title"].tolist() == ["Renamed A", "Renamed B"]
    assert len(items) == len(tiny_shop.items)


def test_events_cannot_be_upserted(warehouse, tiny_shop):
    with pytest.raises(ValueError, match="events are append-only: use append_events"):
        warehouse.upsert("events", tiny_shop.events)


def test_reading_before_a_cutoff_excludes_the_cutoff_itself(stored_shop, tiny_shop):
    cutoff = tiny_shop.events["timestamp"].iloc[500]
    before = stored_shop.events(end=cutoff)
    assert (before["timestamp"] < cutoff).all()
    assert len(before) == int((tiny_shop.events["timestamp"] < cutoff).sum())


def test_reading_one_customer_returns_only_their_events(stored_shop, tiny_shop):
    customer = tiny_shop.events["customer_id"].iloc[0]
    mine = stored_shop.events(customer_ids=[customer])
    assert set(mine["customer_id"]) == {customer}
    assert len(mine) == int((tiny_shop.events["customer_id"] == customer).sum())


def test_a_time_without_timezone_is_refused_with_a_hint(stored_shop):
    with pytest.raises(ValueError, match="has no timezone; pass a timezone-aware"):
        stored_shop.events(end=pd.Timestamp("2024-02-01"))


def test_sql_queries_see_all_three_tables(stored_shop, tiny_shop):
    result = stored_shop.query(
        "select count(*) as n from events e join items i using (item_id) "
        "join customers c using (customer_id)")
    assert result["n"].iloc[0] == len(tiny_shop.events)


def test_the_fingerprint_changes_when_data_changes(warehouse, tiny_shop):
    warehouse.append_events(tiny_shop.events.iloc[:10])
    before = warehouse.fingerprint()
    warehouse.append_events(tiny_shop.events.iloc[:10])
    assert warehouse.fingerprint() == before
    warehouse.append_events(tiny_shop.events.iloc[10:20])
    assert warehouse.fingerprint() != before


def test_a_rejected_file_stores_nothing(warehouse, tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("event_id,customer_id,item_id,event_type,timestamp,channel\n"
                    "e1,c1,p1,view,2024-05-01T12:00:00Z,web\n"
                    "e2,c1,p1,nope,2024-05-01T12:00:00Z,web\n")
    with pytest.raises(DataFileError):
        warehouse.import_file(path, "events")
    assert warehouse.counts()["events"] == 0


def test_a_quarantined_import_stores_the_good_rows_and_keeps_the_bad(warehouse, tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("event_id,customer_id,item_id,event_type,timestamp,channel\n"
                    "e1,c1,p1,view,2024-05-01T12:00:00Z,web\n"
                    "e2,c1,p1,nope,2024-05-01T12:00:00Z,web\n")
    result = warehouse.import_file(path, "events", on_error="quarantine")
    assert result.added == 1
    assert result.quarantine_path.parent == warehouse.root / "quarantine"
    assert pd.read_csv(result.quarantine_path)["event_id"].tolist() == ["e2"]


def test_an_unknown_table_lists_the_real_ones(warehouse):
    with pytest.raises(ValueError, match="unknown table 'orders'; expected one of: events, items, "
                                         "customers"):
        warehouse.read("orders")


def test_sql_sums_come_back_as_numbers_not_objects(stored_shop):
    result = stored_shop.query("select customer_id, count_if(event_type = 'purchase') as n, "
                               "sum(quantity) as units from events group by 1")
    assert str(result["n"].dtype) == "int64" and str(result["units"].dtype) == "int64"


# ---------------------------------------------------------------------------- compaction
def stored_ids(warehouse: Warehouse) -> list[str]:
    return sorted(warehouse.events(columns=["event_id"])["event_id"])


def append_in_batches(warehouse: Warehouse, events: pd.DataFrame, batches: int) -> None:
    for chunk in range(batches):
        warehouse.append_events(events.iloc[chunk::batches])


def test_many_small_appends_leave_few_parts_and_every_event_once(warehouse, tiny_shop):
    """As the service's flush does: a part per append, merged eight at a time by size tier."""
    append_in_batches(warehouse, tiny_shop.events, 100)
    parts = list(warehouse.events_dir.glob("part-*.parquet"))
    assert len(parts) < FAN_IN * 3  # a hundred appends, two tiers at most here
    assert stored_ids(warehouse) == sorted(tiny_shop.events["event_id"])
    assert warehouse.append_events(tiny_shop.events).added == 0  # still deduplicated


def test_events_read_the_same_before_and_after_a_merge(warehouse, tiny_shop, monkeypatch):
    monkeypatch.setattr("features.warehouse.FAN_IN", 10**9)  # no merge while appending
    append_in_batches(warehouse, tiny_shop.events, 20)
    before = warehouse.events().sort_values("event_id").reset_index(drop=True)
    monkeypatch.setattr("features.warehouse.FAN_IN", 4)
    assert warehouse.compact() > 0
    after = warehouse.events().sort_values("event_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(after, before)
    assert len(list(warehouse.events_dir.glob("part-*.parquet"))) < 20


@pytest.mark.parametrize("crash_after", ["journal", "rename", "deleting one part"])
def test_a_crash_during_a_merge_leaves_every_event_readable_once(warehouse, tiny_shop,
                                                                 monkeypatch, crash_after):
    monkeypatch.setattr("features.warehouse.FAN_IN", 10**9)
    append_in_batches(warehouse, tiny_shop.events, 6)
    monkeypatch.setattr("features.warehouse.FAN_IN", 3)
    expected = sorted(tiny_shop.events["event_id"])

    class Crash(Exception):
        pass

    real_replace, real_unlink = os.replace, Path.unlink

    def replace(source, target):
        real_replace(source, target)
        if crash_after == "rename" and Path(target).name.startswith("part-"):
            raise Crash
        if crash_after == "journal" and Path(target).name == JOURNAL:
            raise Crash

    def unlink(path, missing_ok=False):
        real_unlink(path, missing_ok=missing_ok)
        if crash_after == "deleting one part" and path.name.startswith("part-"):
            raise Crash

    monkeypatch.setattr("features.warehouse.os.replace", replace)
    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(Crash):
        warehouse.compact()
    monkeypatch.setattr("features.warehouse.os.replace", real_replace)
    monkeypatch.setattr(Path, "unlink", real_unlink)
    assert stored_ids(warehouse) == expected  # read as the crash left it
    assert warehouse.counts()["events"] == len(expected)
    warehouse.compact()  # the next write finishes or discards the merge
    assert stored_ids(warehouse) == expected
    assert not (warehouse.events_dir / JOURNAL).exists()
    assert not list(warehouse.events_dir.glob(".tmp-*"))


def test_a_reader_never_sees_an_event_twice_or_fails_while_parts_are_merged(warehouse,
                                                                              tiny_shop):
    """Readers take no lock: they list again when a merge deleted a part they had listed."""
    events = tiny_shop.events
    warehouse.append_events(events.iloc[:50])
    stop, problems = threading.Event(), []

    def read() -> None:
        while not stop.is_set():
            try:
                ids = warehouse.events(columns=["event_id"])["event_id"]
                if not ids.is_unique:
                    problems.append(f"{ids.duplicated().sum()} events read twice")
            except Exception as error:  # noqa: BLE001 - any failure is the finding
                problems.append(repr(error))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        append_in_batches(warehouse, events.iloc[50:], 60)
    finally:
        stop.set()
        reader.join()
    assert problems == []
    assert stored_ids(warehouse) == sorted(events["event_id"])


# ---------------------------------------------------------------------------- deleting events
def test_deleting_events_spread_over_parts_removes_exactly_them(warehouse, tiny_shop):
    from features.warehouse import EventCriteria

    events = tiny_shop.events
    for start in range(0, len(events), len(events) // 5):  # several parts
        warehouse.append_events(events.iloc[start:start + len(events) // 5])
    customer = events["customer_id"].value_counts().index[0]
    others_before = warehouse.events()
    result = warehouse.delete_events(EventCriteria(customer_ids=(customer,)))
    expected = others_before[others_before["customer_id"] != customer]
    after = warehouse.events()
    assert result.removed == int((events["customer_id"] == customer).sum())
    assert sorted(after["event_id"]) == sorted(expected["event_id"])
    assert sorted(pd.read_parquet(result.kept_in)["event_id"]) == sorted(
        events.loc[events["customer_id"] == customer, "event_id"])
    assert not (warehouse.events_dir / JOURNAL).exists()


def test_a_crash_while_deleting_leaves_every_event_readable_once(warehouse, tiny_shop,
                                                                 monkeypatch):
    from features.warehouse import EventCriteria

    warehouse.append_events(tiny_shop.events)
    before = sorted(warehouse.events()["event_id"])

    calls, real_replace = [], os.replace

    def crash_on_the_third(*args, **kwargs):  # the removed rows, the journal, then the new part
        calls.append(args)
        if len(calls) == 3:
            raise OSError("disk gone")
        return real_replace(*args, **kwargs)

    monkeypatch.setattr(os, "replace", crash_on_the_third)  # the new part never comes into view
    with pytest.raises(OSError):
        warehouse.delete_events(EventCriteria(start=tiny_shop.events["timestamp"].min()))
    monkeypatch.undo()
    assert (warehouse.events_dir / JOURNAL).exists()
    assert sorted(warehouse.events()["event_id"]) == before
    warehouse.compact()  # the next write discards the unfinished deletion
    assert sorted(warehouse.events()["event_id"]) == before


def test_a_deletion_that_matches_nothing_changes_nothing(warehouse, tiny_shop):
    from features.warehouse import EventCriteria

    warehouse.append_events(tiny_shop.events)
    parts = sorted(warehouse.events_dir.glob("part-*"))
    result = warehouse.delete_events(EventCriteria(event_ids=("no-such-event",)))
    assert result.removed == 0 and result.kept_in is None
    assert sorted(warehouse.events_dir.glob("part-*")) == parts


# ---------------------------------------------------------------------------- dates no shop has
def test_events_stored_outside_the_accepted_times_are_left_out_and_reported(warehouse, tiny_shop):
    from datetime import UTC, datetime, timedelta

    from features.event_time import TimeWindow

    strange = tiny_shop.events.iloc[[0, 1]].assign(
        event_id=["from-9999", "from-1970"],
        timestamp=pd.to_datetime(["9999-12-31T23:59:59Z", "1970-01-01T00:00:00Z"], utc=True))
    warehouse.append_events(pd.concat([tiny_shop.events, strange]))  # as before the check
    window = TimeWindow(datetime(1990, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC),
                        timedelta(minutes=10))
    reported: list[str] = []
    events = warehouse.events_within(window, reported.append)
    assert len(events) == len(tiny_shop.events)
    assert not {"from-9999", "from-1970"} & set(events["event_id"])
    outside = warehouse.events_outside(window)
    assert sorted(outside["event_id"]) == ["from-1970", "from-9999"]
    assert outside["file"].str.startswith("part-").all() and (outside["row"] >= 1).all()
    [message] = reported
    assert message.startswith("2 stored event(s) are dated outside the accepted times")
    assert "from-9999 at 9999-12-31" in message and "nextbest events delete" in message

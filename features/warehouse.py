"""The local warehouse: the contract tables as Parquet files under one directory.

Layout under ``root``::

    events/part-<time>-<id>.parquet     append-only batches of events
    exposures/part-<time>-<id>.parquet  append-only batches of exposures (nextbest's own log)
    items.parquet                       the catalog, one row per item_id
    customers.parquet                   the customers, one row per customer_id

Why this shape: events only ever grow, so each batch becomes a new immutable part and an
append never rewrites what is already stored. A part is written to a temporary name and then
renamed, and readers only see names that start with ``part-``, so a crash mid-write leaves the
previous state readable. Appends are idempotent by ``event_id`` (events already stored are
skipped), and a lock file keeps two writers from racing each other. Items and customers are
small next to events; an upsert rewrites the whole file the same atomic way.

Compaction: the service appends a part every flush (a minute by default), which would be
half a million files a year, each opened by every read. So after each append, parts of about
the same size are merged, ``FAN_IN`` at a time (size-tiered, as log-structured stores do):
the parts stay a few dozen, and an event is rewritten about once per eightfold growth. A
merge writes the new part, then a journal naming it and the parts it replaces, then renames
the new part into view, deletes the old ones, and deletes the journal. A reader that lists the new part
while the journal is there leaves out the old ones; one that lists a part deleted before it
was read lists again. A crash at any step leaves every event readable exactly once, and the
next write finishes or discards the merge.

Deleting events (:meth:`Warehouse.delete_events`, for a batch that should never have been
accepted) is a merge that keeps only the other rows: the parts holding matching events are
replaced by one new part through the same journal, after the removed rows are written aside
(``deleted/``) and before the deletion is logged (``deletions.jsonl``).

DuckDB queries the files in place (:meth:`Warehouse.query`); pandas reads them for training.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import math
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from features.contracts import (
    CUSTOMERS,
    EVENTS,
    EXPOSURES,
    ITEMS,
    TableContract,
    arrow_schema,
    contract_for,
)
from features.event_time import TimeWindow
from features.loading import OnError, load_table
from features.validation import ValidationReport

T = TypeVar("T")
FAN_IN = 8
"""Event parts of about the same size (a tier: rows within a factor of ``FAN_IN``) merged at a
time."""
LARGE_PART_ROWS = 4_000_000
"""Parts with this many events are left as they are."""
JOURNAL = ".compaction.json"
READ_ATTEMPTS = 5


DELETIONS_LOG = "deletions.jsonl"
CHECKPOINT_KEY = "nextbest.moved_through."
"""Parquet metadata key (plus the online log's id) of the last log position an exposure part
holds."""


@dataclass(frozen=True)
class EventCriteria:
    """Which stored events to remove: those matching every condition given (at least one)."""

    event_ids: tuple[str, ...] = ()
    customer_ids: tuple[str, ...] = ()
    start: datetime | None = None
    """Events at or after this time (UTC)."""
    end: datetime | None = None
    """Events before this time (UTC)."""

    def __post_init__(self) -> None:
        if not (self.event_ids or self.customer_ids or self.start or self.end):
            raise ValueError("say which events to delete: event ids, customers, or a time range "
                             "(deleting every event is not an option)")
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise ValueError(f"the time range is empty: from {self.start.isoformat()} is not "
                             f"before to {self.end.isoformat()}")

    def expression(self) -> ds.Expression:
        parts = _event_filters(self.start, self.end, self.customer_ids or None)
        if self.event_ids:
            parts.append(ds.field("event_id").isin(list(self.event_ids)))
        condition = parts[0]
        for part in parts[1:]:
            condition = condition & part
        return condition

    def describe(self) -> dict[str, object]:
        return {"event_ids": list(self.event_ids), "customer_ids": list(self.customer_ids),
                "start": self.start.isoformat() if self.start else None,
                "end": self.end.isoformat() if self.end else None}


@dataclass(frozen=True)
class DeleteResult:
    removed: int
    kept_in: Path | None
    """Where the removed events were written (None when nothing was removed)."""
    dry_run: bool = False


@dataclass(frozen=True)
class WriteResult:
    """What one write did: rows that were new, rows already there (skipped or replaced)."""

    table: str
    added: int
    existing: int
    report: ValidationReport | None = None
    quarantine_path: Path | None = None


class Warehouse:
    """Parquet tables under ``root``, appended idempotently and atomically."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.events_dir = self.root / "events"
        self._event_parts = _Parts(self.events_dir, arrow_schema(EVENTS))
        self._exposure_parts = _Parts(self.root / "exposures", arrow_schema(EXPOSURES))

    # ------------------------------------------------------------------ writing
    def append_events(self, events: pd.DataFrame) -> WriteResult:
        """Store the events whose ``event_id`` is not stored yet; return how many were new."""
        batch = self._to_arrow(events, EVENTS)
        with self._locked():
            stored = self._stored_event_ids()
            fresh = batch if stored is None else batch.filter(
                pc.invert(pc.is_in(batch["event_id"], value_set=stored))
            )
            if fresh.num_rows:
                self._event_parts.write(fresh)
        return WriteResult("events", fresh.num_rows, batch.num_rows - fresh.num_rows)

    def append_exposures(self, rows: pa.Table, log_id: str, through: int) -> int:
        """Store exposure rows moved from the online store's log, up to log position
        ``through`` of the log ``log_id``; return how many rows were stored.

        The position is written into the part itself (Parquet metadata), so the part and "moved
        up to here" land in one rename: a flush repeated after a crash sends rows up to a
        position already stored, which are skipped here. Rows carry their log position in the
        ``_position`` column, which is not stored."""
        with self._locked():
            done = self.exposure_checkpoint(log_id)
            if done is not None:
                rows = rows.filter(pc.greater(rows["_position"], done))
            if not rows.num_rows:
                return 0
            table = rows.drop_columns(["_position"]).select(EXPOSURES.column_names).cast(
                arrow_schema(EXPOSURES))
            self._exposure_parts.write(table, {f"{CHECKPOINT_KEY}{log_id}": str(through)})
        return table.num_rows

    def exposure_checkpoint(self, log_id: str) -> int | None:
        """The last position of the online log ``log_id`` whose exposures are stored."""
        key = f"{CHECKPOINT_KEY}{log_id}".encode()
        found = [int(meta[key]) for part in _listing_again(self._exposure_parts.parts)
                 if (meta := pq.read_schema(part).metadata) and key in meta]
        return max(found, default=None)

    def exposures(self, start: datetime | pd.Timestamp | None = None,
                  end: datetime | pd.Timestamp | None = None) -> pd.DataFrame:
        """Exposure rows with ``start <= timestamp < end`` (see ``EXPOSURES``)."""
        condition = None
        for part in _event_filters(start, end, None):
            condition = part if condition is None else condition & part

        def read() -> pd.DataFrame:
            dataset = self._exposure_parts.dataset()
            if dataset is None:
                return arrow_schema(EXPOSURES).empty_table().to_pandas()
            return dataset.to_table(filter=condition).to_pandas()

        return _listing_again(read)

    def delete_events(self, criteria: EventCriteria, dry_run: bool = False) -> DeleteResult:
        """Remove the events that match ``criteria`` (all of its conditions), atomically.

        The parts holding them are rewritten as one new part without them, through the same
        journal as a merge, so a reader or a crash sees every event before or every event after,
        never half. The removed events are first written to ``deleted/events-<time>.parquet``
        (import that file to undo), and each deletion is logged to ``deletions.jsonl``."""
        condition = criteria.expression()
        with self._locked():
            self._event_parts.finish_merge()
            affected, removed = [], []
            for part in self._parts():
                matching = self._event_parts.read(part).filter(condition)
                if matching.num_rows:
                    affected.append(part)
                    removed.append(matching)
            count = sum(t.num_rows for t in removed)
            if dry_run or not count:
                return DeleteResult(count, None, dry_run)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
            kept = self.root / "deleted" / f"events-{stamp}.parquet"
            self._write_atomically(pa.concat_tables(removed), kept)
            self._event_parts.merge(affected, keep=~condition)
            entry = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "removed": count,
                     "criteria": criteria.describe(), "kept_in": str(kept)}
            with open(self.root / DELETIONS_LOG, "a") as log:
                log.write(json.dumps(entry) + "\n")
                log.flush()
                os.fsync(log.fileno())
        return DeleteResult(count, kept, False)

    def compact(self) -> int:
        """Merge event parts of about the same size (appends do this themselves); return how
        many parts the merges removed."""
        with self._locked():
            return self._event_parts.compact()

    def upsert(self, table: str, rows: pd.DataFrame) -> WriteResult:
        """Insert or replace items or customers by their key; the newest row for a key wins."""
        contract = contract_for(table)
        if contract is EVENTS:
            raise ValueError("events are append-only: use append_events")
        batch = self._to_arrow(rows, contract).to_pandas()
        path = self._table_path(contract)
        with self._locked():
            current = self.read(table)
            existing = int(current[contract.key].isin(batch[contract.key]).sum())
            kept = current[~current[contract.key].isin(batch[contract.key])]
            merged = pd.concat([kept, batch], ignore_index=True) if len(kept) else batch
            merged = merged.drop_duplicates(contract.key, keep="last")
            self._write_atomically(self._to_arrow(merged, contract), path)
        return WriteResult(table, len(batch) - existing, existing)

    def import_file(
        self,
        path: Path,
        table: str,
        on_error: OnError = "reject",
        max_problems: int = 100,
    ) -> WriteResult:
        """Validate a file against its contract and write its good rows (see ``load_table``)."""
        contract = contract_for(table)
        loaded = load_table(path, contract, on_error, self.root / "quarantine", max_problems)
        write = self.append_events if contract is EVENTS else functools.partial(self.upsert, table)
        result = write(loaded.frame)
        return WriteResult(result.table, result.added, result.existing, loaded.report,
                           loaded.quarantine_path)

    # ------------------------------------------------------------------ reading
    def read(self, table: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """A whole table as a DataFrame (empty, with the contract's columns, if nothing stored)."""
        contract = contract_for(table)
        if contract is EVENTS:
            return self.events(columns=columns)
        path = self._table_path(contract)
        schema = arrow_schema(contract)
        if not path.exists():
            frame = schema.empty_table().to_pandas()
        else:
            frame = pq.read_table(path, columns=list(columns) if columns else None).to_pandas()
        return frame[list(columns)] if columns else frame

    def items(self) -> pd.DataFrame:
        return self.read("items")

    def customers(self) -> pd.DataFrame:
        return self.read("customers")

    def events(
        self,
        columns: Sequence[str] | None = None,
        start: datetime | pd.Timestamp | None = None,
        end: datetime | pd.Timestamp | None = None,
        customer_ids: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Events with ``start <= timestamp < end``, optionally for some customers only.

        ``end`` is exclusive so that "everything known before the cutoff" is ``end=cutoff``.
        """
        condition = None
        for part in _event_filters(start, end, customer_ids):
            condition = part if condition is None else condition & part

        def read() -> pd.DataFrame:
            dataset = self._events_dataset()
            if dataset is None:
                empty = arrow_schema(EVENTS).empty_table().to_pandas()
                return empty[list(columns)] if columns else empty
            return dataset.to_table(columns=list(columns) if columns else None,
                                    filter=condition).to_pandas()

        return _listing_again(read)

    def events_within(self, window: TimeWindow, report: Callable[[str], None]
                      ) -> pd.DataFrame:
        """The events dated inside ``window``. Events stored outside it (before such events were
        refused at the door, or written by hand) are left out and reported through ``report``
        with where they are, so a job or a start-up goes on without them instead of failing on
        dates no shop has (a year-9999 event had made every start crash-loop)."""
        outside = self.events_outside(window)
        if len(outside):
            examples = "; ".join(f"{r.file} row {r.row}: {r.event_id} at {r.timestamp}"
                                 for r in outside.head(5).itertuples())
            report(f"{len(outside):,} stored event(s) are dated outside the accepted times "
                   f"({window.earliest:%Y-%m-%d} to now plus the tolerance) and are left out, "
                   f"e.g. {examples}; remove them with 'nextbest events delete --event-id ...' "
                   "(or --from / --to)")
        return self.events(start=window.earliest, end=window.latest)

    def events_outside(self, window: TimeWindow) -> pd.DataFrame:
        """Stored events dated outside ``window``: part file, row (from 1), event id, time."""
        found = []
        for part in _listing_again(self._parts):
            times = pq.read_table(part, columns=["timestamp"])["timestamp"]  # ids only if needed
            outside = pc.or_(pc.less(times, pa.scalar(window.earliest, times.type)),
                             pc.greater_equal(times, pa.scalar(window.latest, times.type)))
            rows = np.flatnonzero(outside.to_numpy(zero_copy_only=False))
            if rows.size:
                ids = pq.read_table(part, columns=["event_id"])["event_id"]
                found.append(pd.DataFrame({
                    "file": part.name, "row": rows + 1,
                    "event_id": ids.take(rows).to_pylist(),
                    "timestamp": pc.cast(times.take(rows), pa.string()).to_pylist()}))
        columns = ["file", "row", "event_id", "timestamp"]
        return pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=columns)

    def query(self, sql: str) -> pd.DataFrame:
        """Run DuckDB SQL over views named ``events``, ``items``, ``customers`` and
        ``exposures``."""
        return self.analyse(
            lambda connection: _plain_numbers(connection.sql(sql).to_arrow_table()).to_pandas())

    def analyse(self, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """``work`` run on a fresh ``connect()``ion, run again on a new listing of the parts if
        a merge deleted one it had listed (readers take no lock)."""
        def read() -> T:
            with self.connect() as connection, files_may_vanish():
                return work(connection)

        return _listing_again(read)

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with every table as a view over its files, for a job that runs
        several queries (``query`` runs one). Close it (``with``) when done.

        The views read the Parquet files with DuckDB's own reader (``read_parquet``: columns
        and row groups it needs, on every core), three times faster than scanning them through
        Arrow; parts written before a column was added read it as NULL (``union_by_name``). A
        merge may delete a listed part before a query reads it: DuckDB's error is raised as
        ``FileNotFoundError``, which ``query`` answers by listing again."""
        connection = duckdb.connect()
        # results are ordered by ORDER BY where it matters; without it DuckDB need not keep
        # the scan's order when it builds a table (less memory, more parallel)
        connection.execute("SET preserve_insertion_order = false")
        tables = [(EVENTS, self._event_parts.parts()),
                  (EXPOSURES, self._exposure_parts.parts()),
                  *((c, [p] if (p := self._table_path(c)).exists() else [])
                    for c in (ITEMS, CUSTOMERS))]
        for contract, files in tables:
            if not files:
                connection.register(contract.name, arrow_schema(contract).empty_table())
                continue
            columns = ", ".join(f'"{c.name}"' for c in contract.columns)
            listed = ", ".join(f"'{path}'" for path in files)
            connection.execute(f'CREATE VIEW "{contract.name}" AS SELECT {columns} FROM '
                               f"read_parquet([{listed}], union_by_name = true)")
        return connection

    def counts(self) -> dict[str, int]:
        """Rows stored per table, read from Parquet metadata (cheap at any size)."""
        counts = {"events": _listing_again(
            lambda: sum(pq.ParquetFile(p).metadata.num_rows for p in self._parts()))}
        for contract in (ITEMS, CUSTOMERS):
            path = self._table_path(contract)
            counts[contract.name] = pq.ParquetFile(path).metadata.num_rows if path.exists() else 0
        return counts

    def fingerprint(self) -> str:
        """A short hash that changes whenever any stored table changes (for model lineage)."""
        def read() -> str:
            digest = hashlib.sha256()
            files = [*self._parts(), self._table_path(ITEMS), self._table_path(CUSTOMERS)]
            for path in files:
                if path.exists():
                    stat = path.stat()
                    digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
            return digest.hexdigest()[:16]

        return _listing_again(read)

    # ------------------------------------------------------------------ internals
    def _parts(self) -> list[Path]:
        return self._event_parts.parts()

    def _events_dataset(self) -> ds.Dataset | None:
        return self._event_parts.dataset()

    def _stored_event_ids(self) -> pa.Array | None:
        dataset = self._events_dataset()
        if dataset is None:
            return None
        return dataset.to_table(columns=["event_id"])["event_id"].combine_chunks()

    def _table_path(self, contract: TableContract) -> Path:
        return self.root / f"{contract.name}.parquet"

    def _to_arrow(self, frame: pd.DataFrame, contract: TableContract) -> pa.Table:
        missing = [c for c in contract.column_names if c not in frame.columns]
        if missing:
            raise ValueError(
                f"{contract.name} rows lack column(s) {', '.join(missing)}; validate them against "
                f"the contract first (features.loading.check_frame)"
            )
        table = pa.Table.from_pandas(
            frame[contract.column_names], schema=arrow_schema(contract), preserve_index=False
        )
        return table.replace_schema_metadata(None)  # the contract, not pandas, owns the types

    def _write_atomically(self, table: pa.Table, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = _write_unseen(table, target.parent)
        try:
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _write_unseen(table: pa.Table, directory: Path) -> Path:
    """``table`` on disk (fsynced) under a name no reader lists."""
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / f".tmp-{uuid.uuid4().hex}.parquet"
    try:
        pq.write_table(table, temporary, compression="zstd")
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


class _Parts:
    """An append-only table as immutable Parquet parts in one directory, merged size-tiered
    through a journal (the module docstring says how and why). The warehouse's lock is held
    around every change."""

    def __init__(self, directory: Path, schema: pa.Schema, order_by: str = "timestamp") -> None:
        self.directory = directory
        self.schema = schema
        self.order_by = order_by

    def parts(self) -> list[Path]:
        """The parts to read: listed first, then the journal read, so that a merge's new part
        is never counted with the parts it replaces."""
        if not self.directory.exists():
            return []
        parts = sorted(self.directory.glob("part-*.parquet"))
        journal = self._journal()
        if journal is not None and journal["target"] in {p.name for p in parts}:
            replaced = set(journal["sources"])
            parts = [p for p in parts if p.name not in replaced]
        return parts

    def dataset(self) -> ds.Dataset | None:
        parts = self.parts()
        if not parts:
            return None
        return ds.dataset([str(p) for p in parts], schema=self.schema, format="parquet")

    def write(self, table: pa.Table, metadata: dict[str, str] | None = None) -> Path:
        """A new part holding ``table`` (in time order), then merges where a tier is full."""
        table = table.sort_by([(self.order_by, "ascending")])
        if metadata:
            table = table.replace_schema_metadata(metadata)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        target = self.directory / f"part-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
        temporary = _write_unseen(table, self.directory)
        try:
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        self.compact()
        return target

    def read(self, part: Path) -> pa.Table:
        return pq.read_table(part, schema=self.schema)

    def compact(self) -> int:
        """Merge tier by tier until no tier holds ``FAN_IN`` parts."""
        self.finish_merge()
        removed = 0
        while group := self._mergeable():
            self.merge(group)
            removed += len(group) - 1
        return removed

    def _mergeable(self) -> list[Path]:
        """The oldest ``FAN_IN`` parts of the smallest tier that has that many."""
        tiers: dict[int, list[Path]] = {}
        for part in self.parts():
            rows = pq.ParquetFile(part).metadata.num_rows
            if rows < LARGE_PART_ROWS:
                tiers.setdefault(int(math.log(max(rows, 1), FAN_IN)), []).append(part)
        for tier in sorted(tiers):
            if len(tiers[tier]) >= FAN_IN:
                return tiers[tier][:FAN_IN]
        return []

    def merge(self, sources: list[Path], keep: ds.Expression | None = None) -> None:
        """Replace ``sources`` by one part holding their rows (those ``keep`` selects); the
        sources' metadata is kept (the newest part's, on a conflict)."""
        metadata: dict[bytes, bytes] = {}
        for part in sources:
            metadata.update(pq.read_schema(part).metadata or {})
        table = pa.concat_tables([self.read(p) for p in sources])
        if keep is not None:
            table = table.filter(keep)
        table = table.sort_by([(self.order_by, "ascending")])
        if metadata:
            table = table.replace_schema_metadata(metadata)
        stamp = sources[0].name.split("-")[1]  # the new part sorts where the oldest one did
        target = self.directory / f"part-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
        temporary = _write_unseen(table, self.directory)
        self._write_journal({"target": target.name, "sources": [p.name for p in sources]})
        os.replace(temporary, target)
        self.finish_merge()

    def finish_merge(self) -> None:
        """Complete a merge the journal names (its new part is in view: delete the parts it
        replaces), or discard it (its new part never came into view)."""
        journal = self._journal()
        if journal is None:
            return
        if (self.directory / journal["target"]).exists():
            for name in journal["sources"]:
                (self.directory / name).unlink(missing_ok=True)
        (self.directory / JOURNAL).unlink()
        for leftover in self.directory.glob(".tmp-*.parquet"):
            leftover.unlink(missing_ok=True)

    def _journal(self) -> dict | None:
        try:
            return json.loads((self.directory / JOURNAL).read_text())
        except FileNotFoundError:
            return None

    def _write_journal(self, entry: dict) -> None:
        temporary = self.directory / f".journal-{uuid.uuid4().hex}"
        with open(temporary, "w") as handle:
            json.dump(entry, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.directory / JOURNAL)


@contextmanager
def files_may_vanish() -> Iterator[None]:
    """DuckDB's error for a part a merge deleted after it was listed, as the
    ``FileNotFoundError`` that ``_listing_again`` retries on."""
    try:
        yield
    except duckdb.IOException as error:
        if "No such file" in str(error) or "does not exist" in str(error):
            raise FileNotFoundError(str(error)) from error
        raise


def _listing_again(read):
    """``read()``, listed and read again if a merge deleted a part it had listed (readers take
    no lock, so that a long training read never holds up the service's appends)."""
    for _ in range(READ_ATTEMPTS - 1):
        try:
            return read()
        except FileNotFoundError:
            continue
    return read()


def _plain_numbers(table: pa.Table) -> pa.Table:
    """DuckDB sums and counts can come back as 128-bit decimals, which pandas holds as Python
    objects (no arithmetic, no plots): make whole ones int64 and the rest float64."""
    for index, field in enumerate(table.schema):
        if pa.types.is_decimal(field.type):
            target = pa.int64() if field.type.scale == 0 else pa.float64()
            table = table.set_column(index, field.name, table.column(index).cast(target))
    return table


def _event_filters(start, end, customer_ids) -> list[ds.Expression]:
    filters = []
    if start is not None:
        filters.append(ds.field("timestamp") >= pa.scalar(_utc(start), pa.timestamp("us", "UTC")))
    if end is not None:
        filters.append(ds.field("timestamp") < pa.scalar(_utc(end), pa.timestamp("us", "UTC")))
    if customer_ids is not None:
        filters.append(ds.field("customer_id").isin(list(customer_ids)))
    return filters


def _utc(moment: datetime | pd.Timestamp) -> datetime:
    stamp = pd.Timestamp(moment)
    if stamp.tzinfo is None:
        raise ValueError(f"time {moment!r} has no timezone; pass a timezone-aware (UTC) time")
    return stamp.tz_convert("UTC").to_pydatetime()

"""The embedded online store: one SQLite file in WAL mode, no server to run.

Every write is a ``BEGIN IMMEDIATE`` transaction. With ``synchronous=FULL`` (the default) a commit
returns once its data is on disk; with ``NORMAL`` (``NEXTBEST_ONLINE_SYNC=normal``) once it is
in the WAL file, which a killed process cannot lose but a power cut can. Either way a process
killed right after an acknowledgement loses nothing. Several worker
processes on one machine can share the file (WAL lets readers run beside the one writer); for
several machines, use the Redis backend.
"""

from __future__ import annotations

import fcntl
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import orjson

from features.exposures import Exposure
from features.online.state import CustomerState
from features.online.store import (
    OnlineStateUnavailable,
    OnlineStore,
    logged_event,
    update_states,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (event_id TEXT PRIMARY KEY, received REAL NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS event_log (position INTEGER PRIMARY KEY AUTOINCREMENT,
                                      event TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS customers (customer_id TEXT PRIMARY KEY, state TEXT NOT NULL,
                                      cart_updated REAL, journey_due REAL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS customers_open_carts ON customers (cart_updated)
    WHERE cart_updated IS NOT NULL;
CREATE TABLE IF NOT EXISTS outbox (position INTEGER PRIMARY KEY AUTOINCREMENT,
                                   firing_key TEXT NOT NULL UNIQUE, decision TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS exposure_log (position INTEGER PRIMARY KEY AUTOINCREMENT,
                                         size INTEGER NOT NULL, batch BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta VALUES ('log_id', lower(hex(randomblob(16))));
"""
CHUNK = 500  # well under SQLite's limit on ? parameters per statement


class EmbeddedStore(OnlineStore):
    name = "embedded"
    reads_over_network = False

    def __init__(self, path: Path, dedup_window_days: float = 7.0,
                 sync: Literal["full", "normal"] = "full") -> None:
        self.path = Path(path)
        self.sync = sync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dedup_window = dedup_window_days * 86400
        self._local = threading.local()
        self._db.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Files made before journeys lack ``journey_due``: add it (NULL: none due) and its
        index, once."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(customers)")}
        with self._write() as db:
            if "journey_due" not in columns:
                db.execute("ALTER TABLE customers ADD COLUMN journey_due REAL")
            db.execute("CREATE INDEX IF NOT EXISTS customers_journeys_due ON customers "
                       "(journey_due) WHERE journey_due IS NOT NULL")

    # ------------------------------------------------------------------ connections
    @property
    def _db(self) -> sqlite3.Connection:
        """One connection per thread (BentoML runs sync endpoints in a thread pool)."""
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(f"PRAGMA synchronous={self.sync.upper()}")
                db.execute("PRAGMA cache_size=-65536")  # 64 MiB: keys are random, keep B-trees hot
                # A checkpoint (copying the WAL into the database, inside some writer's commit)
                # every 40 MiB rather than SQLite's 4 MiB: a page changed by many batches is
                # copied once, and a batch of events changes thousands of pages.
                db.execute("PRAGMA wal_autocheckpoint=10000")
            except sqlite3.Error as error:
                raise OnlineStateUnavailable(f"cannot open {self.path}: {error}") from error
            self._local.db = db
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One writer at a time, across threads and worker processes, queued on a file lock.

        SQLite alone would make a second writer poll with sleeps of up to 100 ms while the first
        commits; a blocking ``flock`` hands the lock over the moment it is released.
        """
        db = self._db
        with self._writer_lock():
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as error:
                raise OnlineStateUnavailable(f"cannot write {self.path}: {error}") from error
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @contextmanager
    def _writer_lock(self) -> Iterator[None]:
        handle = getattr(self._local, "lock", None)
        if handle is None:  # one open file per thread: flock excludes other open files
            handle = self._local.lock = open(self.path.with_suffix(".lock"), "a+b")  # noqa: SIM115
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ events
    def _commit_events(self, events: list[dict]) -> tuple[list[dict], dict[str, CustomerState]]:
        """Most of the work is done before taking the write lock, which every writer on the
        machine queues for: the events not seen yet are applied to their customers' states as
        stored now (WAL lets this read run beside a writer) and serialized. Under the lock the
        dedup check is repeated, and only the customers whose stored state changed meanwhile
        are computed again."""
        now = time.time()
        logged = {e["event_id"]: logged_event(e) for e in events}
        try:
            known = self._seen(self._db, events)
            unseen = [e for e in events if e["event_id"] not in known]
            read = self._state_texts(self._db, _customers(unseen))
        except sqlite3.Error as error:
            raise OnlineStateUnavailable(f"cannot read {self.path}: {error}") from error
        planned = _applied(read, unseen)
        with self._write() as db:
            seen = self._seen(db, events)
            fresh = [e for e in events if e["event_id"] not in seen]
            if not fresh:
                return [], {}
            db.executemany("INSERT INTO seen VALUES (?, ?)", [(e["event_id"], now) for e in fresh])
            db.executemany("INSERT INTO event_log (event) VALUES (?)",
                           [(logged[e["event_id"]],) for e in fresh])
            customers = _customers(fresh)
            stored = self._state_texts(db, customers)
            # Computed again: customers whose state another writer changed since it was read
            # (which an event it recorded first always does), and those with an event that
            # was not planned (one forgotten from the dedup window in between).
            planned_ids = {e["event_id"] for e in unseen}
            redo = {c for c in customers if stored.get(c) != read.get(c)}
            redo.update(e["customer_id"] for e in fresh if e["event_id"] not in planned_ids)
            states = {c: planned[c] for c in customers if c not in redo}
            if redo:
                states.update(_applied(stored, [e for e in fresh if e["customer_id"] in redo]))
            db.executemany(PUT, [row for _, row in states.values()])
        return fresh, {c: state for c, (state, _) in states.items()}

    @staticmethod
    def _seen(db: sqlite3.Connection, events: list[dict]) -> set[str]:
        """The ids among ``events`` recorded before."""
        ids = [e["event_id"] for e in events]
        seen: set[str] = set()
        for start in range(0, len(ids), CHUNK):
            part = ids[start:start + CHUNK]
            seen.update(row[0] for row in db.execute(
                f"SELECT event_id FROM seen WHERE event_id IN ({','.join('?' * len(part))})",
                part))
        return seen

    @staticmethod
    def _state_texts(db: sqlite3.Connection, customers: list[str]) -> dict[str, str]:
        """The stored states of ``customers`` as JSON (those with one)."""
        texts: dict[str, str] = {}
        for start in range(0, len(customers), CHUNK):
            part = customers[start:start + CHUNK]
            texts.update(db.execute(
                f"SELECT customer_id, state FROM customers WHERE customer_id IN "
                f"({','.join('?' * len(part))})", part))
        return texts

    def _states(self, db: sqlite3.Connection, customers: list[str]) -> dict[str, CustomerState]:
        return {c: CustomerState.from_json(text)
                for c, text in self._state_texts(db, customers).items()}

    @staticmethod
    def _state(db: sqlite3.Connection, customer_id: str) -> CustomerState:
        """One customer's state in one indexed lookup (an empty one if none is stored): every
        ``recommend`` reads one, and the general ``_states`` path (an IN list, a dict of
        results) costs twice as much."""
        found = db.execute("SELECT state FROM customers WHERE customer_id = ?",
                           (customer_id,)).fetchone()
        return CustomerState.from_json(found[0]) if found else CustomerState(customer_id)

    # ------------------------------------------------------------------ customers
    def customer(self, customer_id: str) -> CustomerState:
        try:
            return self._state(self._db, customer_id)
        except sqlite3.Error as error:
            raise OnlineStateUnavailable(f"cannot read {self.path}: {error}") from error

    def customers(self, customer_ids: list[str]) -> dict[str, CustomerState]:
        try:
            found = self._states(self._db, customer_ids)
        except sqlite3.Error as error:
            raise OnlineStateUnavailable(f"cannot read {self.path}: {error}") from error
        return {c: found.get(c) or CustomerState(c) for c in customer_ids}

    def open_carts(self, idle_since: float) -> list[str]:
        return [row[0] for row in self._db.execute(
            "SELECT customer_id FROM customers WHERE cart_updated IS NOT NULL "
            "AND cart_updated <= ? ORDER BY cart_updated", (idle_since,))]

    # ------------------------------------------------------------------ decisions
    def _commit_state(self, customer_id: str, change) -> CustomerState:
        with self._write() as db:
            state = self._state(db, customer_id)
            if change(state):
                _put(db, {customer_id: state})
        return state

    def commit_many(self, customer_ids: list[str], change) -> dict[str, list[dict]]:
        with self._write() as db:
            found = self._states(db, customer_ids)
            states = {c: found.get(c) or CustomerState(c) for c in customer_ids}
            done = {c: decisions for c, state in states.items()
                    if (decisions := change(state)) is not None}
            _put(db, {c: states[c] for c in done})
            db.executemany("INSERT INTO outbox (firing_key, decision) VALUES (?, ?)",
                           [(d["firing_key"], json.dumps(d))
                            for decisions in done.values() for d in decisions])
        return done

    def due_journeys(self, now: float, limit: int = 10_000) -> list[str]:
        try:
            return [row[0] for row in self._db.execute(
                "SELECT customer_id FROM customers WHERE journey_due IS NOT NULL "
                "AND journey_due <= ? ORDER BY journey_due LIMIT ?", (now, limit))]
        except sqlite3.Error as error:
            raise OnlineStateUnavailable(f"cannot read {self.path}: {error}") from error

    def outbox(self, after: str | None = None, limit: int = 100) -> list[tuple[str, dict]]:
        rows = self._db.execute(
            "SELECT position, decision FROM outbox WHERE position > ? ORDER BY position LIMIT ?",
            (int(after or 0), limit))
        return [(str(position), json.loads(text)) for position, text in rows]

    # ------------------------------------------------------------------ warehouse
    def pending_events(self, limit: int) -> tuple[list[str], list[dict]]:
        rows = self._db.execute(
            "SELECT position, event FROM event_log ORDER BY position LIMIT ?", (limit,)).fetchall()
        return [str(p) for p, _ in rows], [json.loads(text) for _, text in rows]

    def forget_events(self, positions: list[str]) -> None:
        if not positions:
            return
        with self._write() as db:
            db.execute("DELETE FROM event_log WHERE position <= ?", (max(map(int, positions)),))
            db.execute("DELETE FROM seen WHERE received < ?", (time.time() - self.dedup_window,))

    # ------------------------------------------------------------------ exposures
    @property
    def log_id(self) -> str:
        return self._db.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone()[0]

    def log_exposures(self, exposures: list[Exposure]) -> None:
        if not exposures:
            return
        batch = orjson.dumps(exposures)
        with self._write() as db:
            db.execute("INSERT INTO exposure_log (size, batch) VALUES (?, ?)",
                       (len(exposures), batch))

    def pending_exposures(self, limit: int) -> list[tuple[int, list[Exposure]]]:
        batches, count = [], 0
        for position, size, batch in self._db.execute(
                "SELECT position, size, batch FROM exposure_log ORDER BY position"):
            batches.append((position, orjson.loads(batch)))
            count += size
            if count >= limit:
                break
        return batches

    def forget_exposures(self, through: int) -> None:
        with self._write() as db:
            db.execute("DELETE FROM exposure_log WHERE position <= ?", (through,))

    # ------------------------------------------------------------------ health
    def ping(self) -> None:
        try:
            self._db.execute("SELECT 1").fetchone()
        except sqlite3.Error as error:
            raise OnlineStateUnavailable(f"cannot read {self.path}: {error}") from error

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
        lock = getattr(self._local, "lock", None)
        if lock is not None:
            lock.close()
            self._local.lock = None


PUT = ("INSERT OR REPLACE INTO customers (customer_id, state, cart_updated, journey_due) "
       "VALUES (?, ?, ?, ?)")
"""A state is stored with the columns the store indexes it by (open carts, journeys due)."""


def _row(state: CustomerState) -> tuple:
    return state.customer_id, state.to_json(), state.cart_updated, state.journey_due


def _put(db: sqlite3.Connection, states: dict[str, CustomerState]) -> None:
    db.executemany(PUT, [_row(state) for state in states.values()])


def _customers(events: list[dict]) -> list[str]:
    return list(dict.fromkeys(e["customer_id"] for e in events))


def _applied(texts: dict[str, str], events: list[dict]) -> dict[str, tuple[CustomerState, tuple]]:
    """The states ``events`` leave their customers in, from the stored ``texts`` (a new state
    for a customer without one), each with the row that stores it."""
    states = {c: CustomerState.from_json(texts[c])
              for c in dict.fromkeys(e["customer_id"] for e in events) if c in texts}
    update_states(states, events)
    return {c: (state, _row(state)) for c, state in states.items()}

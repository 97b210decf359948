"""The Redis online store: for several workers or instances sharing one customer state.

Keys (under a prefix, default ``nextbest:``): ``customer:<id>`` holds the state as JSON,
``seen:<day>`` is the set of event ids received that day (expiring after the deduplication
window), the ``carts`` sorted set indexes open carts by when they last grew, and two streams
hold the event log awaiting the warehouse (``events``, one entry per ingested batch) and the
decision outbox (``outbox``, one entry per decision, for other systems to ``XREAD``).

Each write is an optimistic transaction: ``WATCH`` the keys it reads, compute the new states with
the same Python code as the embedded backend, then ``MULTI``/``EXEC`` — retried if another
worker changed a watched key meanwhile. Redis applies all of it or none of it. Ingesting
writers also queue on a short Redis lock first, so that concurrent batches (which nearly always
share a customer or the day's seen-set) take turns instead of invalidating each other. How durable an
acknowledged event is depends on the server's persistence: run Redis with
``appendonly yes`` and ``appendfsync always`` for no loss on a server crash (docs/realtime.md).
"""

from __future__ import annotations

import json
import math
import time
import uuid

import numpy as np
import orjson
import redis

from features.exposures import Exposure
from features.online.state import CustomerState
from features.online.store import (
    OnlineStateUnavailable,
    OnlineStore,
    logged_event,
    update_states,
)

RETRIES = 20
LOCK_SECONDS = 5
"""How long the write lock lives, and how long a writer waits for it. A batch's transaction takes
milliseconds, so this only matters when a writer was killed holding the lock: the others wait at
most this long for it to expire (it was 30 s, and a restarted service's first writes stalled)."""
DAY = 86400
SEQUENCE_BITS = 20
"""A stream entry id ``<ms>-<seq>`` as one integer position: ms << 20 | seq. One entry is one
batch of exposures, so a millisecond never holds a million of them."""


def _position(entry_id: str) -> int:
    milliseconds, sequence = entry_id.split("-")
    return int(milliseconds) << SEQUENCE_BITS | int(sequence)


def _entry_id(position: int) -> str:
    return f"{position >> SEQUENCE_BITS}-{position & ((1 << SEQUENCE_BITS) - 1)}"


class RedisStore(OnlineStore):
    name = "redis"
    reads_over_network = True

    def __init__(self, url: str, prefix: str = "nextbest:", dedup_window_days: float = 7.0,
                 timeout_seconds: float = 2.0) -> None:
        self.url = url
        self.prefix = prefix
        self.dedup_window = int(dedup_window_days * 86400)
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_seconds,
                                           socket_connect_timeout=timeout_seconds)

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _unavailable(self, error: Exception) -> OnlineStateUnavailable:
        return OnlineStateUnavailable(f"redis at {self.url} is unreachable: {error}")

    def _transaction(self, keys: list[str], body):
        """Run ``body(pipe)`` under WATCH on ``keys``, retrying when another writer won."""
        try:
            for _ in range(RETRIES):
                with self.client.pipeline() as pipe:
                    try:
                        pipe.watch(*keys)
                        return body(pipe)
                    except redis.WatchError:
                        continue
            raise OnlineStateUnavailable(f"redis at {self.url}: too much contention on {keys[:3]}")
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise self._unavailable(error) from error

    # ------------------------------------------------------------------ events
    def _commit_events(self, events: list[dict]) -> tuple[list[dict], dict[str, CustomerState]]:
        ids = [e["event_id"] for e in events]
        buckets = self._seen_buckets(time.time())
        customers = list({e["customer_id"] for e in events})
        customer_keys = [self._key("customer", c) for c in customers]

        def body(pipe) -> tuple[list[dict], dict[str, CustomerState]]:
            seen = np.zeros(len(ids), dtype=bool)
            for bucket in buckets:
                seen |= np.asarray(pipe.smismember(bucket, ids), dtype=bool)
            fresh = [e for e, flag in zip(events, seen, strict=True) if not flag]
            if not fresh:
                return [], {}
            states = {c: CustomerState.from_json(text) for c, text
                      in zip(customers, pipe.mget(customer_keys), strict=True) if text}
            update_states(states, fresh)
            pipe.multi()
            pipe.sadd(buckets[-1], *(e["event_id"] for e in fresh))
            pipe.expire(buckets[-1], self.dedup_window + DAY)
            pipe.xadd(self._key("events"),  # one entry per batch: one command, not one per event
                      {"events": "[" + ",".join(logged_event(e) for e in fresh) + "]"})
            self._store_states(pipe, states)
            pipe.execute()
            return fresh, {c: states[c] for c in {e["customer_id"] for e in fresh}}

        try:  # writers queue on a lock instead of invalidating each other's WATCH and retrying
            with self.client.lock(self._key("write-lock"), timeout=LOCK_SECONDS, sleep=0.002,
                                  blocking_timeout=LOCK_SECONDS):
                return self._transaction([*buckets, *customer_keys], body)
        except redis.exceptions.LockError as error:
            raise OnlineStateUnavailable(f"redis at {self.url}: could not take the write lock "
                                         f"({error}); nothing was recorded") from error
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise self._unavailable(error) from error

    def _seen_buckets(self, now: float) -> list[str]:
        """One set of event ids per day received, each expiring after the window; today last."""
        today = int(now // DAY)
        days = math.ceil(self.dedup_window / DAY)
        return [self._key("seen", str(day)) for day in range(today - days, today + 1)]

    def _store_states(self, pipe, states: dict[str, CustomerState]) -> None:
        pipe.mset({self._key("customer", c): s.to_json() for c, s in states.items()})
        open_carts = {c: s.cart_updated for c, s in states.items() if s.cart_updated is not None}
        closed = [c for c, s in states.items() if s.cart_updated is None]
        if open_carts:
            pipe.zadd(self._key("carts"), open_carts)
        if closed:
            pipe.zrem(self._key("carts"), *closed)
        due = {c: s.journey_due for c, s in states.items() if s.journey_due is not None}
        idle = [c for c, s in states.items() if s.journey_due is None]
        if due:
            pipe.zadd(self._key("journeys_due"), due)
        if idle:
            pipe.zrem(self._key("journeys_due"), *idle)

    # ------------------------------------------------------------------ customers
    def customers(self, customer_ids: list[str]) -> dict[str, CustomerState]:
        try:
            texts = self.client.mget([self._key("customer", c) for c in customer_ids])
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise self._unavailable(error) from error
        return {c: CustomerState.from_json(t) if t else CustomerState(c)
                for c, t in zip(customer_ids, texts, strict=True)}

    def open_carts(self, idle_since: float) -> list[str]:
        try:
            members = self.client.zrangebyscore(self._key("carts"), "-inf", idle_since)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise self._unavailable(error) from error
        return [m.decode() for m in members]

    # ------------------------------------------------------------------ decisions
    def _commit_state(self, customer_id: str, change) -> CustomerState:
        key = self._key("customer", customer_id)

        def body(pipe) -> CustomerState:
            text = pipe.get(key)
            state = CustomerState.from_json(text) if text else CustomerState(customer_id)
            if change(state):
                pipe.multi()
                self._store_states(pipe, {customer_id: state})
                pipe.execute()
            return state

        return self._transaction([key], body)

    def commit_many(self, customer_ids: list[str], change) -> dict[str, list[dict]]:
        keys = [self._key("customer", c) for c in customer_ids]

        def body(pipe) -> dict[str, list[dict]]:
            states = {c: CustomerState.from_json(text) if text else CustomerState(c)
                      for c, text in zip(customer_ids, pipe.mget(keys), strict=True)}
            done = {c: decisions for c, state in states.items()
                    if (decisions := change(state)) is not None}
            if done:
                pipe.multi()
                self._store_states(pipe, {c: states[c] for c in done})
                for decisions in done.values():
                    for decision in decisions:
                        pipe.xadd(self._key("outbox"), {"decision": json.dumps(decision)})
                pipe.execute()
            return done

        return self._transaction(keys, body)

    def due_journeys(self, now: float, limit: int = 10_000) -> list[str]:
        try:
            members = self.client.zrangebyscore(self._key("journeys_due"), "-inf", now,
                                                start=0, num=limit)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise self._unavailable(error) from error
        return [m.decode() for m in members]

    def outbox(self, after: str | None = None, limit: int = 100) -> list[tuple[str, dict]]:
        start = f"({after}" if after else "-"
        try:
            entries = self.client.xrange(self._key("outbox"), start, "+", count=limit)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise self._unavailable(error) from error
        return [(position.decode(), json.loads(fields[b"decision"]))
                for position, fields in entries]

    # ------------------------------------------------------------------ warehouse
    def pending_events(self, limit: int) -> tuple[list[str], list[dict]]:
        """Whole logged batches, oldest first, until about ``limit`` events."""
        try:
            entries = self.client.xrange(self._key("events"), "-", "+", count=max(1, limit // 100))
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise self._unavailable(error) from error
        positions, events = [], []
        for position, fields in entries:
            positions.append(position.decode())
            events.extend(orjson.loads(fields[b"events"]))
            if len(events) >= limit:
                break
        return positions, events

    def forget_events(self, positions: list[str]) -> None:
        if positions:
            self.client.xdel(self._key("events"), *positions)

    # ------------------------------------------------------------------ exposures
    @property
    def log_id(self) -> str:
        key = self._key("log-id")
        try:
            self.client.set(key, uuid.uuid4().hex, nx=True)
            return self.client.get(key).decode()
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise self._unavailable(error) from error

    def log_exposures(self, exposures: list[Exposure]) -> None:
        if not exposures:
            return
        try:
            self.client.xadd(self._key("exposures"),
                             {"size": len(exposures), "batch": orjson.dumps(exposures)})
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise self._unavailable(error) from error

    def pending_exposures(self, limit: int) -> list[tuple[int, list[Exposure]]]:
        try:
            entries = self.client.xrange(self._key("exposures"), "-", "+",
                                         count=max(1, limit // 10))
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise self._unavailable(error) from error
        batches, count = [], 0
        for entry, fields in entries:
            batches.append((_position(entry.decode()), orjson.loads(fields[b"batch"])))
            count += int(fields[b"size"])
            if count >= limit:
                break
        return batches

    def forget_exposures(self, through: int) -> None:
        try:  # XTRIM MINID keeps entries at or after the id given: one past ``through``
            self.client.xtrim(self._key("exposures"), minid=_entry_id(through + 1),
                              approximate=False)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise self._unavailable(error) from error

    # ------------------------------------------------------------------ health
    def ping(self) -> None:
        try:
            self.client.ping()
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise self._unavailable(error) from error

    def close(self) -> None:
        self.client.close()

    def clear(self) -> None:
        """Delete every key under this store's prefix (tests and ``nextbest online reset``)."""
        keys = list(self.client.scan_iter(match=self.prefix + "*", count=1000))
        for start in range(0, len(keys), 1000):
            self.client.delete(*keys[start:start + 1000])


"""Events from a message bus: a NATS JetStream consumer feeding the same validation, dedup and
online state as ``POST /events``.

Many storefronts publish their events to a bus rather than calling an API. ``nextbest events
consume`` reads them from a JetStream stream with a durable pull consumer, one process per
deployment (JetStream shares a durable consumer's messages among the processes pulling from it,
so more can be started where one is not enough):

* **each message** is one event (a JSON object) or a batch (``{"events": [...]}``), as the
  endpoint takes them;
* **at least once, effectively once**: a message is acknowledged only once its events are
  committed to the online store (or dead-lettered), while the next batch is already being
  fetched; a message redelivered after a crash brings
  events whose ``event_id`` is already stored, which count as duplicates, as a re-sent event
  does on ``/events``;
* **bad input is kept, not lost**: a message that is not JSON, and each event the contract
  refuses, is published to the dead-letter subject with the reason (the endpoint's message
  naming the field and value) and the original payload, then acknowledged;
* **an online store that is down** is not the message's fault: nothing is acknowledged, the
  consumer waits ``ack_wait`` rather than pull more, and JetStream redelivers the batch;
* **lag**: the consumer's pending messages are read from JetStream (:func:`consumer_lag`); the
  service publishes them on ``/metrics`` as ``nextbest_stream_pending_messages``.

The stream is created if it does not exist (file storage, the subject below); the dead-letter
subject is outside it, so a shop can keep it in a stream of its own or just watch it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import logging
import multiprocessing
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import orjson

from features.ingest import parse_events
from features.online.store import OnlineStateUnavailable, OnlineStore
from features.settings import Settings
from serving.workarounds.jetstream_fetch import BatchPuller

log = logging.getLogger("nextbest.stream")


@dataclass(frozen=True)
class StreamConfig:
    """Where the events come from; read from the settings (``NEXTBEST_STREAM_*``)."""

    url: str
    stream: str
    subject: str
    durable: str
    dead_letter: str
    batch: int
    ack_wait_seconds: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamConfig:
        return cls(settings.stream_url, settings.stream_name, settings.stream_subject,
                   settings.stream_consumer, settings.stream_dead_letter,
                   settings.stream_batch)


@dataclass
class ConsumerStats:
    messages: int = 0
    accepted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    first: float | None = None
    """When the first message arrived (monotonic seconds): the rate counts from there."""
    last: float | None = None

    @property
    def rate(self) -> float:
        """Events handled (recorded or found duplicate) per second between the first message
        and the last batch."""
        if self.first is None or self.last is None or self.last <= self.first:
            return 0.0
        return (self.accepted + self.duplicates) / (self.last - self.first)

    @classmethod
    def combined(cls, parts: list[ConsumerStats]) -> ConsumerStats:
        """Several processes' figures as one: counts added, the rate over the span from the
        first process's first message to the last one's last batch."""
        firsts = [p.first for p in parts if p.first is not None]
        lasts = [p.last for p in parts if p.last is not None]
        return cls(sum(p.messages for p in parts), sum(p.accepted for p in parts),
                   sum(p.duplicates for p in parts), sum(p.dead_lettered for p in parts),
                   min(firsts, default=None), max(lasts, default=None))

    def line(self) -> str:
        rate = self.rate
        return (f"{self.messages:,} messages: {self.accepted:,} events recorded, "
                f"{self.duplicates:,} duplicates, {self.dead_lettered:,} dead-lettered "
                f"({rate:,.0f} events/s)")


def decode(data: bytes) -> tuple[list[object], str | None]:
    """The events a message carries, or why it carries none."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        return [], f"the message is not JSON ({error})"
    if isinstance(body, dict) and "events" in body:
        events = body["events"]
        if not isinstance(events, list):
            return [], f"events must be a list of events, got {type(events).__name__}"
        return events, None
    if isinstance(body, dict):
        return [body], None
    return [], f"a message is one event (an object) or {{\"events\": [...]}}, got {type(body).__name__}"


async def connect(config: StreamConfig, create: bool = True):
    """A JetStream context on ``config.url``; with ``create``, the stream is created if it
    does not exist (the consumer and publishers do; reading the lag does not)."""
    import nats
    from nats.js.api import StorageType
    from nats.js.api import StreamConfig as JetStreamConfig
    from nats.js.errors import NotFoundError

    try:
        client = await nats.connect(config.url, connect_timeout=5, max_reconnect_attempts=1,
                                    reconnect_time_wait=0.5, allow_reconnect=False,
                                    error_cb=_logged)
    except (OSError, nats.errors.Error) as error:
        raise ConnectionError(f"cannot reach NATS at {config.url}: {error}") from None
    jetstream = client.jetstream()
    if not create:
        return client, jetstream
    try:
        await jetstream.stream_info(config.stream)
    except NotFoundError:
        await jetstream.add_stream(JetStreamConfig(name=config.stream, subjects=[config.subject],
                                                   storage=StorageType.FILE))
    return client, jetstream


async def _logged(error: Exception) -> None:
    """nats-py's errors go to our log (its default prints each to standard error)."""
    log.debug("NATS: %s", error)


async def consume(store: OnlineStore, config: StreamConfig, stop: asyncio.Event,
                  on_batch: Callable[[ConsumerStats], None] | None = None,
                  idle_seconds: float | None = None) -> ConsumerStats:
    """Pull, validate, record and acknowledge until ``stop`` is set (or, with
    ``idle_seconds``, until nothing has arrived for that long: to drain a backlog)."""
    client, jetstream = await connect(config)
    stats = ConsumerStats()
    try:
        await _durable_consumer(jetstream, config)
        puller = BatchPuller(client, config.stream, config.durable)
        last = time.monotonic()

        def fetch() -> asyncio.Task:
            return asyncio.create_task(puller.pull(config.batch, timeout=0.5))

        upcoming = fetch()
        while not stop.is_set():
            messages = await upcoming
            upcoming = fetch()  # the next batch travels while this one is committed
            if not messages:
                if idle_seconds is not None and time.monotonic() - last >= idle_seconds:
                    break
                continue
            last = time.monotonic()
            if await _handle(messages, store, client, config, stats):
                if on_batch is not None:
                    on_batch(stats)
            else:  # the store is down: wait for the batch to come back rather than take more
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), config.ack_wait_seconds)
        upcoming.cancel()
    finally:
        await client.close()
    return stats


def run(settings: Settings, idle_seconds: float | None = None,
        on_batch: Callable[[ConsumerStats], None] | None = None) -> ConsumerStats:
    """One consumer process until SIGINT or SIGTERM (or idle): what ``nextbest events consume``
    runs in each of its processes."""
    from features.online import open_online_store

    store = open_online_store(settings)
    config = StreamConfig.from_settings(settings)

    async def until_stopped() -> ConsumerStats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await consume(store, config, stop, on_batch, idle_seconds)

    with fewer_collections():
        return asyncio.run(until_stopped())


def run_processes(settings: Settings, processes: int, idle_seconds: float | None = None,
                  on_batch: Callable[[ConsumerStats], None] | None = None) -> ConsumerStats:
    """``processes`` consumers on the same durable consumer, which JetStream shares its
    messages among. A consumer is one Python process and keeps one core busy; a second uses
    the second core (docs/benchmarks.md has the rates of one and of two). They write to the
    same online store, as the API's workers do. SIGINT or SIGTERM stops them all after their
    current batch."""
    if processes == 1:
        return run(settings, idle_seconds, on_batch)
    asyncio.run(prepare(StreamConfig.from_settings(settings)))  # once, not raced by the children
    context = multiprocessing.get_context("spawn")  # no forked copy of a running event loop
    results = context.Queue()
    children = [context.Process(target=_child, args=(settings, idle_seconds, on_batch, results),
                                name=f"consumer-{n + 1}") for n in range(processes)]
    for child in children:
        child.start()

    def stop(*_) -> None:  # SIGTERM to each: it finishes its batch and stops
        for child in children:
            if child.is_alive():
                child.terminate()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for child in children:
            child.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    failed = [child.name for child in children if child.exitcode != 0]
    if failed:
        raise ValueError(f"consumer process(es) {', '.join(failed)} stopped on an error (above); "
                         "their unacknowledged messages are redelivered after "
                         f"{StreamConfig.from_settings(settings).ack_wait_seconds:g} s")
    return ConsumerStats.combined([results.get(timeout=5) for _ in children])


def _child(settings: Settings, idle_seconds: float | None, on_batch, results) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent passes Ctrl+C on as SIGTERM
    try:
        results.put(run(settings, idle_seconds, on_batch))
    except (ConnectionError, OnlineStateUnavailable) as error:
        print(f"{multiprocessing.current_process().name}: {error}", file=sys.stderr)
        sys.exit(2)


async def prepare(config: StreamConfig) -> None:
    """The stream and the durable consumer, created unless they exist."""
    client, jetstream = await connect(config)
    try:
        await _durable_consumer(jetstream, config)
    finally:
        await client.close()


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Collect garbage less often while consuming: a batch's thousands of events, decoded
    states and rows would otherwise trigger several collections each, every one scanning what
    the batch has made so far. What is alive at the start is set aside (``gc.freeze``); each
    batch's objects are freed by reference counting anyway. The collector is as it was after
    (a command run inside another program, such as a test, leaves it alone)."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


async def _durable_consumer(jetstream, config: StreamConfig) -> None:
    """Create the durable pull consumer unless it exists (an existing one keeps its settings,
    as JetStream's own ``pull_subscribe`` does)."""
    from nats.js.api import AckPolicy, ConsumerConfig
    from nats.js.errors import NotFoundError

    try:
        await jetstream.consumer_info(config.stream, config.durable)
    except NotFoundError:
        await jetstream.add_consumer(config.stream, ConsumerConfig(
            durable_name=config.durable, filter_subject=config.subject,
            ack_policy=AckPolicy.EXPLICIT, ack_wait=config.ack_wait_seconds,
            max_ack_pending=-1))


async def _handle(messages: list, store: OnlineStore, client, config: StreamConfig,
                  stats: ConsumerStats) -> bool:
    """Record one fetched batch; False when the store is down (nothing acknowledged)."""
    if stats.first is None:
        stats.first = time.monotonic()
    raw: list[object] = []
    for message in messages:
        events, problem = decode(message.data)
        if problem is not None:
            await _dead_letter(client, config, message.data, problem)
            stats.dead_lettered += 1
        raw.extend(events)
    parsed = parse_events(raw, max_problems=len(raw))
    reasons: dict[int, list[str]] = {}
    for problem in parsed.problems:
        reasons.setdefault(problem.index, []).append(str(problem))
    for index in parsed.rejected:
        payload = json.dumps(raw[index], default=str).encode()
        await _dead_letter(client, config, payload, "; ".join(reasons.get(index, ["refused"])))
    stats.dead_lettered += len(parsed.rejected)
    try:
        result = await asyncio.to_thread(store.ingest, parsed.events)
    except OnlineStateUnavailable as error:
        log.error("the online store is unavailable (%s); %d messages left for redelivery",
                  error, len(messages))
        return False
    # Each message on its own: with ack-all, acknowledging a later batch after a failed one
    # would acknowledge the failed one too, and its events would be lost.
    for message in messages:
        await message.ack()
    stats.messages += len(messages)
    stats.last = time.monotonic()
    stats.accepted += result.accepted
    stats.duplicates += result.duplicates + parsed.repeated
    return True


async def _dead_letter(client, config: StreamConfig, payload: bytes, reason: str) -> None:
    """The payload and why, on the dead-letter subject (JSON, and the reason as a header)."""
    body = json.dumps({"reason": reason, "payload": payload.decode("utf-8", "replace")})
    await client.publish(config.dead_letter, body.encode(),
                         headers={"Nextbest-Reason": reason[:500].replace("\n", " ")})


async def consumer_lag(config: StreamConfig) -> tuple[int, int]:
    """(messages not yet delivered, delivered but not yet acknowledged) of the durable
    consumer: what ``/metrics`` reports."""
    client, jetstream = await connect(config, create=False)
    try:
        info = await jetstream.consumer_info(config.stream, config.durable)
        return int(info.num_pending or 0), int(info.num_ack_pending or 0)
    finally:
        await client.close()


@functools.cache
def lag_gauges():
    """The two gauges ``/metrics`` shows, created once per process, and only when asked for:
    prometheus_client must be imported after BentoML has set up its multiprocess directory in
    the worker (see ``bentoml.metrics``), and every worker reports the same figure (max)."""
    from prometheus_client import Gauge

    return (Gauge("nextbest_stream_pending_messages", "Events published on the stream that the "
                  "consumer has not taken yet.", multiprocess_mode="max"),
            Gauge("nextbest_stream_unacknowledged_messages", "Messages delivered to the "
                  "consumer and not yet acknowledged (being recorded, or waiting for "
                  "redelivery).", multiprocess_mode="max"))


LAG_PERIOD_SECONDS = 5.0
"""How often each API worker reads the consumer's lag for /metrics: one cheap JetStream request."""


def report_lag(config: StreamConfig) -> tuple[int, int]:
    """Read the consumer's lag from JetStream and set the gauges; the lag."""
    pending, unacknowledged = asyncio.run(consumer_lag(config))
    waiting, delivered = lag_gauges()
    waiting.set(pending)
    delivered.set(unacknowledged)
    return pending, unacknowledged

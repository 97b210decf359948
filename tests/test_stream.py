"""Events from NATS JetStream, against the real server: recorded like POST /events, each once
however often delivered, bad ones dead-lettered with the reason, nothing acknowledged while
the online store is down, and the lag readable."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from features.online import open_online_store
from features.settings import Settings, get_settings
from serving.cli import app
from serving.stream import (
    StreamConfig,
    connect,
    consume,
    consumer_lag,
    decode,
    run_processes,
)
from tests.conftest import require_service

NATS = "nats://127.0.0.1:4222"


@pytest.fixture
def settings(tmp_path: Path):
    require_service("NATS", "127.0.0.1", 4222)
    tag = uuid.uuid4().hex[:10]
    settings = Settings(data_dir=tmp_path, stream_url=NATS, stream_name=f"TEST_{tag}",
                        stream_subject=f"test.{tag}.events", stream_consumer=f"test-{tag}",
                        stream_dead_letter=f"test.{tag}.dead", stream_batch=50)
    yield settings
    asyncio.run(_remove(StreamConfig.from_settings(settings)))


async def _remove(config: StreamConfig) -> None:
    client, jetstream = await connect(config)
    await jetstream.delete_stream(config.stream)
    await client.close()


def event(event_id: str, customer: str = "c1", **changes) -> dict:
    return {"event_id": event_id, "customer_id": customer, "item_id": "p1",
            "event_type": "add_to_cart", "timestamp": datetime.now(UTC).isoformat(),
            "channel": "web", **changes}


async def publish(config: StreamConfig, *payloads: bytes) -> None:
    client, jetstream = await connect(config)
    for payload in payloads:
        await jetstream.publish(config.subject, payload)
    await client.close()


def drain(store, config: StreamConfig, idle: float = 1.5):
    return asyncio.run(consume(store, config, asyncio.Event(), idle_seconds=idle))


def as_message(*events: dict) -> bytes:
    return json.dumps(events[0] if len(events) == 1 else {"events": list(events)}).encode()


def test_published_events_reach_the_customers_online_state(settings):
    config = StreamConfig.from_settings(settings)
    asyncio.run(publish(config, as_message(event("e1", "ann")),
                        as_message(event("e2", "bob"), event("e3", "bob", item_id="p2"))))
    stats = drain(open_online_store(settings), config)
    assert (stats.messages, stats.accepted, stats.dead_lettered) == (2, 3, 0)
    store = open_online_store(settings)
    assert store.customer("ann").cart and set(store.customer("bob").cart) == {"p1", "p2"}


def test_an_event_delivered_twice_is_recorded_once(settings):
    config = StreamConfig.from_settings(settings)
    asyncio.run(publish(config, as_message(event("e1")), as_message(event("e1"))))
    first = drain(open_online_store(settings), config)
    again = settings.model_copy(update={"stream_consumer": settings.stream_consumer + "-again"})
    second = drain(open_online_store(settings), StreamConfig.from_settings(again))
    assert (first.accepted, first.duplicates) == (1, 1)
    assert (second.accepted, second.duplicates) == (0, 2)  # the whole stream, redelivered


def test_what_cannot_be_recorded_goes_to_the_dead_letter_subject_with_the_reason(settings):
    config = StreamConfig.from_settings(settings)
    letters: list[dict] = []

    async def run():
        client, _ = await connect(config)

        async def keep(message):
            letters.append(json.loads(message.data))

        await client.subscribe(config.dead_letter, cb=keep)
        await publish(config, b"{not json", as_message(event("ok")),
                      as_message(event("bad", event_type="teleport")))
        stats = await consume(open_online_store(settings), config, asyncio.Event(),
                              idle_seconds=1.5)
        await client.flush()
        await asyncio.sleep(0.2)
        await client.close()
        return stats

    stats = asyncio.run(run())
    assert (stats.accepted, stats.dead_lettered) == (1, 2)
    reasons = sorted(letter["reason"] for letter in letters)
    assert reasons[0].startswith("events[") and "event_type" in reasons[0]
    assert "'teleport'" in reasons[0]
    assert reasons[1].startswith("the message is not JSON")
    assert any(letter["payload"] == "{not json" for letter in letters)


def test_nothing_is_acknowledged_while_the_online_store_is_down(settings):
    config = StreamConfig(settings.stream_url, settings.stream_name, settings.stream_subject,
                          settings.stream_consumer, settings.stream_dead_letter, batch=10,
                          ack_wait_seconds=1.0)
    asyncio.run(publish(config, as_message(event("e1")), as_message(event("e2"))))
    unreachable = settings.model_copy(update={"online_backend": "redis",
                                              "redis_url": "redis://127.0.0.1:1/0"})

    async def for_two_seconds():
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(2.0, stop.set)
        return await consume(open_online_store(unreachable), config, stop)

    down = asyncio.run(for_two_seconds())
    assert (down.messages, down.accepted) == (0, 0)
    assert asyncio.run(consumer_lag(config))[1] == 2  # delivered, not acknowledged
    back = drain(open_online_store(settings), config, idle=2.5)  # redelivered after ack_wait
    assert back.accepted == 2
    assert asyncio.run(consumer_lag(config)) == (0, 0)


def test_the_lag_counts_what_the_consumer_has_not_taken_yet(settings):
    config = StreamConfig.from_settings(settings)
    drain(open_online_store(settings), config, idle=0.1)  # creates the stream and consumer
    asyncio.run(publish(config, *(as_message(event(f"e{i}")) for i in range(7))))
    assert asyncio.run(consumer_lag(config)) == (7, 0)
    drain(open_online_store(settings), config)
    assert asyncio.run(consumer_lag(config)) == (0, 0)


@pytest.mark.parametrize("data, why", [
    (b"[1, 2]", "a message is one event (an object)"),
    (b'{"events": 3}', "events must be a list of events, got int"),
    (b"\xff", "the message is not JSON"),
])
def test_a_message_that_carries_no_events_says_why(data, why):
    events, problem = decode(data)
    assert events == [] and problem.startswith(why)


def test_the_consume_command_drains_the_stream_and_says_what_it_did(settings, monkeypatch):
    config = StreamConfig.from_settings(settings)
    asyncio.run(publish(config, as_message(event("e1")), b"nope"))
    for name in ("stream_name", "stream_subject", "stream_consumer", "stream_dead_letter"):
        monkeypatch.setenv(f"NEXTBEST_{name.upper()}", getattr(settings, name))
    get_settings.cache_clear()  # the command reads them now, as a new process would
    result = CliRunner().invoke(app, ["events", "consume", "--url", NATS, "--until-idle", "1.5",
                                      "--data-dir", str(settings.data_dir)])
    assert result.exit_code == 0, result.output
    assert "2 messages: 1 events recorded, 0 duplicates, 1 dead-lettered" in result.output


def test_consumer_processes_share_the_stream_and_record_each_event_once(settings):
    config = StreamConfig.from_settings(settings)
    asyncio.run(publish(config, *(as_message(event(f"e{i}", f"c{i % 7}")) for i in range(300))))
    stats = run_processes(settings, processes=2, idle_seconds=1.5)
    assert (stats.messages, stats.accepted, stats.duplicates) == (300, 300, 0)
    logged = open_online_store(settings).pending_events(1000)[1]
    assert sorted(e["event_id"] for e in logged) == sorted(f"e{i}" for i in range(300))


def test_the_consume_command_takes_a_number_of_processes(settings):
    result = CliRunner().invoke(app, ["events", "consume", "--processes", "0",
                                      "--data-dir", str(settings.data_dir)])
    assert result.exit_code == 2
    assert "Invalid value for '--processes'" in result.output
    assert "greater than or equal to 1" in result.output


def test_the_consume_command_without_a_server_says_so(tmp_path):
    result = CliRunner().invoke(app, ["events", "consume", "--url", "nats://127.0.0.1:1",
                                      "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "cannot reach NATS at nats://127.0.0.1:1" in result.output


def test_the_lag_is_published_as_prometheus_gauges(settings):
    from prometheus_client import REGISTRY

    from serving.stream import report_lag

    config = StreamConfig.from_settings(settings)
    drain(open_online_store(settings), config, idle=0.1)
    asyncio.run(publish(config, *(as_message(event(f"e{i}")) for i in range(3))))
    assert report_lag(config) == (3, 0)
    assert REGISTRY.get_sample_value("nextbest_stream_pending_messages") == 3
    assert REGISTRY.get_sample_value("nextbest_stream_unacknowledged_messages") == 0

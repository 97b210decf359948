"""Events from NATS JetStream into the embedded online store: sustained events per second.

    python bench/bench_stream.py                 # records docs/benchmarks.md
    python bench/bench_stream.py --events 50000 --no-record

Against the real NATS server (``--url``, default nats://127.0.0.1:4222): a stream of its own
is filled with ``--events`` view and add-to-cart events of 5,000 customers, one per message, as
storefronts publish them; then ``nextbest events consume --processes N`` (``run_processes``,
N = ``--processes``, default the machine's cores) drains it into a fresh embedded online store
(SQLite, synchronous=FULL) — fetch, JSON, the event contract, dedup, one transaction per
batch, acknowledgements — and the rate is counted from the first message to the last
acknowledged batch. Side by side, in the same run: one process on a second stream of the same
events, the same events handed to ``OnlineStore.ingest`` in the same batches with no bus (one
process's store ceiling), and a second drain of the first stream's messages (every event a
duplicate).

Target: >= 20,000 events/s sustained.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.ingest import parse_events  # noqa: E402
from features.online import open_online_store  # noqa: E402
from features.settings import Settings  # noqa: E402
from serving.stream import StreamConfig, connect, run_processes  # noqa: E402


def events(n: int) -> list[dict]:
    now = datetime.now(UTC).isoformat()
    kinds = ("view", "view", "view", "add_to_cart")
    return [{"event_id": f"bench-{i}", "customer_id": f"c{i % 5000:05d}",
             "item_id": f"p{(i * 7919) % 3000:04d}", "event_type": kinds[i % 4],
             "timestamp": now, "channel": "web"} for i in range(n)]


async def publish(config: StreamConfig, batch: list[dict]) -> float:
    client, jetstream = await connect(config)
    started = time.perf_counter()
    for i, event in enumerate(batch):
        await client.publish(config.subject, json.dumps(event).encode())
        if i % 5000 == 4999:
            await client.flush()
    await client.flush()
    seconds = time.perf_counter() - started
    while (await jetstream.stream_info(config.stream)).state.messages < len(batch):
        await asyncio.sleep(0.1)
    await client.close()
    return seconds


async def remove(config: StreamConfig) -> None:
    client, jetstream = await connect(config)
    await jetstream.delete_stream(config.stream)
    await client.close()


def direct(settings: Settings, batch: list[dict], size: int) -> float:
    """The store alone: the same events, validated and ingested in the consumer's batches."""
    store = open_online_store(settings)
    started = time.perf_counter()
    for start in range(0, len(batch), size):
        store.ingest(parse_events(batch[start:start + size]).events)
    return len(batch) / (time.perf_counter() - started)


def drain(settings: Settings, tag: str, processes: int, name: str, batch: list[dict]):
    """Publish ``batch`` to a stream of its own, drain it with ``processes`` consumers, and
    drain it again (every event a duplicate); the two consumers' figures."""
    settings = settings.model_copy(update={
        "data_dir": settings.data_dir / name, "stream_name": f"BENCH_{tag}_{name}",
        "stream_subject": f"bench.{tag}.{name}", "stream_consumer": f"bench-{tag}-{name}",
        "stream_dead_letter": f"bench.{tag}.{name}.dead"})
    config = StreamConfig.from_settings(settings)
    try:
        published = asyncio.run(publish(config, batch))
        first = run_processes(settings, processes, idle_seconds=2.0)
        again = settings.model_copy(update={"stream_consumer": f"bench-{tag}-{name}-again"})
        repeat = run_processes(again, processes, idle_seconds=2.0)
    finally:
        asyncio.run(remove(config))
    assert first.accepted == len(batch) and repeat.duplicates == len(batch)
    return published, first, repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    batch = events(args.events)
    tag = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as directory:
        settings = Settings(data_dir=Path(directory), stream_url=args.url)
        published, first, repeat = drain(settings, tag, args.processes, "many", batch)
        _, single, _ = drain(settings, tag, 1, "one", batch)
        store_rate = direct(Settings(data_dir=Path(directory) / "direct"), batch,
                            settings.stream_batch)
    n = args.processes
    text = "\n".join([
        f"{args.events:,} events, one per message, published to NATS JetStream at {args.url} "
        f"({args.events / published:,.0f} messages/s to publish), then drained into a fresh "
        f"embedded online store in batches of {settings.stream_batch}.", "",
        "| | events/s | target |", "|---|---|---|",
        f"| `events consume --processes {n}`: fetch, JSON, contract, dedup, commit, ack | "
        f"{first.rate:,.0f} | >= 20,000 |",
        f"| the same messages again ({n} processes, a second durable consumer: every event a "
        f"duplicate) | {repeat.rate:,.0f} | |",
        f"| one process (`--processes 1`), the same events on a stream of their own | "
        f"{single.rate:,.0f} | |",
        f"| no bus, one process: the same events validated and ingested in the same batches | "
        f"{store_rate:,.0f} | |", "",
        f"Target >= 20,000 events/s: {'met' if first.rate >= 20_000 else 'not met'}."])
    print(text)
    print(json.dumps({"bench": "stream", "events": args.events, "processes": n,
                      "rate": round(first.rate), "duplicate_rate": round(repeat.rate),
                      "one_process_rate": round(single.rate), "store_rate": round(store_rate),
                      "met": first.rate >= 20_000}))
    if not args.no_record:
        from bench.record import record_section

        record_section("bench_stream", "Events from NATS JetStream",
                       "python bench/bench_stream.py", text)


if __name__ == "__main__":
    main()

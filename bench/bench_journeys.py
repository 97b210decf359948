"""Journey scheduler benchmark: due customers advanced per second, and how soon an immediate
step follows its entering event.

    python bench/bench_journeys.py                     # 20,000 due customers; records docs/benchmarks.md
    python bench/bench_journeys.py --customers 5000 --no-record

On a 2,000-customer synthetic shop with a registered item-kNN champion and the embedded online
store (``synchronous=FULL``), in the same run:

1. **throughput**: ``--customers`` customers each send a view, which enters them into a journey
   whose first step waits a day; one scheduler pass (``JourneyEngine.tick``) enters them all and
   starts their waits. A day later a second pass finds them all due again and sends each a
   ranked email (products from the recommender, under the contact policy). Both are timed
   beside the floor: reading the same customers' states from the store in the same batches;
2. **latency**: ``nextbest worker`` as its own process (a pass every 0.2 s, the default),
   and this process ingesting a view for a customer at a time: the clock runs from the
   acknowledged event until the store shows the journey's immediate first step done; p50/p99
   over ``--trials``.

Targets: the scheduler advances >= 10,000 due customers per second; an immediate step fires
within 1 s of the entering event.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_realtime import make_shop  # noqa: E402
from bench.record import record_section  # noqa: E402

JOURNEYS = {"journeys": [
    {"name": "welcome_back", "entry": {"when": "event", "event": "view"}, "goal": None,
     "reentry": {"after_days": None},
     "steps": [{"wait": {"days": 1}},
               {"name": "picks", "message": {"channel": "email", "send": "products",
                                             "items": 3}}]},
    {"name": "instant", "entry": {"when": "event", "event": "add_to_cart"}, "goal": None,
     "reentry": {"after_days": None},
     "steps": [{"name": "at_once", "update": {"carted": "yes"}}]}]}
OPEN_POLICY = {"caps": {}, "cross_channel_memory_hours": 0}


def views(customers: list[str], products: list[str], at: datetime, kind: str = "view"
          ) -> list[dict]:
    from features.ingest import parse_events

    parsed = parse_events([{"event_id": uuid.uuid4().hex, "customer_id": c,
                            "item_id": products[i % len(products)], "event_type": kind,
                            "timestamp": at.isoformat(), "channel": "web"}
                           for i, c in enumerate(customers)])
    assert not parsed.problems, parsed.problems[:3]
    return parsed.events


def throughput(root: Path, products: list[str], count: int) -> dict:
    from features.online.embedded import EmbeddedStore
    from features.settings import Settings
    from serving.engagement.journeys import JourneyPlan
    from serving.engagement.policy import ContactPolicy
    from serving.engagement.scheduler import BATCH, JourneyEngine
    from serving.state import build_state

    state = build_state(Settings(data_dir=root))
    consenting = {f"j{i:06d}": frozenset({"email"}) for i in range(count)}
    state = dataclasses.replace(state, shop=dataclasses.replace(state.shop, consents=consenting))
    store = EmbeddedStore(root / "throughput.db")
    customers = list(consenting)
    now = datetime.now(UTC).replace(microsecond=0)
    for first in range(0, count, 5000):
        store.ingest(views(customers[first:first + 5000], products, now - timedelta(minutes=1)))
    engine = JourneyEngine(JourneyPlan.model_validate(JOURNEYS),
                           ContactPolicy.model_validate(OPEN_POLICY), store, lambda: state)
    started = time.perf_counter()
    entered = engine.tick(now, limit=count)
    enter_s = time.perf_counter() - started
    later = now + timedelta(days=1, seconds=1)
    started = time.perf_counter()
    sent = engine.tick(later, limit=count)
    send_s = time.perf_counter() - started
    started = time.perf_counter()
    for first in range(0, count, BATCH):
        store.customers(customers[first:first + BATCH])
    floor_s = time.perf_counter() - started
    statuses = {status: sum(o.status == status for o in entered + sent)
                for status in ("entered", "sent", "finished")}
    assert statuses == {"entered": count, "sent": count, "finished": count}, statuses
    return {"customers": count, "enter_per_s": count / enter_s, "send_per_s": count / send_s,
            "read_per_s": count / floor_s, "enter_s": enter_s, "send_s": send_s,
            "read_s": floor_s}


def latency(root: Path, products: list[str], trials: int) -> dict:
    from features.online.embedded import EmbeddedStore

    (root / "journeys.yaml").write_text(yaml.safe_dump(JOURNEYS))
    (root / "policy.yaml").write_text(yaml.safe_dump(OPEN_POLICY))
    env = {**os.environ, "NEXTBEST_DATA_DIR": str(root), "PYTHONPATH": str(ROOT)}
    scheduler = subprocess.Popen([sys.executable, "-m", "serving.cli", "worker"],
                                 cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    store = EmbeddedStore(root / "online.db")
    try:
        line = scheduler.stdout.readline()  # "journey scheduler: ..." once it is running
        assert line.startswith("journey scheduler"), line
        waits = []
        for trial in range(trials):
            customer = f"l{trial:04d}"
            store.ingest(views([customer], products, datetime.now(UTC), "add_to_cart"))
            acknowledged = time.perf_counter()
            while "instant" not in store.customer(customer).journeys:
                if time.perf_counter() - acknowledged > 10:
                    raise RuntimeError(f"no step within 10 s for {customer}")
                time.sleep(0.002)
            waits.append(time.perf_counter() - acknowledged)
            time.sleep(np.random.default_rng(trial).uniform(0, 0.2))  # land anywhere in a pass
    finally:
        scheduler.terminate()
        scheduler.wait(timeout=30)
    return {"trials": trials, "p50_s": float(np.percentile(waits, 50)),
            "p99_s": float(np.percentile(waits, 99)), "max_s": float(max(waits))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        products = make_shop(root)
        fast = throughput(root, products, args.customers)
        soon = latency(root, products, args.trials)
    text = "\n".join([
        f"{args.customers:,} due customers, embedded online store (synchronous=FULL), "
        f"item-kNN champion on a 2,000-customer shop; latency over {args.trials} trials with "
        "`nextbest worker` as its own process (a pass every 0.2 s).", "",
        "| | measured | baseline (read the same states) | target |", "|---|---|---|---|",
        f"| enter and start a wait (one pass) | {fast['enter_per_s']:,.0f} customers/s "
        f"({fast['enter_s']:.2f} s) | {fast['read_per_s']:,.0f} customers/s "
        f"({fast['read_s']:.2f} s) | >= 10,000 /s |",
        f"| wait over: rank and send an email (one pass) | {fast['send_per_s']:,.0f} "
        f"customers/s ({fast['send_s']:.2f} s) | | |",
        f"| immediate step after its event, p50 / p99 / max | {soon['p50_s'] * 1000:.0f} / "
        f"{soon['p99_s'] * 1000:.0f} / {soon['max_s'] * 1000:.0f} ms | the pass interval, "
        "200 ms | <= 1 s |"])
    print(text)
    print(json.dumps({"bench": "journeys", **fast, **soon}))
    if not args.no_record:
        record_section("bench_journeys", "Journeys: the scheduler", "python bench/bench_journeys.py",
                       text)


if __name__ == "__main__":
    main()

"""Real-time benchmark: event ingestion throughput and freshness, with each online backend.

    python bench/bench_realtime.py     # embedded (FULL, NORMAL) and Redis; records docs/benchmarks.md
    python bench/bench_realtime.py --backends embedded --no-record

For each backend, one `bentoml serve` process (``--workers`` API workers, 2 by default: one
per core; access log on as in production) serves a 2,000-customer synthetic shop with a
registered item-kNN champion, and in the same run:

1. ingest over HTTP, batched: POST /events with 1,000 and with 5,000 events per call for a
   fixed time each (4 client threads, bodies encoded beforehand); every acknowledged event is durable (SQLite
   commit with synchronous=FULL, or NORMAL: survives a killed process; or a Redis EXEC);
2. ingest over HTTP, single: one event per POST, sequential keep-alive;
3. in process: the same batches through validation and the store alone, without HTTP — the
   ceiling of one Python process;
4. baseline: the same batches appended as JSON lines to a file with fsync per batch — the least
   any durable ingestion can cost;
5. freshness: a customer views an item, and the clock runs from the acknowledgement until a
   recommend answer shows "because you viewed <it>" (target <= 50 ms); p50/p99 over 300 trials.

The load generator shares the server's two cores, so throughput is a floor.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_service import free_port  # noqa: E402
from bench.record import record_section  # noqa: E402

BATCH = 1000
LARGE_BATCH = 5000


def make_shop(root: Path) -> list[str]:
    """A 300-customer shop with a registered item-kNN champion; returns its product ids."""
    from features.settings import Settings
    from features.synthetic import ShopConfig, generate_shop, store_shop
    from features.warehouse import Warehouse
    from training.recommender_job import train_recommender

    shop = generate_shop(ShopConfig(n_customers=2000, n_products=1000, days=60, seed=3))
    store_shop(Warehouse(root / "warehouse"), shop)
    train_recommender(Settings(data_dir=root), "itemknn")
    return shop.items.loc[shop.items["kind"] == "product", "item_id"].tolist()


def events(n: int, products: list[str], rng: np.random.Generator, customers: int = 50_000) -> list:
    kinds = rng.choice(["view", "view", "view", "add_to_cart", "purchase"], n)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return [{"event_id": uuid.uuid4().hex, "customer_id": f"bench{int(c)}", "item_id": products[i],
             "event_type": str(k), "timestamp": stamp, "channel": "web"}
            for c, i, k in zip(rng.integers(0, customers, n), rng.integers(0, len(products), n),
                               kinds, strict=True)]


def serve(data_dir: Path, env: dict[str, str], workers: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    full_env = {**os.environ, "NEXTBEST_DATA_DIR": str(data_dir),
                "NEXTBEST_RELOAD_INTERVAL_SECONDS": "0", "NEXTBEST_FLUSH_INTERVAL_SECONDS": "0",
                "BENTOML_HOME": str(data_dir / "bentoml"),
                "NEXTBEST_WORKERS": str(workers), **env}
    server = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "serving.service:NextBest", "--port", str(port),
         "--host", "127.0.0.1"],
        cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        if server.poll() is not None:
            break
        time.sleep(0.5)
    server.kill()
    raise SystemExit(f"server did not start: {server.stderr.read().decode()[-2000:]}")


def batched(url: str, products: list[str], seconds: float, size: int = BATCH, threads: int = 4,
            rate_guess: int = 60_000) -> float:
    """Events/s over ``seconds`` of 1,000-event POSTs; bodies are encoded before the clock
    starts, so the load generator spends its share of the two cores on sending only. A worker
    that fails, or runs out of prepared bodies (the rate beat ``rate_guess``), fails the run:
    in a thread it would only have stopped counting."""
    rng = np.random.default_rng(0)
    bodies = iter([json.dumps({"events": events(size, products, rng)}).encode()
                   for _ in range(int(seconds * rate_guess / size) + threads)])
    lock, done, stop = threading.Lock(), [0] * threads, threading.Event()
    failures: list[str] = []

    def worker(slot: int) -> None:
        with httpx.Client(base_url=url, timeout=60,
                          headers={"Content-Type": "application/json"}) as client:
            while not stop.is_set():
                with lock:
                    body = next(bodies, None)
                if body is None:
                    failures.append(f"ran out of prepared batches: raise rate_guess ({rate_guess})")
                    return
                response = client.post("/events", content=body)
                if response.status_code != 200 or response.json().get("accepted") != size:
                    failures.append(f"/events answered {response.status_code}: {response.text[:200]}")
                    return
                done[slot] += size

    pool = [threading.Thread(target=worker, args=(s,)) for s in range(threads)]
    start = time.perf_counter()
    for thread in pool:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in pool:
        thread.join()
    if failures:
        raise SystemExit(f"batched ingestion at {size} events a call: {failures[0]}")
    return sum(done) / (time.perf_counter() - start)


def in_process(products: list[str], backend: str, sync: str, directory: Path,
               batches: int = 30) -> float:
    """Events/s through validation and the store alone, no HTTP: the ceiling the service has."""
    from features.ingest import parse_events
    from features.online.embedded import EmbeddedStore
    from features.online.redis_store import RedisStore

    rng = np.random.default_rng(5)
    payloads = [events(BATCH, products, rng) for _ in range(batches)]
    prefix = f"bench-{uuid.uuid4().hex}:"
    store = (RedisStore("redis://127.0.0.1:6379/0", prefix=prefix) if backend == "redis"
             else EmbeddedStore(directory / f"in-process-{sync}.db", sync=sync))
    start = time.perf_counter()
    for payload in payloads:
        store.ingest(parse_events(payload).events)
    rate = batches * BATCH / (time.perf_counter() - start)
    if backend == "redis":
        store.clear()
    return rate


def single(url: str, products: list[str], count: int) -> float:
    payload = events(count, products, np.random.default_rng(1))
    with httpx.Client(base_url=url, timeout=30) as client:
        start = time.perf_counter()
        for event in payload:
            assert client.post("/events", json=event).status_code == 200
        return count / (time.perf_counter() - start)


def file_baseline(products: list[str], seconds: float, directory: Path) -> float:
    rng = np.random.default_rng(0)
    payloads = [events(BATCH, products, rng) for _ in range(8)]
    written, start = 0, time.perf_counter()
    with open(directory / "baseline.jsonl", "ab") as out:
        while time.perf_counter() - start < seconds:
            out.write(b"".join(json.dumps(e).encode() + b"\n" for e in payloads[written // BATCH % 8]))
            out.flush()
            os.fsync(out.fileno())
            written += BATCH
    return written / (time.perf_counter() - start)


def freshness(url: str, products: list[str], titles: dict[str, str],
              trials: int) -> tuple[np.ndarray, np.ndarray]:
    """Milliseconds from the acknowledgement of a view (and from sending it) until a recommend
    answer shows it."""
    rng = np.random.default_rng(2)
    from_ack, from_send = [], []
    with httpx.Client(base_url=url, timeout=30) as client:
        # items with collaborative neighbours, so that a view of one has something to drive
        products = [p for p in products[:400] if len(client.post(
            "/similar_items", json={"item_id": p, "n": 10}).json()["items"]) == 10]
        for trial in range(trials):
            customer, item = f"fresh{trial}", products[int(rng.integers(0, len(products)))]
            event = {"event_id": uuid.uuid4().hex, "customer_id": customer, "item_id": item,
                     "event_type": "view", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                      time.gmtime()),
                     "channel": "web"}
            start = time.perf_counter()
            assert client.post("/events", json=event).status_code == 200
            acknowledged = time.perf_counter()
            while True:
                answer = client.post("/recommend", json={"customer_id": customer,
                                                         "n": {"product": 20}}).json()
                if any(e["reason"] == f"because you viewed {titles[item]}"
                       for e in answer["products"]):
                    break
                if time.perf_counter() - start > 5:
                    raise SystemExit(f"a view of {item} never showed in recommendations")
            from_ack.append(time.perf_counter() - acknowledged)
            from_send.append(time.perf_counter() - start)
    return np.array(from_ack) * 1000, np.array(from_send) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", nargs="+", default=["embedded", "embedded-normal", "redis"],
                        help="embedded (synchronous=FULL), embedded-normal, redis")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=2, help="API worker processes")
    parser.add_argument("--singles", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        products = make_shop(root)
        from features.warehouse import Warehouse
        items = Warehouse(root / "warehouse").items()
        titles = dict(zip(items["item_id"], items["title"], strict=True))
        baseline = file_baseline(products, args.seconds / 3, root)
        for label in args.backends:
            backend = label.split("-")[0]
            env = {"NEXTBEST_ONLINE_BACKEND": backend,
                   "NEXTBEST_ONLINE_SYNC": "normal" if label.endswith("normal") else "full"}
            if backend == "redis":
                env["NEXTBEST_REDIS_PREFIX"] = f"bench-{uuid.uuid4().hex}:"
            (root / "online.db").unlink(missing_ok=True)
            ceiling = in_process(products, backend, env["NEXTBEST_ONLINE_SYNC"], root)
            server, url = serve(root, env, args.workers)
            try:
                rate = batched(url, products, args.seconds)
                large = batched(url, products, args.seconds, size=LARGE_BATCH)
                one = single(url, products, args.singles)
                fresh, sent = freshness(url, products, titles, args.trials)
            finally:
                server.terminate()
                server.wait(timeout=30)
            if backend == "redis":
                from features.online.redis_store import RedisStore
                RedisStore("redis://127.0.0.1:6379/0", prefix=env["NEXTBEST_REDIS_PREFIX"]).clear()
            rows.append((label, rate, large, one, ceiling, np.percentile(fresh, 50),
                         np.percentile(fresh, 99), np.percentile(sent, 50)))
            print(rows[-1], flush=True)

    table = ["| backend | HTTP, 1,000 events/call | HTTP, 5,000 events/call | HTTP, single event "
             "(sequential) | in process, 1,000/call (validate + store) | freshness p50 | "
             "freshness p99 | send to answer p50 |", "|---|---|---|---|---|---|---|---|"]
    for label, rate, large, one, ceiling, p50, p99, sent in rows:
        table.append(f"| {label} | {rate:,.0f} events/s | {large:,.0f} events/s | "
                     f"{one:,.0f} events/s | {ceiling:,.0f} events/s | {p50:.1f} ms | "
                     f"{p99:.1f} ms | {sent:.1f} ms |")
    body = "\n".join(table) + (
        f"\n\nBaseline: the same batches appended to a JSON-lines file with fsync per batch, "
        f"{baseline:,.0f} events/s. Freshness is from the acknowledgement of a view until a "
        "recommend answer says \"because you viewed\" it; \"send to answer\" adds the /events "
        "round trip itself. Targets: >= 10,000 "
        f"events/s batched, durable; freshness <= 50 ms. {args.workers} API worker(s), access "
        "log on; the load "
        "generator shares the 2 cores.")
    print(body)
    if not args.no_record:
        record_section("realtime", "Real-time ingestion and freshness",
                       "python bench/bench_realtime.py", body)


if __name__ == "__main__":
    main()

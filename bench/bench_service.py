"""Service benchmark: recommend latency and throughput, side by side with a no-op endpoint.

    python bench/bench_service.py                          # 100k items, 1M customers
    python bench/bench_service.py --items 10000 --customers 100000 --no-record

One `bentoml serve` process (one worker, access log off) serves both `recommend` (the real
pipeline on a synthetic state: 64 random ALS factors, filters on) and `noop` (same input spec and
configuration, returns a constant). In the same run:

1. sequential keep-alive latency: requests alternate between the two endpoints, so both see the
   same machine noise; p50 and p99 of each;
2. throughput: 16 client threads with keep-alive connections for a fixed time, each endpoint
   in turn.

The load generator runs on the same two cores as the server, which inflates tails for both
endpoints alike; the ratios are the numbers to read. Targets: p50 <= 1.2x and p99 <= 2x the
no-op's, throughput >= 1.0x the no-op's.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def body(rng: np.random.Generator, customers: int) -> dict:
    return {"customer_id": f"c{int(rng.integers(0, customers)):07d}", "channel": "web",
            "n": {"product": 10, "content": 2, "offer": 1},
            "filters": {"in_stock_only": True, "max_price": 200.0}}


def sequential(url: str, requests: int, customers: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    timings: dict[str, list[float]] = {"recommend": [], "noop": []}
    with httpx.Client(base_url=url, timeout=30) as client:
        for endpoint in ("recommend", "noop"):  # warm-up
            for _ in range(50):
                client.post(f"/{endpoint}", json=body(rng, customers)).raise_for_status()
        for _ in range(requests):
            for endpoint in ("recommend", "noop"):
                payload = body(rng, customers)
                started = time.perf_counter()
                client.post(f"/{endpoint}", json=payload).raise_for_status()
                timings[endpoint].append(time.perf_counter() - started)
    return {k: np.array(v) * 1000 for k, v in timings.items()}


def throughput(url: str, endpoint: str, seconds: float, threads: int, customers: int) -> float:
    stop = time.monotonic() + seconds
    counts = [0] * threads

    def worker(index: int) -> None:
        rng = np.random.default_rng(100 + index)
        with httpx.Client(base_url=url, timeout=30) as client:
            while time.monotonic() < stop:
                client.post(f"/{endpoint}", json=body(rng, customers)).raise_for_status()
                counts[index] += 1

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    started = time.monotonic()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return sum(counts) / (time.monotonic() - started)


def render(r: dict) -> str:
    lat, thr = r["latency_ms"], r["throughput_rps"]
    lines = [f"{r['items']:,} items, {r['customers']:,} customers, 64 factors, filters on; "
             f"{r['requests']:,} sequential requests per endpoint; {r['threads']} connections for "
             f"{r['seconds']:.0f} s per endpoint; worker RSS {r['worker_rss_mib']:,.0f} MiB.", "",
             "| | recommend | no-op | ratio | target |", "|---|---|---|---|---|",
             f"| p50 latency | {lat['recommend']['p50']:.2f} ms | {lat['noop']['p50']:.2f} ms | "
             f"{lat['recommend']['p50'] / lat['noop']['p50']:.2f}x | <= 1.2x |",
             f"| p99 latency | {lat['recommend']['p99']:.2f} ms | {lat['noop']['p99']:.2f} ms | "
             f"{lat['recommend']['p99'] / lat['noop']['p99']:.2f}x | <= 2x |",
             f"| throughput | {thr['recommend']:.0f} req/s | {thr['noop']:.0f} req/s | "
             f"{thr['recommend'] / thr['noop']:.2f}x | >= 1.0x |"]
    for name, rate in thr.items():
        if name.startswith("recommend x"):
            lines.append(f"| throughput, recommend on {name.split('x')[-1]} workers (one per core) | "
                         f"{rate:.0f} req/s | {thr['noop']:.0f} req/s (1 worker) | "
                         f"{rate / thr['noop']:.2f}x | >= 1.0x |")
    return "\n".join(lines)


def start(args, workers: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "NB_ITEMS": str(args.items), "NB_CUSTOMERS": str(args.customers),
           "NB_WORKERS": str(workers), "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "bentoml", "serve",
                               "bench.service_app:BenchService", "--port", str(port),
                               "--host", "127.0.0.1"], cwd=ROOT,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit("the benchmark service did not start")
        time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2,
                        help="also measure recommend throughput with this many workers (1 = skip)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    server, url = start(args, workers=1)
    try:
        timings = sequential(url, args.requests, args.customers)
        rates = {e: throughput(url, e, args.seconds, args.threads, args.customers)
                 for e in ("recommend", "noop")}
        rss = max((p.memory_info().rss for p in psutil.Process(server.pid).children(recursive=True)),
                  default=0) / 2**20
    finally:
        server.terminate()
        server.wait(timeout=60)
    if args.workers > 1:  # the same box, one worker per core, against the no-op's one worker
        server, url = start(args, workers=args.workers)
        try:
            rates[f"recommend x{args.workers}"] = throughput(url, "recommend", args.seconds,
                                                             args.threads, args.customers)
        finally:
            server.terminate()
            server.wait(timeout=60)
    result = {"items": args.items, "customers": args.customers, "requests": args.requests,
              "threads": args.threads, "seconds": args.seconds, "worker_rss_mib": rss,
              "latency_ms": {e: {"p50": float(np.percentile(t, 50)),
                                 "p99": float(np.percentile(t, 99))} for e, t in timings.items()},
              "throughput_rps": rates}
    text = render(result)
    print(text)
    print(json.dumps({"bench": "service", **result}))
    if not args.no_record:
        from bench.record import record_section

        record_section("bench_service", "Service: recommend vs a no-op endpoint",
                       "python bench/bench_service.py", text + "\n\nOne worker (the last row: "
                       "one per core), access log off, the neighbour table precomputed at load, "
                       "one read of the live customer state per request; load generated from the "
                       "same machine (it shares the two cores with the server, for both endpoints "
                       "alike).")


if __name__ == "__main__":
    main()

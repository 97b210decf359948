"""Sizing: memory and start-up of the API at a given catalog and customer count.

    python bench/bench_sizing.py                                   # 1M customers, 2 workers
    python bench/bench_sizing.py --customers 3000000 --workers 1 --no-record

Starts the benchmark service (bench/service_app.py: the service's state at that size, 64
factors, each customer's top 200 and the neighbour table precomputed, as the training job
registers them) with ``--workers`` workers and measures:

* time from ``bentoml serve`` to every worker ready (their tables already on disk, as a
  restarted pod finds them in its serving cache);
* each worker's proportional set size (PSS, /proc/PID/smaps_rollup: a page shared by n
  processes counts 1/n in each, so the workers' PSS add up to what they really hold) and RSS,
  at ready and after 2,000 requests for random customers.

The first run at a size builds its tables (minutes; cached under ~/.cache/nextbest-bench).
Prints a table and a JSON line; records into docs/benchmarks.md unless --no-record.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_service import body, start  # noqa: E402
from bench.record import record_section  # noqa: E402

TARGET_PSS_GB = 1.5
TARGET_START_S = 30.0


def rollup(pid: int) -> dict[str, float]:
    """The process's memory from smaps_rollup, in bytes: Pss, Pss_Anon (its own heap),
    Pss_File (its share of mapped files), Rss."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = float(value.split()[0]) * 1024
    return fields


def workers_of(server) -> list[psutil.Process]:
    return [p for p in psutil.Process(server.pid).children(recursive=True)
            if "worker" in " ".join(p.cmdline())]


def memory(server) -> dict:
    measured = [rollup(p.pid) for p in workers_of(server)]
    return {"pss_gb": sum(m["Pss"] for m in measured) / 1e9,
            "anon_gb": sum(m["Pss_Anon"] for m in measured) / 1e9,
            "file_gb": sum(m["Pss_File"] for m in measured) / 1e9,
            "rss_gb": sum(m["Rss"] for m in measured) / 1e9,
            "per_worker_pss_gb": [round(m["Pss"] / 1e9, 3) for m in measured]}


def warm(url: str, customers: int, requests: int) -> None:
    import httpx

    rng = np.random.default_rng(3)
    with httpx.Client(timeout=30) as client:
        for _ in range(requests):
            client.post(f"{url}/recommend", json=body(rng, customers)).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    started = time.monotonic()
    server, url = start(args, workers=args.workers)
    try:
        ready_s = time.monotonic() - started
        at_ready = memory(server)
        warm(url, args.customers, args.requests)
        served = memory(server)
    finally:
        server.terminate()
        server.wait(timeout=60)
    result = {"bench": "sizing", "items": args.items, "customers": args.customers,
              "workers": args.workers, "ready_s": round(ready_s, 1),
              "pss_gb_at_ready": round(at_ready["pss_gb"], 3),
              "pss_gb_after_requests": round(served["pss_gb"], 3),
              "anon_gb_after_requests": round(served["anon_gb"], 3),
              "file_gb_after_requests": round(served["file_gb"], 3),
              "rss_gb_after_requests": round(served["rss_gb"], 3),
              "per_worker_pss_gb": served["per_worker_pss_gb"]}
    rows = [
        ("start to every worker ready", f"{ready_s:.1f} s", f"<= {TARGET_START_S:g} s",
         "met" if ready_s <= TARGET_START_S else "not met"),
        ("workers' total PSS at ready", f"{at_ready['pss_gb']:.2f} GB", "", ""),
        (f"workers' total PSS after {args.requests:,} requests", f"{served['pss_gb']:.2f} GB",
         f"<= {TARGET_PSS_GB:g} GB",
         "met" if served["pss_gb"] <= TARGET_PSS_GB else "not met"),
        ("of which their own heaps (anonymous) / shared mapped files",
         f"{served['anon_gb']:.2f} / {served['file_gb']:.2f} GB", "", ""),
        ("workers' total RSS (double-counts shared pages)", f"{served['rss_gb']:.2f} GB", "", ""),
    ]
    table = "| | measured | target | |\n|---|---|---|---|\n" + "\n".join(
        f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows)
    print(table)
    print(json.dumps(result))
    if not args.no_record:
        record_section(f"sizing_{args.customers}", f"API memory and start-up: {args.customers:,} "
                       f"customers", " ".join(["python bench/bench_sizing.py", *sys.argv[1:]]),
                       f"{args.items:,} items, {args.customers:,} customers, 64 factors, "
                       f"{args.workers} workers (bench/service_app.py's state, its tables already "
                       f"on disk).\n\n{table}\n")


if __name__ == "__main__":
    main()

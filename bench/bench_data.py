"""Data benchmark: generate, store, re-import and build features at 1M and 10M events.

    python bench/bench_data.py                 # 1M and 10M events, records docs/benchmarks.md
    python bench/bench_data.py --sizes 200000  # any sizes; --no-record to only print

Each size runs in a fresh subprocess so its peak memory (max RSS) is its own. The warehouse
append is timed side by side with a plain ``pyarrow.parquet.write_table`` of the same rows in
the same run (the floor for writing that data), and reported as a ratio, since wall times on
a shared two-core machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

def measure(n_events: int) -> dict:
    """Run every step once at ``n_events`` and return timings in seconds and peak RSS in MiB."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from features.contracts import EVENTS, arrow_schema
    from features.point_in_time import compute_customer_features, compute_item_features
    from features.synthetic import ShopConfig, generate_shop
    from features.warehouse import Warehouse

    result: dict = {"target_events": n_events}
    started = time.perf_counter()
    shop = generate_shop(ShopConfig.for_events(n_events, seed=42))
    result["generate_s"] = time.perf_counter() - started
    result["events"] = len(shop.events)
    result["customers"] = len(shop.customers)
    result["items"] = len(shop.items)
    with tempfile.TemporaryDirectory() as tmp:
        warehouse = Warehouse(Path(tmp) / "warehouse")
        warehouse.upsert("items", shop.items)
        warehouse.upsert("customers", shop.customers)

        started = time.perf_counter()
        warehouse.append_events(shop.events)
        result["append_s"] = time.perf_counter() - started

        started = time.perf_counter()
        table = pa.Table.from_pandas(shop.events, schema=arrow_schema(EVENTS), preserve_index=False)
        pq.write_table(table, Path(tmp) / "baseline.parquet", compression="zstd")
        result["baseline_write_s"] = time.perf_counter() - started
        del table

        started = time.perf_counter()
        again = warehouse.append_events(shop.events)
        result["reimport_s"] = time.perf_counter() - started
        assert again.added == 0, "re-importing the same events must add nothing"
        del shop

        cutoff = pd.Timestamp(warehouse.query("select max(timestamp) as t from events")["t"].iloc[0])
        started = time.perf_counter()
        events = warehouse.events(end=cutoff)
        result["read_s"] = time.perf_counter() - started
        items = warehouse.items()
        started = time.perf_counter()
        features = compute_customer_features(events, cutoff, items)
        result["customer_features_s"] = time.perf_counter() - started
        result["feature_rows"] = len(features)
        started = time.perf_counter()
        compute_item_features(events, cutoff)
        result["item_features_s"] = time.perf_counter() - started
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def render(rows: list[dict]) -> str:
    header = ("| events | customers | items | generate | append to warehouse | plain Parquet write "
              "(baseline) | append / baseline | re-import (no-op) | read | customer features "
              "(1 cutoff) | item features | peak RSS |")
    lines = [header, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['events']:,} | {r['customers']:,} | {r['items']:,} | {r['generate_s']:.1f} s "
            f"| {r['append_s']:.1f} s | {r['baseline_write_s']:.1f} s "
            f"| {r['append_s'] / r['baseline_write_s']:.2f}x | {r['reimport_s']:.1f} s "
            f"| {r['read_s']:.1f} s | {r['customer_features_s']:.1f} s "
            f"| {r['item_features_s']:.2f} s | {r['peak_rss_mib']:,.0f} MiB |")
    return "\n".join(lines)


def record(rows: list[dict]) -> None:
    from bench.record import record_section

    record_section(
        "bench_data", "Data: generate, store, re-import, features", "python bench/bench_data.py",
        render(rows) + "\n\nAppend includes the idempotency check against stored event ids, the sort "
        "by time and the atomic rename; the baseline writes the same rows with "
        "`pyarrow.parquet.write_table` and nothing else. Customer features are all declared "
        "features for every customer as of the last event.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--no-record", action="store_true", help="Print only.")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return

    from rich.console import Console
    from rich.progress import Progress

    console = Console()
    rows = []
    with Progress(console=console) as progress:
        task = progress.add_task("data benchmark", total=len(args.sizes))
        for size in args.sizes:
            progress.update(task, description=f"{size:,} events")
            child = subprocess.run([sys.executable, __file__, "--one", str(size)],
                                   capture_output=True, text=True, check=False)
            if child.returncode != 0:
                console.print(child.stderr)
                raise SystemExit(f"benchmark at {size:,} events failed")
            rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
            progress.advance(task)
    console.print(render(rows))
    print(json.dumps({"bench": "data", "results": rows}))
    if not args.no_record:
        record(rows)
        console.print("recorded in docs/benchmarks.md")


if __name__ == "__main__":
    main()

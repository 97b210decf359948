"""KPI report benchmark: attribution and every KPI over 10M exposure rows and 1M outcome events.

    python bench/bench_kpis.py                              # 10M exposure rows, 1M events
    python bench/bench_kpis.py --exposures 1000000 --events 100000 --no-record

Builds a warehouse of synthetic exposures (answers of ten items to 200,000 customers over 30
days, on four channels and four placements) and outcome events (clicks, carts, purchases,
redemptions and returns; most follow an impression of the same item to the same customer
within minutes to days, a third carry the answer's id, the rest are unrelated), then times, in
the same run:

* ``kpi_report`` by channel and kind, per day: attribution (direct ids, the click and purchase
  windows, returns) and every KPI, the funnel and the message tables;
* the baseline: one DuckDB pass counting impressions per day and channel over the same files,
  the least any report over them costs.

Target: the KPI report in <= 10 s on this machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.contracts import CUSTOMERS, EVENTS, EXPOSURES, ITEMS, arrow_schema  # noqa: E402
from features.validation import validate_table  # noqa: E402
from features.warehouse import Warehouse  # noqa: E402
from training.kpis import kpi_report  # noqa: E402

START = datetime(2024, 3, 1, tzinfo=UTC)
DAYS = 30
ITEMS_PER_ANSWER = 10


def build(root: Path, exposure_rows: int, events: int, seed: int = 0) -> Warehouse:
    rng = np.random.default_rng(seed)
    warehouse = Warehouse(root / "warehouse")
    n_products, n_offers, n_customers = 50_000, 500, 200_000
    item_ids = np.array([f"p{i:06d}" for i in range(n_products)] +
                        [f"o{i:04d}" for i in range(n_offers)])
    items = pd.DataFrame({"item_id": item_ids,
                          "kind": ["product"] * n_products + ["offer"] * n_offers,
                          "title": "x", "price": np.r_[rng.uniform(2, 200, n_products),
                                                       np.full(n_offers, np.nan)],
                          "offer_value": np.r_[np.full(n_products, np.nan),
                                               np.full(n_offers, 10.0)]})
    customers = pd.DataFrame({"customer_id": [f"c{i:07d}" for i in range(n_customers)],
                              "first_seen": START - timedelta(days=365),
                              "segment": rng.choice(["casual", "loyal", "premium"], n_customers)})
    for name, frame, contract in (("items", items, ITEMS), ("customers", customers, CUSTOMERS)):
        typed, report = validate_table(frame, contract, name)
        assert report.ok, report.describe()
        warehouse.upsert(name, typed)

    answers = exposure_rows // ITEMS_PER_ANSWER
    answer_customer = rng.integers(0, n_customers, answers)
    answer_time = START.timestamp() + rng.uniform(0, DAYS * 86400, answers)
    rows = answers * ITEMS_PER_ANSWER
    answer = np.repeat(np.arange(answers), ITEMS_PER_ANSWER)
    position = np.tile(np.arange(1, ITEMS_PER_ANSWER + 1), answers)
    item = np.where(position == ITEMS_PER_ANSWER, n_products + rng.integers(0, n_offers, rows),
                    (rng.zipf(1.3, rows) - 1) % n_products)
    ids = np.char.add("r", answer.astype(str))
    table = pa.table({
        "exposure_id": ids, "exposure_type": np.full(rows, "recommendation"),
        "customer_id": np.array(customers["customer_id"])[answer_customer[answer]],
        "timestamp": pa.array((answer_time[answer] * 1e6).astype(np.int64),
                              pa.timestamp("us", tz="UTC")),
        "channel": rng.choice(["web", "app", "email", "push"], answers)[answer],
        "placement": rng.choice(["home", "product", "cart", "search"], answers)[answer],
        "status": np.full(rows, "shown"), "rule": pa.nulls(rows, pa.string()),
        "model_versions": np.full(rows, "recommender=3"), "variants": pa.nulls(rows, pa.string()),
        "item_kind": np.where(item >= n_products, "offer", "product"),
        "item_id": item_ids[item], "position": position,
        "source": rng.choice(["for_you", "similar", "popular", "new"], rows),
        "latency_ms": pa.nulls(rows, pa.float64()), "team": pa.nulls(rows, pa.string()),
        "context": pa.nulls(rows, pa.string()),
        "_position": np.ones(rows, dtype=np.int64)})
    schema = arrow_schema(EXPOSURES).append(pa.field("_position", pa.int64()))
    warehouse.append_exposures(table.cast(schema), "bench", 1)

    follow = rng.random(events) < 0.7
    source = rng.integers(0, rows, events)
    delay = rng.exponential(6 * 3600, events)
    kind = rng.choice(["click", "add_to_cart", "purchase", "offer_redeemed", "return"], events,
                      p=[0.6, 0.2, 0.12, 0.05, 0.03])
    when = np.where(follow, answer_time[answer[source]] + delay,
                    START.timestamp() + rng.uniform(0, DAYS * 86400, events))
    event_item = np.where(follow, item[source], rng.integers(0, n_products, events))
    event_customer = np.where(follow, answer_customer[answer[source]],
                              rng.integers(0, n_customers, events))
    tagged = follow & (rng.random(events) < 0.33)
    frame = pd.DataFrame({
        "event_id": np.char.add("e", np.arange(events).astype(str)),
        "customer_id": np.array(customers["customer_id"])[event_customer],
        "item_id": item_ids[event_item], "event_type": kind,
        "timestamp": pd.to_datetime((when * 1e6).astype(np.int64), unit="us", utc=True),
        "channel": "web",
        "session_id": None, "quantity": 1, "price": None,
        "recommendation_id": np.where(tagged, ids[source], None), "decision_id": None,
        "context": None})
    warehouse.append_events(pa.Table.from_pandas(frame, preserve_index=False)
                            .cast(arrow_schema(EVENTS)).to_pandas())
    return warehouse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exposures", type=int, default=10_000_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        started = time.perf_counter()
        warehouse = build(Path(root), args.exposures, args.events)
        built = time.perf_counter() - started
        end = START + timedelta(days=DAYS)
        started = time.perf_counter()
        baseline = warehouse.query(
            "SELECT date_trunc('day', timestamp) AS day, channel, count(*) AS impressions "
            "FROM exposures GROUP BY ALL")
        scan = time.perf_counter() - started
        started = time.perf_counter()
        report = kpi_report(warehouse, START, end, by=("channel", "kind"), period="day")
        seconds = time.perf_counter() - started
    funnel = dict(zip(report.funnel["stage"], report.funnel["count"].astype(int), strict=True))
    result = {"exposure_rows": args.exposures, "events": args.events, "build_s": built,
              "report_s": seconds, "baseline_scan_s": scan, "kpi_rows": len(report.kpis),
              "baseline_rows": len(baseline), "funnel": funnel}
    text = "\n".join([
        f"{args.exposures:,} exposure rows ({args.exposures // ITEMS_PER_ANSWER:,} answers of "
        f"{ITEMS_PER_ANSWER} items, 200,000 customers, {DAYS} days) and {args.events:,} outcome "
        f"events; warehouse built in {built:.0f} s.", "",
        "| | seconds | ratio | target |", "|---|---|---|---|",
        f"| KPI report (attribution, every KPI by channel x kind per day, funnel, messages) | "
        f"{seconds:.2f} | {seconds / scan:.1f}x the scan | <= 10 s |",
        f"| baseline: one DuckDB pass counting impressions per day and channel | {scan:.2f} | 1x "
        "| |", "",
        f"Funnel found: {', '.join(f'{k} {v:,}' for k, v in funnel.items())}."])
    print(text)
    print(json.dumps({"bench": "kpis", **result}))
    if not args.no_record:
        from bench.record import record_section

        record_section("bench_kpis", "KPI report over 10M exposures",
                       "python bench/bench_kpis.py", text)


if __name__ == "__main__":
    main()

"""Experiment benchmark: what assignment adds to a request, and the report over 1M units.

    python bench/bench_experiments.py                  # 1M units
    python bench/bench_experiments.py --units 100000 --no-record

1. Assignment, in process: ``assign`` for a plan with a 5 % holdout and three experiments in two
   layers, per customer id, beside its floor (one BLAKE2b hash of the same id).
2. The report: a warehouse with one experiment of two variants over ``--units`` customers (an
   answer of five items each; 40 % of them with a click or a purchase, some purchased before
   the first exposure for CUPED, and after it views, carts, offer redemptions, returns and
   consent withdrawals), then ``experiment_report`` reading ten metrics (conversion as the
   primary, nine secondary: every count the report computes, the sample-ratio check, Holm over
   all of them, the daily cumulative effect, three guardrails, the verdict), beside a DuckDB
   pass counting units per variant over the same files.

Targets: assignment <= 10 us; the report over 1M units and 10 metrics <= 5 s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
import timeit
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.contracts import CUSTOMERS, EVENTS, EXPOSURES, ITEMS, arrow_schema  # noqa: E402
from features.experiments import ExperimentPlan, assign  # noqa: E402
from features.validation import validate_table  # noqa: E402
from features.warehouse import Warehouse  # noqa: E402
from training.experiment_report import experiment_report  # noqa: E402

START = datetime(2024, 3, 1, tzinfo=UTC)
DAYS = 14
PLAN = ExperimentPlan.model_validate({"holdout": {"share": 0.05}, "experiments": [
    {"name": "ranker", "layer": "home", "traffic": 0.5,
     "variants": [{"name": "A", "weight": 1}, {"name": "B", "weight": 1}]},
    {"name": "diversity", "layer": "home", "traffic": 0.5,
     "variants": [{"name": "A", "weight": 1}, {"name": "B", "weight": 1}]},
    {"name": "offers", "layer": "offers", "traffic": 1.0,
     "variants": [{"name": "A", "weight": 1}, {"name": "B", "weight": 1}]}]})


def assignment_cost(count: int = 200_000) -> tuple[float, float]:
    ids = [f"c{i:07d}" for i in range(count)]
    started = time.perf_counter()
    for customer in ids:
        assign(PLAN, customer)
    per_assign = (time.perf_counter() - started) / count * 1e6
    floor = timeit.timeit(lambda: hashlib.blake2b(b"ranker:c0001234", digest_size=8).digest(),
                          number=count) / count * 1e6
    return per_assign, floor


def build(root: Path, units: int, seed: int = 0) -> Warehouse:
    rng = np.random.default_rng(seed)
    warehouse = Warehouse(root / "warehouse")
    products = 20_000
    item_ids = np.array([f"p{i:06d}" for i in range(products)])
    items = pd.DataFrame({"item_id": item_ids, "kind": "product", "title": "x",
                          "price": rng.uniform(2, 200, products)})
    customer_ids = np.array([f"c{i:07d}" for i in range(units)])
    customers = pd.DataFrame({"customer_id": customer_ids,
                              "first_seen": START - timedelta(days=365)})
    for name, frame, contract in (("items", items, ITEMS), ("customers", customers, CUSTOMERS)):
        typed, report = validate_table(frame, contract, name)
        assert report.ok, report.describe()
        warehouse.upsert(name, typed)
    per = 5
    rows = units * per
    unit = np.repeat(np.arange(units), per)
    seen_at = START.timestamp() + rng.uniform(0, DAYS * 86400, units)
    variant = np.where(rng.random(units) < 0.5, "ranker=A", "ranker=B")
    item = rng.integers(0, products, rows)
    table = pa.table({
        "exposure_id": np.char.add("r", unit.astype(str)),
        "exposure_type": np.full(rows, "recommendation"), "customer_id": customer_ids[unit],
        "timestamp": pa.array((seen_at[unit] * 1e6).astype(np.int64), pa.timestamp("us", "UTC")),
        "channel": np.full(rows, "web"), "placement": np.full(rows, "home"),
        "status": np.full(rows, "shown"), "rule": pa.nulls(rows, pa.string()),
        "model_versions": np.full(rows, "recommender=3"), "variants": variant[unit],
        "item_kind": np.full(rows, "product"), "item_id": item_ids[item],
        "position": np.tile(np.arange(1, per + 1), units), "source": np.full(rows, "for_you"),
        "latency_ms": pa.nulls(rows, pa.float64()), "team": pa.nulls(rows, pa.string()),
        "context": pa.nulls(rows, pa.string()),
        "_position": np.ones(rows, dtype=np.int64)})
    schema = arrow_schema(EXPOSURES).append(pa.field("_position", pa.int64()))
    warehouse.append_exposures(table.cast(schema), "bench", 1)
    active = rng.random(units) < 0.4
    who = np.flatnonzero(active)
    lift = np.where(variant[who] == "ranker=B", 1.1, 1.0)
    kinds = np.where(rng.random(who.size) < 0.5 * lift / 1.1, "purchase", "click")
    before = rng.random(who.size) < 0.3  # a purchase before the first exposure, for CUPED
    when = np.where(before, seen_at[who] - rng.uniform(3600, 20 * 86400, who.size),
                    seen_at[who] + rng.uniform(60, 3 * 86400, who.size))
    first = rng.integers(0, per, who.size)
    customer, item_id = customer_ids[who], item_ids[item[who * per + first]]
    event_type = np.where(before, "purchase", kinds)
    # and after the first exposure: views (60 % of all units), carts, redemptions, returns
    viewer = np.flatnonzero(rng.random(units) < 0.6)
    extra = [(viewer, "view", 0.0), (who[rng.random(who.size) < 0.3], "add_to_cart", 0.1),
             (who[rng.random(who.size) < 0.05], "offer_redeemed", 0.2),
             (who[(event_type == "purchase") & ~before & (rng.random(who.size) < 0.1)],
              "return", 4.0)]
    parts = [(customer, item_id, event_type, when)]
    for people, kind, delay_days in extra:
        offset = seen_at[people] + delay_days * 86400 + rng.uniform(30, 86400, people.size)
        parts.append((customer_ids[people], item_ids[item[people * per]],
                      np.full(people.size, kind), offset))
    customer, item_id, event_type, when = (np.concatenate(c) for c in zip(*parts, strict=True))
    events = pd.DataFrame({
        "event_id": np.char.add("e", np.arange(customer.size).astype(str)),
        "customer_id": customer, "item_id": item_id, "event_type": event_type,
        "timestamp": pd.to_datetime((when * 1e6).astype(np.int64), unit="us", utc=True),
        "channel": "web", "session_id": None, "quantity": 1, "price": None,
        "recommendation_id": None, "decision_id": None, "context": None})
    warehouse.append_events(pa.Table.from_pandas(events, preserve_index=False)
                            .cast(arrow_schema(EVENTS)).to_pandas())
    quitting = np.flatnonzero(rng.random(units) < 0.005)  # consent withdrawn after exposure
    count = quitting.size
    consents = pa.table({
        "exposure_id": np.char.add("k", quitting.astype(str)),
        "exposure_type": np.full(count, "consent"), "customer_id": customer_ids[quitting],
        "timestamp": pa.array(((seen_at[quitting] + 3600) * 1e6).astype(np.int64),
                              pa.timestamp("us", "UTC")),
        "channel": np.full(count, "email"), "placement": np.full(count, "consent"),
        "status": np.full(count, "withdrawn"), "rule": pa.nulls(count, pa.string()),
        "model_versions": pa.nulls(count, pa.string()), "variants": pa.nulls(count, pa.string()),
        "item_kind": pa.nulls(count, pa.string()), "item_id": pa.nulls(count, pa.string()),
        "position": pa.nulls(count, pa.int64()), "source": pa.nulls(count, pa.string()),
        "latency_ms": pa.nulls(count, pa.float64()), "team": pa.nulls(count, pa.string()),
        "context": pa.nulls(count, pa.string()),
        "_position": np.full(count, 2, dtype=np.int64)})
    warehouse.append_exposures(consents.cast(schema), "bench", 2)
    return warehouse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=1_000_000)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    per_assign, floor = assignment_cost()
    experiment = ExperimentPlan.model_validate({"experiments": [
        {"name": "ranker", "traffic": 1, "start": START.isoformat(),
         "secondary_metrics": ["revenue", "ctr", "purchases", "orders", "quantity",
                               "average_order_value", "add_to_cart", "views", "return_rate"],
         "variants": [{"name": "A", "weight": 1}, {"name": "B", "weight": 1}]}]}).experiments[0]
    with tempfile.TemporaryDirectory() as root:
        started = time.perf_counter()
        warehouse = build(Path(root), args.units)
        built = time.perf_counter() - started
        started = time.perf_counter()
        counted = warehouse.query("SELECT variants, count(DISTINCT customer_id) AS units "
                                  "FROM exposures GROUP BY ALL")
        scan = time.perf_counter() - started
        started = time.perf_counter()
        report = experiment_report(warehouse, experiment, START + timedelta(days=DAYS + 3))
        seconds = time.perf_counter() - started
    result = {"units": args.units, "assign_us": per_assign, "hash_floor_us": floor,
              "report_s": seconds, "baseline_s": scan, "build_s": built,
              "verdict": report.verdict, "counted": int(counted["units"].sum())}
    text = "\n".join([
        f"Assignment over 200,000 ids (5 % holdout, three experiments in two layers); the report "
        f"over {args.units:,} units (5 impressions each, 40 % with an outcome; warehouse built "
        f"in {built:.0f} s).", "",
        "| | measured | baseline | ratio | target |", "|---|---|---|---|---|",
        f"| assignment per request, in process | {per_assign:.2f} us | one BLAKE2b hash "
        f"{floor:.2f} us | {per_assign / floor:.1f}x | <= 10 us |",
        f"| experiment report (SRM, {len(report.comparisons)} metrics, CUPED, sequential, Holm, "
        "daily, 3 guardrails, verdict) "
        f"| {seconds:.2f} s | DuckDB count of units per variant {scan:.2f} s | "
        f"{seconds / scan:.1f}x | <= 5 s |", "",
        f"Verdict on the synthetic data (B planted 10 % better on purchases): {report.verdict}"])
    print(text)
    print(json.dumps({"bench": "experiments", **result}))
    if not args.no_record:
        from bench.record import record_section

        record_section("bench_experiments", "Experiments: assignment and the report",
                       "python bench/bench_experiments.py", text)


if __name__ == "__main__":
    main()

"""Interleaving vs A/B on the simulated shop: how many customers each needs to tell two rankers
apart.

    python bench/bench_interleaving.py                 # 1,500 customers, 3 simulated days
    python bench/bench_interleaving.py --customers 600 --days 1 --no-record

Builds a synthetic shop, registers EASE (champion) and popularity (version 2), then simulates
the same visits twice through the real pipeline: once as an A/B test (half the customers
answered by each recommender; metric: click-through per customer, delta method), once as a
team-draft interleaving experiment (every customer sees both; metric: the sign test of which
ranker's items each customer clicked more). Each design's evidence per customer is z^2 / n (its
test statistic squared, over every customer it showed a list to, clicked or not); customers
needed for a given power scale with its inverse, so the ratio of the two is how many times
fewer customers interleaving needs.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import yaml
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.experiments import load_plan  # noqa: E402
from features.settings import Settings  # noqa: E402
from features.synthetic import ShopConfig, generate_shop, store_shop  # noqa: E402
from features.warehouse import Warehouse  # noqa: E402
from serving.simulator import SimulationConfig, simulate  # noqa: E402
from training import registry  # noqa: E402
from training.experiment_report import experiment_report, interleaving_report  # noqa: E402
from training.recommender_job import train_recommender  # noqa: E402
from training.tracking import configure  # noqa: E402

VARIANTS = [{"name": "ease", "weight": 1}, {"name": "popularity", "weight": 1, "recommender": "2"}]


def shop(root: Path, customers: int, days: int) -> Path:
    config = ShopConfig(n_customers=customers, n_products=150, days=75, seed=21)
    start = pd.Timestamp.now(tz="UTC").floor("D") - pd.Timedelta(days=75 + days + 1)
    store_shop(Warehouse(root / "warehouse"),
               generate_shop(config.model_copy(update={"start": start.to_pydatetime()})))
    settings = Settings(data_dir=root)
    first = train_recommender(settings, "ease")
    second = train_recommender(settings, "popularity")
    assert (first.version, second.version) == ("1", "2")
    from mlflow import MlflowClient

    configure(settings)
    registry.promote(MlflowClient(), settings.recommender_name, "1", "bench: EASE is champion")
    return root


def run(base: Path, root: Path, experiment: dict, days: int, visits: int) -> Path:
    data = root / experiment["name"]
    shutil.copytree(base, data)
    (data / "experiments.yaml").write_text(yaml.safe_dump({"experiments": [experiment]}))
    simulate(Settings(data_dir=data),
             SimulationConfig(days=days, visits_per_day=visits, seed=3))
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1500)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--visits", type=int, default=400)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        started = time.perf_counter()
        base = shop(Path(root) / "shop", args.customers, args.days)
        ab = run(base, Path(root), {"name": "ab", "traffic": 1.0, "primary_metric": "ctr",
                                    "variants": VARIANTS}, args.days, args.visits)
        duel = run(base, Path(root), {"name": "duel", "kind": "interleaving", "traffic": 1.0,
                                      "variants": VARIANTS}, args.days, args.visits)
        now = datetime.now(UTC)
        ab_report = experiment_report(Warehouse(ab / "warehouse"),
                                      load_plan(ab / "experiments.yaml").experiments[0], now)
        duel_report = interleaving_report(Warehouse(duel / "warehouse"),
                                          load_plan(duel / "experiments.yaml").experiments[0], now)
        exposed = int(Warehouse(duel / "warehouse").query(
            "SELECT count(DISTINCT customer_id) AS n FROM exposures "
            "WHERE variants = 'duel=interleaved'")["n"].iloc[0])
        seconds = time.perf_counter() - started
    ctr = ab_report.comparisons["ctr"][0]
    ab_units = sum(ctr.effect.units)
    ab_z = stats.norm.isf(ctr.effect.p_value / 2)
    decided = duel_report.wins["A"] + duel_report.wins["B"]
    duel_z = abs(duel_report.wins["A"] - duel_report.wins["B"]) / math.sqrt(decided) if decided \
        else 0.0
    duel_units = exposed or 1  # every customer shown the list, as A/B counts them
    ab_rate, duel_rate = ab_z ** 2 / ab_units, duel_z ** 2 / duel_units
    ratio = duel_rate / ab_rate if ab_rate else float("inf")
    result = {"customers": args.customers, "days": args.days, "visits": args.visits,
              "ab_units": ab_units, "ab_ctr_effect": ctr.effect.relative, "ab_z": ab_z,
              "interleaving_units": duel_units, "wins": duel_report.wins, "interleaving_z": duel_z,
              "fewer_customers_needed": ratio, "seconds": seconds}
    text = "\n".join([
        f"A {args.customers:,}-customer synthetic shop, {args.days} simulated days of "
        f"{args.visits} visits each way, EASE (champion) against popularity (version 2), through "
        f"the real pipeline ({seconds:.0f} s in all).", "",
        "| design | customers used | statistic | z | z^2 per customer |", "|---|---|---|---|---|",
        f"| A/B, click-through per customer (delta method) | {ab_units:,} | EASE vs popularity "
        f"{-ctr.effect.relative / (1 + ctr.effect.relative):+.0%} | {ab_z:.2f} | "
        f"{ab_rate:.4f} |",
        f"| team-draft interleaving, sign test | {duel_units:,} ({len(duel_report.units):,} "
        f"clicked) | prefer EASE "
        f"{duel_report.wins['A']:,}, popularity {duel_report.wins['B']:,}, tie "
        f"{duel_report.wins['tie']:,} | {duel_z:.2f} | {duel_rate:.4f} |", "",
        f"Interleaving needs about {ratio:.1f}x fewer customers than A/B for the same power on "
        "this pair of rankers (customers needed scale with 1 / (z^2 per customer))."])
    print(text)
    print(json.dumps({"bench": "interleaving", **result}, default=str))
    if not args.no_record:
        from bench.record import record_section

        record_section("bench_interleaving", "Experiments: interleaving vs A/B",
                       "python bench/bench_interleaving.py", text)


if __name__ == "__main__":
    main()

"""A/A experiments on the simulated shop: the report's false-positive rate on the outcomes the
real ranking pipeline produced.

    python bench/bench_aa_simulated.py                  # 500 A/A splits of 14 simulated days
    python bench/bench_aa_simulated.py --splits 100 --days 7 --no-record

One simulation runs an A/A experiment (two identical variants) for ``--days`` days through the
real pipeline, exposure log and attribution. Its per-customer metrics are then read by the
report's own code (``training.experiment_report``) under ``--splits`` fresh random splits of the
same customers (each split is what a new salt would assign; the arms were treated alike, so
every split is an A/A test). Each split is read at the end of every simulated day, and the
bench counts the splits in which each test ever declared a winner at alpha = 0.05:

* the group-sequential test (a stop planned at the last day), the verdict's test then;
* the always-valid mSPRT, the verdict's test without a planned stop;
* the fixed-horizon test, read daily (peeking) and once at the end.

The splits share one set of customers, so they are not independent experiments; the rate is the
mean over re-randomizations, as in a permutation test.
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
import yaml
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.experiments import bucket  # noqa: E402
from features.settings import Settings  # noqa: E402
from features.synthetic import ShopConfig, generate_shop, store_shop  # noqa: E402
from features.warehouse import Warehouse  # noqa: E402
from serving.simulator import SimulationConfig, simulate  # noqa: E402
from training.attribution import AttributionRule  # noqa: E402
from training.experiment_report import _daily, _units, unit_metrics  # noqa: E402
from training.experiment_stats import spending_boundaries  # noqa: E402
from training.recommender_job import train_recommender  # noqa: E402

ALPHA = 0.05


def simulated_units(root: Path, customers: int, days: int, visits: int) -> pd.DataFrame:
    config = ShopConfig(n_customers=customers, n_products=150, days=75, seed=21)
    history_end = pd.Timestamp.now(tz="UTC").floor("D") - pd.Timedelta(days=days + 1)
    store_shop(Warehouse(root / "warehouse"), generate_shop(config.model_copy(
        update={"start": (history_end - pd.Timedelta(days=75)).to_pydatetime()})))
    settings = Settings(data_dir=root)
    train_recommender(settings, "ease")
    start = datetime.now(UTC) - timedelta(days=days, minutes=1)
    (root / "experiments.yaml").write_text(yaml.safe_dump({"experiments": [{
        "name": "aa", "traffic": 1.0, "start": start.isoformat(),
        "variants": [{"name": "A", "weight": 1}, {"name": "B", "weight": 1}]}]}))
    simulate(settings, SimulationConfig(days=days, visits_per_day=visits, seed=5))
    return Warehouse(root / "warehouse").analyse(
        lambda c: _units(c, "aa", start, datetime.now(UTC), AttributionRule(), 30))


def one_split(units: pd.DataFrame, salt: str, metric: str, bounds: np.ndarray) -> dict:
    arms = np.where([bucket(salt, c) < 5000 for c in units["customer_id"]], "A", "B")
    daily = _daily(units.assign(variant=arms), ["A", "B"], metric, ALPHA)
    z = daily["z"].to_numpy()
    return {"planned": bool((np.abs(z) >= bounds[-len(z):]).any()),
            "sequential": bool((daily["sequential_p"] < ALPHA).any()),
            "peeking": bool((2 * stats.norm.sf(np.abs(z)) < ALPHA).any()),
            "fixed_once": bool(2 * stats.norm.sf(abs(z[-1])) < ALPHA)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=500)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--visits", type=int, default=400)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        units = simulated_units(Path(root), args.customers, args.days, args.visits)
    simulated = time.perf_counter() - started
    units = unit_metrics(units[~units["mixed"]])
    looks = pd.to_datetime(units["first_exposure"], utc=True).dt.floor("D").nunique()
    bounds = spending_boundaries([k / looks for k in range(1, looks + 1)], ALPHA)
    rates = {}
    for metric in ("conversion", "ctr"):
        runs = [one_split(units, f"aa-split-{i}", metric, bounds) for i in range(args.splits)]
        rates[metric] = {t: float(np.mean([r[t] for r in runs])) for t in runs[0]}
    text = "\n".join([
        f"One A/A experiment of {args.days} simulated days ({args.visits} visits a day, "
        f"{args.customers:,}-customer shop, real pipeline; {len(units):,} customers exposed, "
        f"{looks} daily looks; simulated in {simulated:.0f} s), read under {args.splits} fresh "
        "random splits of its customers; share of splits that declared a winner at alpha = 0.05:",
        "", "| metric | group-sequential, read daily | always-valid (mSPRT), read daily | "
        "fixed horizon, read daily | fixed horizon, read once |", "|---|---|---|---|---|",
        *(f"| {m} | {r['planned']:.1%} | {r['sequential']:.1%} | {r['peeking']:.1%} | "
          f"{r['fixed_once']:.1%} |" for m, r in rates.items())])
    print(text)
    print(json.dumps({"bench": "aa_simulated", "splits": args.splits, "rates": rates}))
    if not args.no_record:
        from bench.record import record_section

        record_section("bench_aa_simulated", "Experiments: A/A on the simulated shop",
                       "python bench/bench_aa_simulated.py", text)


if __name__ == "__main__":
    main()

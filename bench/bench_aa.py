"""A/A study: how often the experiment report declares a winner when there is none.

    python bench/bench_aa.py                       # 1,000 A/A experiments, 14 daily reads
    python bench/bench_aa.py --runs 200 --no-record

Each simulated experiment splits arriving customers 50/50 between two identical variants: 300
customers a day per variant for 14 days, each converting with the synthetic shop's rate (12 %)
and spending a gamma-distributed amount when they do. The report is read at the end of every
day, as a team that checks its dashboard daily would. For conversion and revenue per customer
it counts the experiments in which

* the group-sequential test the verdict uses when the experiment has a planned stop
  (O'Brien-Fleming alpha spending over the 14 daily looks) ever crossed its boundary;
* the always-valid test the verdict uses otherwise (mSPRT, mixture spread 10 % of the control's
  level, ``training.experiment_report``) ever fell below alpha = 0.05;
* the fixed-horizon test, read every day, ever did (peeking);
* the fixed-horizon test, read once at the end, did (its nominal 5 %).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.experiment_report import _tau2  # noqa: E402
from training.experiment_stats import msprt, spending_boundaries  # noqa: E402

ALPHA, DAYS, PER_DAY, RATE = 0.05, 14, 300, 0.12


BOUNDS = spending_boundaries([day / DAYS for day in range(1, DAYS + 1)], ALPHA)
"""The group-sequential test's z boundaries for an experiment planned to stop after DAYS."""


def one_run(rng: np.random.Generator) -> dict[str, dict[str, bool]]:
    units = DAYS * PER_DAY
    converted = rng.random((2, units)) < RATE
    revenue = np.where(converted, rng.gamma(2.0, 40.0, (2, units)), 0.0)
    found = {}
    for metric, values in (("conversion", converted.astype(float)), ("revenue", revenue)):
        sequential = peeking = planned = False
        for day in range(1, DAYS + 1):
            a, b = values[0, :day * PER_DAY], values[1, :day * PER_DAY]
            variance = a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)
            difference = b.mean() - a.mean()
            sequential |= msprt(difference, variance, _tau2(a.mean(), variance)).p_value < ALPHA
            z = difference / math.sqrt(variance) if variance > 0 else 0.0
            peeking |= 2 * stats.norm.sf(abs(z)) < ALPHA
            planned |= abs(z) >= BOUNDS[day - 1]
        found[metric] = {"sequential": sequential, "planned": planned, "peeking": peeking,
                         "fixed_once": 2 * stats.norm.sf(abs(z)) < ALPHA}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    runs = [one_run(rng) for _ in range(args.runs)]
    rates = {m: {t: float(np.mean([r[m][t] for r in runs])) for t in
                 ("sequential", "planned", "peeking", "fixed_once")}
             for m in ("conversion", "revenue")}
    text = "\n".join([
        f"{args.runs:,} A/A experiments, 2 x {PER_DAY} customers a day for {DAYS} days, "
        f"conversion {RATE:.0%}, read every day; share that declared a winner at alpha = 0.05:",
        "", "| metric | group-sequential (planned stop), read daily | always-valid (mSPRT), "
        "read daily | fixed horizon, read daily | fixed horizon, read once |",
        "|---|---|---|---|---|",
        *(f"| {m} | {r['planned']:.1%} | {r['sequential']:.1%} | {r['peeking']:.1%} | "
          f"{r['fixed_once']:.1%} |" for m, r in rates.items())])
    print(text)
    print(json.dumps({"bench": "aa", "runs": args.runs, "rates": rates}))
    if not args.no_record:
        from bench.record import record_section

        record_section("bench_aa", "Experiments: A/A false-positive rates",
                       "python bench/bench_aa.py", text)


if __name__ == "__main__":
    main()

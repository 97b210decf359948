"""Propensity at rolling 30-day horizons: does the model the job would register beat the best
baseline it logs, cutoff after cutoff, on small purchase-only data?

    python bench/bench_propensity_rolling.py             # records docs/benchmarks.md
    python bench/bench_propensity_rolling.py --no-record

Two datasets, both purchases only:

1. CDNOW (``CDNOW_master.txt``, 23,570 customers, 1997-01 .. 1998-06): a test cutoff on the
   first of every month from May 1997 (the first with four training snapshots of history
   before it) to June 1998 (the last whose 30-day label window is complete);
2. the synthetic shop with only its purchase events kept (3,000 customers), at monthly cutoffs.

At each cutoff the job's own steps run on the events up to the end of the label window: four
training snapshots 14 days apart, a validation snapshot one horizon before the test cutoff,
every candidate family fitted and the one that ranks the validation snapshot best kept
(``training.propensity_job.fit_candidates``), the recency and logistic-RFM baselines fitted on
the training and validation rows, and all scored on the test snapshot. Free LightGBM, the only
model before the choice of family, is shown too.

Targets: the chosen model beats the best baseline by at least 0.01 ROC-AUC on average over the
cutoffs, and is never below it at any cutoff (the gate would refuse it there).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CDNOW = ROOT.parent / "shared" / "data" / "cdnow"
HORIZON = 30.0
PLOT = ROOT / "docs" / "propensity_rolling.png"


def at_cutoff(events: pd.DataFrame, items: pd.DataFrame, cutoff: pd.Timestamp) -> dict:
    from sklearn.metrics import roc_auc_score

    from training.propensity.baselines import BASELINES, FeatureLogistic
    from training.propensity.datasets import SNAPSHOTS, CutoffPlan, model_inputs
    from training.propensity_job import Snapshots, fit_candidates

    # the job's plan (plan_cutoffs), with the test cutoff placed here rather than at the data's end
    horizon, step = pd.Timedelta(days=HORIZON), pd.Timedelta(days=14)
    validation = cutoff - horizon
    plan = CutoffPlan(tuple(validation - step * (i + 1) for i in reversed(range(4))), validation,
                      cutoff, horizon)
    known = events[events["timestamp"] < cutoff + horizon]
    build = SNAPSHOTS["purchase"]
    snapshots = Snapshots(plan, pd.concat([build(known, items, c, horizon) for c in plan.train]),
                          build(known, items, validation, horizon),
                          build(known, items, cutoff, horizon))
    choice = fit_candidates({}, snapshots)
    X_test, y_test = model_inputs(snapshots.test)
    X, y = model_inputs(pd.concat([snapshots.train, snapshots.calibration]))
    row = {"cutoff": f"{cutoff:%Y-%m-%d}", "customers": len(y_test), "buyers": int(y_test.sum()),
           "chosen": choice.name,
           "chosen_auc": float(roc_auc_score(y_test, choice.model.raw_score(X_test)))}
    free = choice.candidates["lightgbm"]
    row["lightgbm_auc"] = float(roc_auc_score(y_test, free.raw_score(X_test)))
    for name, features in BASELINES.items():
        p = FeatureLogistic(features).fit(X, y).predict_proba(X_test)[:, 1]
        row[f"{name}_auc"] = float(roc_auc_score(y_test, p))
    row["best_baseline_auc"] = max(row[f"{name}_auc"] for name in BASELINES)
    row["margin"] = row["chosen_auc"] - row["best_baseline_auc"]
    return row


def cdnow_events(cdnow: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[pd.Timestamp]]:
    from features.importers import import_cdnow

    batch = import_cdnow(cdnow / "CDNOW_master.txt")
    cutoffs = list(pd.date_range("1997-05-01", "1998-06-01", freq="MS", tz="UTC"))
    return batch.events, batch.items, cutoffs


def synthetic_events(customers: int) -> tuple[pd.DataFrame, pd.DataFrame, list[pd.Timestamp]]:
    from features.synthetic import ShopConfig, generate_shop

    shop = generate_shop(ShopConfig(n_customers=customers, n_products=300, days=365, seed=7))
    events = shop.events[shop.events["event_type"] == "purchase"].reset_index(drop=True)
    start = pd.Timestamp(shop.config.start)
    first = (start + pd.Timedelta(days=120)).floor("D")
    last = (start + pd.Timedelta(days=365 - HORIZON - 1)).floor("D")
    return events, shop.items, list(pd.date_range(first, last, freq="30D"))


def run(name: str, events, items, cutoffs, progress) -> pd.DataFrame:
    rows = []
    for cutoff in cutoffs:
        rows.append(at_cutoff(events, items, cutoff))
        progress(name, rows[-1])
    return pd.DataFrame(rows)


def table(name: str, frame: pd.DataFrame) -> str:
    lines = [f"**{name}**", "",
             "| test cutoff | customers | buyers | chosen | chosen AUC | free LightGBM | recency | "
             "RFM logistic | margin over best baseline |", "|---|---|---|---|---|---|---|---|---|"]
    for r in frame.itertuples():
        lines.append(f"| {r.cutoff} | {r.customers:,} | {r.buyers:,} | {r.chosen} | "
                     f"{r.chosen_auc:.4f} | {r.lightgbm_auc:.4f} | {r.recency_auc:.4f} | "
                     f"{r.rfm_logistic_auc:.4f} | {r.margin:+.4f} |")
    lines.append(f"| **mean** | | | | {frame['chosen_auc'].mean():.4f} | "
                 f"{frame['lightgbm_auc'].mean():.4f} | {frame['recency_auc'].mean():.4f} | "
                 f"{frame['rfm_logistic_auc'].mean():.4f} | **{frame['margin'].mean():+.4f}** |")
    return "\n".join(lines)


def plot(results: dict[str, pd.DataFrame], path: Path) -> Path:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4))
    for axis, (name, frame) in zip(figure.subplots(1, len(results)), results.items(), strict=True):
        x = pd.to_datetime(frame["cutoff"])
        for column, label in (("chosen_auc", "chosen (registered)"),
                              ("lightgbm_auc", "free LightGBM"),
                              ("best_baseline_auc", "best baseline")):
            axis.plot(x, frame[column], marker="o", label=label)
        axis.set_title(f"{name}\nROC-AUC, 30-day horizon, by test cutoff", fontsize=10)
        axis.tick_params(axis="x", labelrotation=45)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    return path


def main() -> None:
    from rich.console import Console

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cdnow", type=Path, default=CDNOW)
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    if not (args.cdnow / "CDNOW_master.txt").exists():
        raise SystemExit(f"{args.cdnow}/CDNOW_master.txt not found; pass --cdnow DIR")
    console = Console(stderr=True)

    def progress(name: str, row: dict) -> None:
        console.print(f"{name} {row['cutoff']}: {row['chosen']} {row['chosen_auc']:.4f}, best "
                      f"baseline {row['best_baseline_auc']:.4f} ({row['margin']:+.4f})")

    started = time.perf_counter()
    results = {"CDNOW": run("CDNOW", *cdnow_events(args.cdnow), progress),
               "synthetic shop, purchases only": run(
                   "synthetic", *synthetic_events(args.customers), progress)}
    seconds = time.perf_counter() - started
    verdicts = {name: {"mean_margin": round(float(f["margin"].mean()), 4),
                       "worst_margin": round(float(f["margin"].min()), 4),
                       "cutoffs": len(f), "chosen": f["chosen"].value_counts().to_dict()}
                for name, f in results.items()}
    met = {name: v["mean_margin"] >= 0.01 and v["worst_margin"] >= 0 for name, v in verdicts.items()}
    text = "\n\n".join([table(name, frame) for name, frame in results.items()] + [
        "Targets: the chosen model beats the best baseline by >= 0.01 ROC-AUC on average and is "
        "never below it. " + "; ".join(
            f"{name}: mean {v['mean_margin']:+.4f}, worst {v['worst_margin']:+.4f} — "
            f"{'met' if met[name] else 'not met'}" for name, v in verdicts.items())
        + f". {seconds:.0f} s in all. Plot: [propensity_rolling.png](propensity_rolling.png)."])
    print(text)
    print(json.dumps({"bench": "propensity_rolling", **verdicts, "met": met,
                      "seconds": round(seconds)}))
    if not args.no_record:
        from bench.record import record_section

        plot(results, PLOT)
        record_section("bench_propensity_rolling", "Propensity at rolling 30-day horizons",
                       "python bench/bench_propensity_rolling.py", text)


if __name__ == "__main__":
    main()

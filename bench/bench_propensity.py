"""Propensity benchmark on CDNOW: nextbest against BG/NBD on the classic split.

    python bench/bench_propensity.py             # records docs/benchmarks.md
    python bench/bench_propensity.py --no-record

1. BG/NBD fitted on the 2,357-customer sample summary (``cdnow_customers_summary.csv``), next
   to the published parameters (r 0.24, alpha 4.41, a 0.79, b 2.43).
2. The classic split on all 23,570 customers of ``CDNOW_master.txt``: the first 39 weeks
   (1997-01-01 .. 1997-09-30) are known, the next 39 weeks are the test. The question: will the
   customer buy again in the test period?
   * BG/NBD: fitted on the known period only (repeat-purchase days, in weeks); its score is
     P(at least one purchase in the next 39 weeks).
   * nextbest: the point-in-time customer features as of 1997-10-01 plus BG/NBD's p_alive and
     expected purchases as inputs; LightGBM with early stopping, calibrated on rows it did not
     train on. Scores are out-of-fold (5 folds by customer): no customer is scored by a model
     that saw their own outcome.
   Metrics: ROC-AUC, ECE, Brier, and expected vs actual by number of repeat purchases in the
   known period. Target: AUC at least 0.02 above BG/NBD, ECE <= 0.02.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CDNOW = ROOT.parent / "shared" / "data" / "cdnow"
PUBLISHED = {"r": 0.24, "alpha": 4.41, "a": 0.79, "b": 2.43}
CUTOFF = pd.Timestamp("1997-10-01", tz="UTC")
END = pd.Timestamp("1998-07-01", tz="UTC")
WEEKS = 39.0


def rfm_in_weeks(events: pd.DataFrame) -> pd.DataFrame:
    """x (repeat purchase days), t_x and T in weeks from each customer's first purchase."""
    days = events.assign(day=events["timestamp"].dt.floor("D")).drop_duplicates(
        ["customer_id", "day"])
    grouped = days.groupby("customer_id")["day"]
    first, last, count = grouped.min(), grouped.max(), grouped.size()
    return pd.DataFrame({"x": count - 1, "t_x": (last - first) / pd.Timedelta(weeks=1),
                         "T": (CUTOFF - first) / pd.Timedelta(weeks=1)})


def run(cdnow: Path) -> dict:
    from sklearn.model_selection import StratifiedKFold

    from features.importers import import_cdnow
    from features.point_in_time import compute_customer_features
    from training.propensity.bgnbd import BGNBD
    from training.propensity.datasets import numeric_features
    from training.propensity.evaluate import classification_metrics
    from training.propensity.model import PropensityModel

    summary = pd.read_csv(cdnow / "cdnow_customers_summary.csv")
    sample_fit = BGNBD().fit(summary["frequency"], summary["recency"], summary["T"]).params_

    batch = import_cdnow(cdnow / "CDNOW_master.txt")
    events = batch.events
    known = events[events["timestamp"] < CUTOFF]
    test = events[(events["timestamp"] >= CUTOFF) & (events["timestamp"] < END)]
    rfm = rfm_in_weeks(known)
    bgnbd = BGNBD().fit(rfm["x"], rfm["t_x"], rfm["T"])
    bg_score = pd.Series(bgnbd.probability_of_purchase(WEEKS, rfm["x"], rfm["t_x"], rfm["T"]),
                         index=rfm.index)
    expected = pd.Series(bgnbd.expected_purchases(WEEKS, rfm["x"], rfm["t_x"], rfm["T"]),
                         index=rfm.index)
    test_days = test.assign(day=test["timestamp"].dt.floor("D")).drop_duplicates(
        ["customer_id", "day"]).groupby("customer_id").size()
    actual = test_days.reindex(rfm.index, fill_value=0)
    label = (actual > 0).astype(int).to_numpy()

    started = time.perf_counter()
    features = numeric_features(compute_customer_features(known, CUTOFF, batch.items))
    features = features.reindex(rfm.index)
    features["bgnbd_p_alive"] = bgnbd.probability_alive(rfm["x"], rfm["t_x"], rfm["T"])
    features["bgnbd_expected_39w"] = expected.to_numpy()
    features["repeat_days"] = rfm["x"].to_numpy()
    features["weeks_since_first"] = rfm["T"].to_numpy()
    features = features.astype(float)
    ours = np.zeros(len(features))
    folds = StratifiedKFold(5, shuffle=True, random_state=42)
    for train_rows, test_rows in folds.split(features, label):
        model = PropensityModel(n_estimators=800, learning_rate=0.03, num_leaves=15,
                                min_child_samples=100, calibration="isotonic",
                                calibration_fraction=0.3)
        model.fit(features.iloc[train_rows], label[train_rows])
        ours[test_rows] = model.predict_proba(features.iloc[test_rows])[:, 1]
    fit_seconds = time.perf_counter() - started

    # Export throughput: score and explain 1M customers (feature rows resampled from CDNOW's).
    from training.propensity.evaluate import deciles
    from training.propensity.scoring import reason_columns

    million = features.sample(1_000_000, replace=True, random_state=0)
    million.index = [f"x{i}" for i in range(len(million))]
    started = time.perf_counter()
    scores = model.predict_proba(million)[:, 1]
    ranks = deciles(scores)
    explained = reason_columns(model, million)
    score_seconds = time.perf_counter() - started
    assert len(ranks) == len(explained) == 1_000_000
    # the baseline, in the same run: TreeSHAP's contributions (what reasons used before path
    # attribution) on 20,000 of the rows, projected to the million
    sample = million.head(20_000)
    started = time.perf_counter()
    shap = model.contributions(sample, method="shap")
    shap_seconds = (time.perf_counter() - started) * len(million) / len(sample)
    paths = model.contributions(sample)
    agreement = float((shap.drop(columns="bias").abs().to_numpy().argmax(axis=1)
                       == paths.drop(columns="bias").abs().to_numpy().argmax(axis=1)).mean())

    metrics = {"nextbest": classification_metrics(label, ours),
               "bgnbd": classification_metrics(label, bg_score.to_numpy())}
    groups = pd.DataFrame({"repeat_days": np.minimum(rfm["x"].to_numpy(), 7), "actual": actual,
                           "bgnbd_expected": expected, "bought": label, "nextbest_p": ours,
                           "bgnbd_p": bg_score.to_numpy()})
    by_group = groups.groupby("repeat_days").agg(
        customers=("actual", "size"), actual_purchases=("actual", "mean"),
        bgnbd_expected_purchases=("bgnbd_expected", "mean"), actual_share_buying=("bought", "mean"),
        nextbest_p=("nextbest_p", "mean"), bgnbd_p=("bgnbd_p", "mean"))
    return {
        "sample_params": {k: float(getattr(sample_fit, k)) for k in PUBLISHED},
        "full_params": {k: float(getattr(bgnbd.params_, k)) for k in PUBLISHED},
        "customers": len(rfm), "metrics": metrics, "by_group": by_group.reset_index(),
        "fit_seconds": fit_seconds, "score_1m_seconds": score_seconds,
        "shap_1m_seconds": shap_seconds, "top_reason_agreement": agreement,
    }


def render(result: dict) -> str:
    p, s = PUBLISHED, result["sample_params"]
    lines = ["BG/NBD on the 2,357-customer sample summary:", "",
             "| parameter | published | nextbest BG/NBD |", "|---|---|---|"]
    lines += [f"| {k} | {p[k]} | {s[k]:.4f} |" for k in p]
    m = result["metrics"]
    lines += ["", f"Any repeat purchase in the 39 test weeks, all {result['customers']:,} customers "
              "(out-of-fold for nextbest):", "",
              "| model | ROC-AUC | PR-AUC | Brier | log loss | ECE | top-decile lift |",
              "|---|---|---|---|---|---|---|"]
    for name in ("nextbest", "bgnbd"):
        r = m[name]
        lines.append(f"| {name} | {r['roc_auc']:.4f} | {r['pr_auc']:.4f} | {r['brier']:.4f} | "
                     f"{r['log_loss']:.4f} | {r['ece']:.4f} | {r['lift_top_decile']:.2f} |")
    lines += ["", "By repeat-purchase days in the known period (7 = 7 or more): mean purchase days "
              "in the test period, and the share who bought at all:", "",
              "| repeat days | customers | actual purchases | BG/NBD expected | actual share "
              "buying | nextbest P | BG/NBD P |", "|---|---|---|---|---|---|---|"]
    for row in result["by_group"].itertuples():
        lines.append(f"| {row.repeat_days} | {row.customers:,} | {row.actual_purchases:.3f} | "
                     f"{row.bgnbd_expected_purchases:.3f} | {row.actual_share_buying:.3f} | "
                     f"{row.nextbest_p:.3f} | {row.bgnbd_p:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cdnow", type=Path, default=CDNOW)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    if not (args.cdnow / "CDNOW_master.txt").exists():
        raise SystemExit(f"{args.cdnow}/CDNOW_master.txt not found; pass --cdnow DIR")
    result = run(args.cdnow)
    text = render(result)
    print(text)
    ours, bg = result["metrics"]["nextbest"], result["metrics"]["bgnbd"]
    verdict = {"auc_gain": round(ours["roc_auc"] - bg["roc_auc"], 4), "ece": round(ours["ece"], 4)}
    verdict["meets_target"] = verdict["auc_gain"] >= 0.02 and verdict["ece"] <= 0.02
    print(f"scoring 1,000,000 customers with reasons: {result['score_1m_seconds']:.1f} s")
    print(json.dumps({"bench": "propensity", "nextbest_auc": round(ours["roc_auc"], 4),
                      "bgnbd_auc": round(bg["roc_auc"], 4), **verdict,
                      "bgnbd_sample_params": result["sample_params"]}))
    if not args.no_record:
        from bench.record import record_section

        record_section("bench_propensity", "Propensity: CDNOW, nextbest vs BG/NBD",
                       "python bench/bench_propensity.py", text +
                       f"\n\nTarget: AUC at least 0.02 above BG/NBD (got {verdict['auc_gain']:+.4f}) "
                       f"and ECE <= 0.02 (got {verdict['ece']:.4f}): "
                       f"{'met' if verdict['meets_target'] else 'not met'}. Features, folds and "
                       f"calibration took {result['fit_seconds']:.0f} s. Scoring 1,000,000 customers "
                       f"with deciles and three reasons each (the export's work after features): "
                       f"{result['score_1m_seconds']:.1f} s (target 30 s); TreeSHAP's "
                       f"contributions alone, timed on 20,000 of them in the same run, project "
                       f"to {result['shap_1m_seconds']:.0f} s for the million. The reasons' "
                       f"top feature agrees with TreeSHAP's for "
                       f"{result['top_reason_agreement']:.1%} of those customers.")


if __name__ == "__main__":
    main()

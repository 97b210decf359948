"""Reading an experiment: per-unit metrics from the exposure log, the checks, and a verdict.

The unit is the customer. A customer counts from their first exposure in the experiment (the
first answer or message that named its variant); only what they did after it counts, until the
report's end. A customer seen in more than one variant is left out and counted (it means the
assignment changed: a new salt, or a file edited mid-run). Per unit:

* ``conversion``: bought anything after the first exposure (proportions);
* ``revenue``: net revenue (purchases minus returns) after it, CUPED-adjusted by the revenue of
  the ``covariate_days`` before it (means, Welch);
* ``ctr``: clicks credited to the experiment's exposures over their impressions (a ratio
  metric, delta method).

Each variant is compared with the first one (the control). The sample-ratio check comes first
and blocks the verdict when it fails; effects are reported with fixed-horizon intervals and
with the always-valid (mSPRT) p-value and confidence sequence, which stay valid however often
the report is read; the verdict uses the latter, with Holm's correction over variants and
metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pandas as pd

from features.contracts import EventType, ExposureStatus
from features.experiments import Experiment
from features.warehouse import Warehouse
from training.attribution import AttributionRule, attribute
from training.experiment_stats import (
    Effect,
    SampleRatio,
    Sequential,
    conversion_effect,
    cuped,
    holm,
    mean_effect,
    msprt,
    ratio_effect,
    sample_ratio,
    units_needed,
)

METRICS = ("conversion", "revenue", "ctr")
EFFECT_SCALE = 0.1
"""The mSPRT mixture's spread, relative to the control's level: effects of about 10 % are what
it is most sensitive to (any mixture keeps the error rate; this one sets the power)."""


def _tau2(control_level: float, variance: float) -> float:
    scale = (EFFECT_SCALE * control_level) ** 2
    return scale if scale > 0 else max(variance, 1e-12)


@dataclass(frozen=True)
class Comparison:
    variant: str
    effect: Effect
    sequential: Sequential
    adjusted_p: float = math.nan


@dataclass
class ExperimentReport:
    experiment: str
    start: datetime
    end: datetime
    units: pd.DataFrame
    """One row per unit: variant, first exposure, and each metric's parts."""
    excluded: int
    ratio: SampleRatio
    comparisons: dict[str, list[Comparison]] = field(default_factory=dict)
    """metric -> one comparison per non-control variant."""
    daily: pd.DataFrame | None = None
    """The primary metric's cumulative effect per day, with both intervals."""
    verdict: str = ""


def experiment_report(warehouse: Warehouse, experiment: Experiment, end: datetime,
                      rule: AttributionRule | None = None, covariate_days: int = 30,
                      alpha: float = 0.05) -> ExperimentReport:
    start = experiment.start or (end - timedelta(days=90))
    end = min(end, experiment.stop) if experiment.stop else end
    units = warehouse.analyse(lambda c: _units(c, experiment.name, start, end,
                                               rule or AttributionRule(), covariate_days))
    variants = [v.name for v in experiment.variants]
    mixed = units["variants"] > 1
    kept = units[~mixed & units["variant"].isin(variants)].copy()
    counts = {v: int((kept["variant"] == v).sum()) for v in variants}
    ratio = sample_ratio(counts, {v.name: v.weight for v in experiment.variants})
    report = ExperimentReport(experiment.name, start, end, kept, int(mixed.sum()), ratio)
    if min(counts.values(), default=0) < 2:
        report.verdict = f"not enough units yet: {counts}; keep running"
        return report
    report.comparisons = _compare(kept, variants, alpha)
    flat = [c for metric in METRICS for c in report.comparisons[metric]]
    for comparison, adjusted in zip(flat, holm([c.sequential.p_value for c in flat], alpha),
                                    strict=True):
        object.__setattr__(comparison, "adjusted_p", adjusted)
    report.daily = _daily(kept, variants, experiment.primary_metric, alpha)
    report.verdict = _verdict(report, experiment, alpha)
    return report


def _units(connection, name: str, start: datetime, end: datetime, rule: AttributionRule,
           covariate_days: int) -> pd.DataFrame:
    attribute(connection, start, end, rule)
    pattern = f"(^|\\|){name}=([^|]+)"
    return connection.execute(f"""
        WITH placed AS (
            SELECT customer_id, exposure_id, timestamp, item_id,
                   regexp_extract(variants, $pattern, 2) AS variant
            FROM exposures
            WHERE timestamp >= $start AND timestamp < $end
              AND status IN ('{ExposureStatus.SHOWN.value}', '{ExposureStatus.SENT.value}')
              AND regexp_matches(variants, $pattern)),
        units AS (
            SELECT customer_id, any_value(variant) AS variant,
                   count(DISTINCT variant) AS variants, min(timestamp) AS first_exposure,
                   count(item_id) AS impressions
            FROM placed GROUP BY customer_id),
        clicks AS (
            SELECT a.customer_id, count(*) AS clicks FROM attributed a
            WHERE a.event_type = '{EventType.CLICK.value}'
              AND a.exposure_id IN (SELECT exposure_id FROM placed)
            GROUP BY a.customer_id),
        money AS (
            SELECT u.customer_id,
                   count_if(e.event_type = '{EventType.PURCHASE.value}'
                            AND e.timestamp >= u.first_exposure) AS purchases,
                   coalesce(sum(CASE WHEN e.timestamp >= u.first_exposure
                                     THEN sign * e.quantity * coalesce(e.price, i.price, 0)
                                END), 0) AS revenue,
                   coalesce(sum(CASE WHEN e.timestamp < u.first_exposure
                                     THEN sign * e.quantity * coalesce(e.price, i.price, 0)
                                END), 0) AS revenue_before
            FROM units u
            JOIN (SELECT *, CASE WHEN event_type = '{EventType.RETURN.value}' THEN -1 ELSE 1
                                 END AS sign
                  FROM events
                  WHERE event_type IN ('{EventType.PURCHASE.value}', '{EventType.RETURN.value}')
                    AND timestamp >= $covariate_start AND timestamp < $end) e
              ON e.customer_id = u.customer_id
             AND e.timestamp >= u.first_exposure - INTERVAL {int(covariate_days)} DAY
            LEFT JOIN items i ON i.item_id = e.item_id
            GROUP BY u.customer_id)
        SELECT u.*, coalesce(c.clicks, 0) AS clicks, coalesce(m.purchases, 0) AS purchases,
               coalesce(m.revenue, 0) AS revenue, coalesce(m.revenue_before, 0) AS revenue_before
        FROM units u LEFT JOIN clicks c USING (customer_id) LEFT JOIN money m USING (customer_id)
    """, {"pattern": pattern, "start": start, "end": end,
          "covariate_start": start - timedelta(days=covariate_days)}).df()


def _compare(units: pd.DataFrame, variants: list[str], alpha: float
             ) -> dict[str, list[Comparison]]:
    units = units.assign(converted=(units["purchases"] > 0).astype(float))
    units["revenue_cuped"], _ = cuped(units["revenue"].to_numpy(),
                                      units["revenue_before"].to_numpy())
    control = units[units["variant"] == variants[0]]
    found: dict[str, list[Comparison]] = {m: [] for m in METRICS}
    for name in variants[1:]:
        treated = units[units["variant"] == name]
        effects = {
            "conversion": conversion_effect(
                "conversion", (int(control["converted"].sum()), int(treated["converted"].sum())),
                (len(control), len(treated)), alpha),
            "revenue": mean_effect("revenue per customer", control["revenue_cuped"],
                                   treated["revenue_cuped"], alpha),
            "ctr": ratio_effect("click-through", (control["clicks"], treated["clicks"]),
                                (control["impressions"].clip(lower=1),
                                 treated["impressions"].clip(lower=1)), alpha)}
        for metric, effect in effects.items():
            found[metric].append(Comparison(name, effect, _sequential(
                metric, control, treated, alpha)))
    return found


def _sequential(metric: str, control: pd.DataFrame, treated: pd.DataFrame, alpha: float
                ) -> Sequential:
    """The always-valid test of the difference treated - control for one metric."""
    if metric == "conversion":
        a, b = control["converted"].to_numpy(), treated["converted"].to_numpy()
    elif metric == "revenue":
        a, b = control["revenue_cuped"].to_numpy(), treated["revenue_cuped"].to_numpy()
    else:
        from training.experiment_stats import ratio_and_variance

        ratio_a, var_a = ratio_and_variance(control["clicks"], control["impressions"].clip(lower=1))
        ratio_b, var_b = ratio_and_variance(treated["clicks"], treated["impressions"].clip(lower=1))
        return msprt(ratio_b - ratio_a, var_a + var_b, _tau2(ratio_a, var_a + var_b), alpha)
    variance = float(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return msprt(float(b.mean() - a.mean()), variance, _tau2(float(a.mean()), variance), alpha)


def _daily(units: pd.DataFrame, variants: list[str], metric: str, alpha: float) -> pd.DataFrame:
    """The conversion difference of the first treatment against control as it looked at the
    end of each day (units that had arrived by then; their outcomes to the report's end)."""
    units = units.assign(converted=(units["purchases"] > 0).astype(float),
                         day=pd.to_datetime(units["first_exposure"], utc=True).dt.floor("D"))
    rows = []
    for day in sorted(units["day"].unique()):
        seen = units[units["day"] <= day]
        a = seen.loc[seen["variant"] == variants[0], "converted"].to_numpy()
        b = seen.loc[seen["variant"] == variants[1], "converted"].to_numpy()
        if len(a) < 2 or len(b) < 2:
            continue
        difference = float(b.mean() - a.mean())
        variance = float(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        sequential = msprt(difference, variance, _tau2(float(a.mean()), variance), alpha)
        half = 1.959964 * math.sqrt(variance)
        rows.append({"day": day, "units": len(seen), "difference": difference,
                     "fixed_low": difference - half, "fixed_high": difference + half,
                     "sequential_low": sequential.low, "sequential_high": sequential.high,
                     "sequential_p": sequential.p_value})
    return pd.DataFrame(rows)


def _verdict(report: ExperimentReport, experiment: Experiment, alpha: float) -> str:
    if report.ratio.mismatch:
        return (f"sample-ratio mismatch: units per variant {report.ratio.counts} against the "
                f"configured weights (p = {report.ratio.p_value:.2g} < 0.001); the assignment "
                "or the logging is broken, so no verdict: fix it before reading any metric")
    metric = experiment.primary_metric
    control = experiment.variants[0].name
    lines = []
    for comparison in report.comparisons[metric]:
        effect = comparison.effect
        interval = f"{effect.relative:+.1%} [{effect.low:+.1%}, {effect.high:+.1%}]"
        if comparison.adjusted_p < alpha:
            better = comparison.sequential.difference > 0
            lines.append(f"{comparison.variant} {'beats' if better else 'loses to'} {control} on "
                         f"{metric} by {interval} (always-valid p = "
                         f"{comparison.adjusted_p:.2g}); "
                         + ("ready to ship" if better else f"keep {control}"))
        else:
            lines.append(f"{comparison.variant} vs {control} on {metric}: {interval}, not "
                         f"significant yet (always-valid p = {comparison.adjusted_p:.2g}); "
                         + _more_needed(report, experiment, comparison))
    return "; ".join(lines)


def _more_needed(report: ExperimentReport, experiment: Experiment, comparison: Comparison) -> str:
    if experiment.minimum_detectable_effect is None:
        return "keep running (set minimum_detectable_effect for how long)"
    base = comparison.effect.control
    if not 0 < base < 1 or experiment.primary_metric != "conversion":
        return "keep running"
    needed = units_needed(base, experiment.minimum_detectable_effect)
    have = min(comparison.effect.units)
    if have >= needed:
        return f"keep running: enough units for a {experiment.minimum_detectable_effect:.0%} " \
               "effect, which it does not show so far"
    return (f"keep running: about {needed - have:,} more customers per variant to detect "
            f"{experiment.minimum_detectable_effect:.0%}")


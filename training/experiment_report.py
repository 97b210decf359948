"""Reading an experiment: per-unit metrics from the exposure log, the checks, and a verdict.

The unit is the customer. A customer counts from their first exposure in the experiment (the
first answer or message that named its variant); only what they did after it counts, until the
report's end. A customer seen in more than one variant is left out and counted (it means the
assignment changed: a new salt, or a file edited mid-run). Per unit, the counts every metric of
``features.experiments.METRICS`` is made of: purchases, orders, quantity and net revenue (and
the same over the ``covariate_days`` before the first exposure, for CUPED), carts, views,
offer redemptions, returns, consents withdrawn, credited clicks and impressions. Proportions are
tested as proportions, means with Welch's test (CUPED-adjusted where the metric says so),
ratios with the delta method.

Each variant is compared with the first one (the control). The sample-ratio check comes first
and blocks the verdict when it fails; effects are reported with fixed-horizon intervals and
with the always-valid (mSPRT) p-value and confidence sequence, which stay valid however often
the report is read; the verdict uses the latter, with Holm's correction over variants and
metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from features.contracts import EventType, ExposureStatus, ExposureType
from features.experiments import INTERLEAVED, METRICS, Experiment, Metric
from features.warehouse import Warehouse
from training.attribution import AttributionRule, attribute, named, run
from training.experiment_stats import (
    Effect,
    SampleRatio,
    Sequential,
    conversion_effect,
    cuped,
    holm,
    mean_effect,
    msprt,
    ratio_and_variance,
    ratio_effect,
    sample_ratio,
    units_needed,
)

EPOCH = pd.Timestamp(0, tz="UTC")
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
    guardrails: list[str] = field(default_factory=list)
    """Each guardrail's reading, in words; a breached one says so."""
    unmeasured: list[str] = field(default_factory=list)
    """Metrics with nothing to compare yet (no purchases, say, for return_rate)."""
    planned: PlannedTest | None = None
    """With a planned stop (and two variants): the group-sequential reading the verdict uses."""
    breached: bool = False
    verdict: str = ""


def experiment_report(warehouse: Warehouse, experiment: Experiment, end: datetime,
                      rule: AttributionRule | None = None, covariate_days: int = 30,
                      alpha: float = 0.05) -> ExperimentReport:
    start = experiment.start or (end - timedelta(days=90))
    end = min(end, experiment.stop) if experiment.stop else end
    units = warehouse.analyse(lambda c: _units(c, experiment.name, start, end,
                                               rule or AttributionRule(), covariate_days))
    variants = [v.name for v in experiment.variants]
    mixed = units["mixed"]
    kept = unit_metrics(units[~mixed & units["variant"].isin(variants)])
    counts = {v: int((kept["variant"] == v).sum()) for v in variants}
    ratio = sample_ratio(counts, {v.name: v.weight for v in experiment.variants})
    report = ExperimentReport(experiment.name, start, end, kept, int(mixed.sum()), ratio)
    if min(counts.values(), default=0) < 2:
        report.verdict = f"not enough units yet: {counts}; keep running"
        return report
    comparisons = _compare(kept, variants, experiment.metrics, alpha)
    report.unmeasured = [m for m, found in comparisons.items() if not found]
    report.comparisons = _holm_adjusted(comparisons, alpha)
    report.daily = _daily(kept, variants, experiment.primary_metric, alpha)
    if len(variants) == 2:
        report.planned = planned_test(report.daily, experiment, end, alpha)
    if {"latency", "errors"} & set(experiment.guardrails):
        requests = warehouse.analyse(lambda c: _requests(c, experiment.name, start, end))
        if "latency" in experiment.guardrails:
            _latency_guardrail(report, requests[requests["answers"] > 0], variants)
        if "errors" in experiment.guardrails:
            _error_guardrail(report, requests, variants)
    if "opt_outs" in experiment.guardrails:
        _opt_out_guardrail(report, variants)
    report.verdict = _verdict(report, experiment, alpha)
    return report


LATENCY_TOLERANCE, LATENCY_FLOOR_MS = 0.2, 5.0
"""A variant's p99 ranking time breaches the guardrail when it is both this share and this many
milliseconds above the control's (a millisecond more on a fast path is not a regression a
shopper feels)."""


def _requests(connection, name: str, start: datetime, end: datetime) -> pd.DataFrame:
    """Per variant, from one pass over its recommend exposures: failed requests, requests, and
    the p99 ranking time over the answers timed."""
    return connection.execute(f"""
        SELECT regexp_extract(variants, $pattern, 2) AS variant, count_if(failed) AS failed,
               count(*) AS requests, quantile_cont(latency, 0.99) AS p99,
               count(latency) AS answers
        FROM (SELECT any_value(variants) AS variants,
                     bool_or(status = '{ExposureStatus.FAILED.value}') AS failed,
                     any_value(latency_ms) AS latency
              FROM exposures
              WHERE timestamp >= $start AND timestamp < $end
                AND exposure_type = '{ExposureType.RECOMMENDATION.value}'
                AND regexp_matches(variants, $pattern)
              GROUP BY exposure_id)
        GROUP BY ALL""", {"pattern": variant_pattern(name), "start": start,
                          "end": end}).df().set_index("variant")


RATE_MARGIN = 0.001
"""A variant's error or opt-out rate breaches its guardrail when it is significantly (one-sided,
5 %) more than this above the control's."""


def _error_guardrail(report: ExperimentReport, failures: pd.DataFrame,
                     variants: list[str]) -> None:
    """Failed requests per variant (``failures``: failed and requests by variant)."""
    counts = {v: (int(failures.at[v, "failed"]), int(failures.at[v, "requests"]))
              for v in variants if v in failures.index}
    _rate_guardrail(report, "errors", counts, variants, "requests failed")


def _opt_out_guardrail(report: ExperimentReport, variants: list[str]) -> None:
    """Customers who withdrew consent on a contact channel after their first exposure."""
    by_variant = report.units.groupby("variant")["opt_outs"]
    counts = {v: (int((group > 0).sum()), len(group)) for v, group in by_variant}
    _rate_guardrail(report, "opt-outs", counts, variants, "customers withdrew consent")


def _rate_guardrail(report: ExperimentReport, label: str, counts: dict[str, tuple[int, int]],
                    variants: list[str], what: str) -> None:
    """Each variant's rate (hits, total) against the control's: breached when significantly
    (one-sided, 5 %) more than ``RATE_MARGIN`` above it (statsmodels' test of two independent
    proportions against a margin)."""
    from statsmodels.stats.proportion import test_proportions_2indep

    control = variants[0]
    if control not in counts:
        return
    base_hits, base_total = counts[control]
    for name in variants[1:]:
        if name not in counts:
            continue
        hits, total = counts[name]
        rate, base = hits / total, base_hits / base_total
        p_value = 1.0
        if hits:
            p_value = float(test_proportions_2indep(
                hits, total, base_hits, base_total, value=RATE_MARGIN,
                alternative="larger").pvalue)
        over = p_value < 0.05
        report.breached |= over
        report.guardrails.append(
            f"{label}: {name} {rate:.2%} of {total:,} {what} vs {control} {base:.2%} "
            f"(p = {p_value:.2g} that it is more than {RATE_MARGIN:.1%} above) "
            + ("BREACHED" if over else "fine"))


def _latency_guardrail(report: ExperimentReport, latency: pd.DataFrame,
                       variants: list[str]) -> None:
    control = variants[0]
    if control not in latency.index:
        report.guardrails.append("latency: no answer timed yet")
        return
    base = float(latency.at[control, "p99"])
    for name in variants[1:]:
        if name not in latency.index:
            continue
        p99 = float(latency.at[name, "p99"])
        over = p99 > base * (1 + LATENCY_TOLERANCE) and p99 - base > LATENCY_FLOOR_MS
        report.breached |= over
        report.guardrails.append(
            f"latency: {name} p99 {p99:.2f} ms vs {control} {base:.2f} ms "
            f"({p99 / base - 1:+.0%}; limit +{LATENCY_TOLERANCE:.0%} and "
            f"+{LATENCY_FLOOR_MS:g} ms) "
            + ("BREACHED" if over else "fine"))


def variant_pattern(experiment: str, variant: str = "[^|]+") -> str:
    """A regular expression that finds ``experiment``'s variant (group 2) in the exposures'
    ``variants`` column, 'experiment=variant' joined by '|'."""
    return f"(^|\\|){experiment}=({variant})"


def unit_metrics(units: pd.DataFrame) -> pd.DataFrame:
    """Per-unit values derived once for every comparison and day: each CUPED metric's count
    adjusted by the same count before the first exposure (one theta per metric, over all
    units), as ``<count>_cuped``."""
    adjusted = {}
    for column in sorted({m.numerator for m in METRICS.values() if m.cuped}):
        adjusted[f"{column}_cuped"], _ = cuped(units[column].to_numpy(),
                                               units[f"{column}_before"].to_numpy())
    return units.assign(**adjusted)


def metric_values(metric: Metric, units: pd.DataFrame) -> np.ndarray:
    """A proportion's or a mean's value per unit: 1.0/0.0 for "any", the (CUPED-adjusted)
    count for a mean."""
    if metric.kind == "proportion":
        return (units[metric.numerator].to_numpy() > 0).astype(float)
    column = f"{metric.numerator}_cuped" if metric.cuped else metric.numerator
    return units[column].to_numpy(dtype=float)


def metric_level(metric: Metric, units: pd.DataFrame) -> float:
    """The metric over these units as a person reads it (a mean unadjusted by CUPED)."""
    if metric.kind == "ratio":
        denominator = units[metric.denominator].sum()
        return float(units[metric.numerator].sum() / denominator) if denominator else math.nan
    if metric.kind == "proportion":
        return float((units[metric.numerator] > 0).mean())
    return float(units[metric.numerator].mean())


def _measurable(metric: Metric, control: pd.DataFrame, treated: pd.DataFrame) -> bool:
    """Whether both arms hold something to compare (a ratio needs a denominator in each; a
    proportion or mean some variation)."""
    if metric.kind == "ratio":
        return bool(control[metric.denominator].sum() > 0 and treated[metric.denominator].sum() > 0)
    values = np.concatenate([metric_values(metric, control), metric_values(metric, treated)])
    return bool(values.var() > 0)


def _difference(name: str, control: pd.DataFrame, treated: pd.DataFrame
                ) -> tuple[float, float, float]:
    """The control's level, treated minus control, and that difference's variance, for one
    metric (means per unit, or the delta method for ratios)."""
    metric = METRICS[name]
    if metric.kind == "ratio":
        level, var_a = ratio_and_variance(control[metric.numerator], control[metric.denominator])
        other, var_b = ratio_and_variance(treated[metric.numerator], treated[metric.denominator])
        return level, other - level, var_a + var_b
    a, b = metric_values(metric, control), metric_values(metric, treated)
    variance = float(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return float(a.mean()), float(b.mean() - a.mean()), variance


def _effect(name: str, control: pd.DataFrame, treated: pd.DataFrame, alpha: float) -> Effect:
    """The fixed-horizon effect of one metric with the test its kind calls for."""
    metric = METRICS[name]
    if metric.kind == "ratio":
        return ratio_effect(name, (control[metric.numerator], treated[metric.numerator]),
                            (control[metric.denominator], treated[metric.denominator]), alpha)
    a, b = metric_values(metric, control), metric_values(metric, treated)
    if metric.kind == "proportion":
        return conversion_effect(name, (int(a.sum()), int(b.sum())), (len(a), len(b)), alpha)
    return mean_effect(name, a, b, alpha)


def better(name: str, difference: float) -> bool:
    """Whether a difference (treatment minus control) is an improvement on this metric."""
    return difference < 0 if METRICS[name].lower_is_better else difference > 0


def _units(connection, name: str, start: datetime, end: datetime, rule: AttributionRule,
           covariate_days: int) -> pd.DataFrame:
    """One row per customer exposed to the experiment: variant, whether they were seen in more
    than one (``mixed``), first exposure, and every count of ``OUTCOMES``, plus credited clicks,
    impressions and consents withdrawn. Built as temporary tables step by step: DuckDB plans
    each step well on its own (plain GROUP BYs, no DISTINCT aggregates over a million
    customers)."""
    attribute(connection, start, end, rule)
    purchase, returned = EventType.PURCHASE.value, EventType.RETURN.value
    params = {"pattern": variant_pattern(name), "start": start, "end": end,
              "covariate_start": start - timedelta(days=covariate_days)}
    run(connection, f"""
        CREATE OR REPLACE TEMP TABLE units AS
        SELECT customer_id, min(variant) AS variant, min(variant) <> max(variant) AS mixed,
               min(timestamp) AS first_exposure, count(item_id) AS impressions
        FROM (SELECT customer_id, timestamp, item_id,
                     regexp_extract(variants, $pattern, 2) AS variant
              FROM exposures
              WHERE timestamp >= $start AND timestamp < $end
                AND status IN ('{ExposureStatus.SHOWN.value}', '{ExposureStatus.SENT.value}')
                AND regexp_matches(variants, $pattern))
        GROUP BY customer_id;

        CREATE OR REPLACE TEMP TABLE happened AS
        SELECT u.customer_id, e.event_type, e.quantity, e.timestamp >= u.first_exposure AS after,
               CASE WHEN e.event_type = '{purchase}' THEN coalesce(e.session_id, e.event_id)
               END AS purchase_order,
               CASE e.event_type WHEN '{purchase}' THEN 1 WHEN '{returned}' THEN -1 ELSE 0
               END * e.quantity * coalesce(e.price, i.price, 0) AS money
        FROM units u
        JOIN (SELECT * FROM events
              WHERE event_type IN ('{purchase}', '{returned}', '{EventType.ADD_TO_CART.value}',
                                   '{EventType.VIEW.value}', '{EventType.OFFER_REDEEMED.value}')
                AND timestamp >= $covariate_start AND timestamp < $end) e
          ON e.customer_id = u.customer_id
         AND e.timestamp >= u.first_exposure - INTERVAL {int(covariate_days)} DAY
        LEFT JOIN items i ON i.item_id = e.item_id
    """, params)
    sql = f"""
        WITH counted AS (
            SELECT customer_id,
                   count_if(after AND event_type = '{purchase}') AS purchases,
                   count_if(NOT after AND event_type = '{purchase}') AS purchases_before,
                   coalesce(sum(quantity) FILTER (after AND event_type = '{purchase}'), 0)
                       AS quantity,
                   coalesce(sum(quantity) FILTER (NOT after AND event_type = '{purchase}'), 0)
                       AS quantity_before,
                   coalesce(sum(money) FILTER (after), 0) AS revenue,
                   coalesce(sum(money) FILTER (NOT after), 0) AS revenue_before,
                   count_if(after AND event_type = '{EventType.ADD_TO_CART.value}') AS carts,
                   count_if(after AND event_type = '{EventType.VIEW.value}') AS views,
                   count_if(NOT after AND event_type = '{EventType.VIEW.value}') AS views_before,
                   count_if(after AND event_type = '{EventType.OFFER_REDEEMED.value}')
                       AS redemptions,
                   count_if(after AND event_type = '{returned}') AS returns
            FROM happened GROUP BY customer_id),
        orders AS (  -- distinct rows first: a plain GROUP BY, not a DISTINCT aggregate
            SELECT customer_id, count(*) FILTER (after) AS orders,
                   count(*) FILTER (NOT after) AS orders_before
            FROM (SELECT DISTINCT customer_id, after, purchase_order FROM happened
                  WHERE purchase_order IS NOT NULL)
            GROUP BY customer_id),
        clicks AS (
            SELECT customer_id, count(*) AS clicks FROM attributed
            WHERE event_type = '{EventType.CLICK.value}' AND regexp_matches(variants, $pattern)
            GROUP BY customer_id),
        opt_outs AS (
            SELECT x.customer_id, count(*) AS opt_outs
            FROM exposures x JOIN units u USING (customer_id)
            WHERE x.exposure_type = '{ExposureType.CONSENT.value}'
              AND x.status = '{ExposureStatus.WITHDRAWN.value}'
              AND x.timestamp >= u.first_exposure AND x.timestamp < $end
            GROUP BY x.customer_id)
        SELECT u.*, coalesce(c.clicks, 0) AS clicks, coalesce(x.opt_outs, 0) AS opt_outs,
               {", ".join(f"coalesce({'o' if 'orders' in column else 'n'}.{column}, 0) "
                          f"AS {column}" for column in OUTCOMES)}
        FROM units u LEFT JOIN clicks c USING (customer_id)
        LEFT JOIN opt_outs x USING (customer_id) LEFT JOIN counted n USING (customer_id)
        LEFT JOIN orders o USING (customer_id)"""
    return connection.execute(sql, named(params, sql)).df()


OUTCOMES = ("purchases", "purchases_before", "orders", "orders_before", "quantity",
            "quantity_before", "revenue", "revenue_before", "carts", "views", "views_before",
            "redemptions", "returns")
"""The per-unit counts ``_units`` reads from the events."""


def _compare(units: pd.DataFrame, variants: list[str], metrics: list[str], alpha: float
             ) -> dict[str, list[Comparison]]:
    """Every treatment against the control on each metric both arms can measure (an empty
    list where they cannot yet)."""
    control = units[units["variant"] == variants[0]]
    found: dict[str, list[Comparison]] = {m: [] for m in metrics}
    for name in variants[1:]:
        treated = units[units["variant"] == name]
        for metric in metrics:
            if _measurable(METRICS[metric], control, treated):
                found[metric].append(Comparison(name, _effect(metric, control, treated, alpha),
                                                _sequential(metric, control, treated, alpha)))
    return found


def _holm_adjusted(comparisons: dict[str, list[Comparison]], alpha: float
                   ) -> dict[str, list[Comparison]]:
    """The comparisons with their always-valid p-values Holm-adjusted over every variant and
    metric read together."""
    flat = [c for found in comparisons.values() for c in found]
    adjusted = iter(holm([c.sequential.p_value for c in flat], alpha) if flat else [])
    return {metric: [replace(c, adjusted_p=next(adjusted)) for c in found]
            for metric, found in comparisons.items()}


def _sequential(metric: str, control: pd.DataFrame, treated: pd.DataFrame, alpha: float
                ) -> Sequential:
    """The always-valid test of the difference treated - control for one metric."""
    level, difference, variance = _difference(metric, control, treated)
    return msprt(difference, variance, _tau2(level, variance), alpha)


def _daily(units: pd.DataFrame, variants: list[str], metric: str, alpha: float) -> pd.DataFrame:
    """The primary metric's difference, first treatment minus control, as it looked at the end
    of each day (units that had arrived by then; their outcomes to the report's end), with its
    z statistic and both intervals. Each arm's running sums per day give every day's estimate
    in one pass (the same numbers ``_difference`` computes from the units)."""
    definition = METRICS[metric]
    # whole UTC days since the epoch, as integers: grouping by them is fast, by Timestamps not
    day = ((pd.to_datetime(units["first_exposure"], utc=True) - EPOCH)
           // pd.Timedelta(days=1)).to_numpy()
    days = np.unique(day)
    arrived = np.cumsum(np.bincount(np.searchsorted(days, day), minlength=len(days)))
    control, treated = (_running_sums(definition, units[mask], day[mask], days)
                        for mask in (units["variant"].to_numpy() == v for v in variants[:2]))
    level, var_a = _estimate(definition, control)
    other, var_b = _estimate(definition, treated)
    rows = []
    for i, number in enumerate(days):
        if not _measurable_sums(definition, control.iloc[i], treated.iloc[i]):
            continue
        moment = EPOCH + pd.Timedelta(days=int(number))
        difference, variance = other[i] - level[i], var_a[i] + var_b[i]
        sequential = msprt(difference, variance, _tau2(level[i], variance), alpha)
        half = 1.959964 * math.sqrt(variance)
        rows.append({"day": moment, "units": int(arrived[i]), "difference": difference,
                     "z": difference / math.sqrt(variance) if variance > 0 else 0.0,
                     "fixed_low": difference - half, "fixed_high": difference + half,
                     "sequential_low": sequential.low, "sequential_high": sequential.high,
                     "sequential_p": sequential.p_value})
    return pd.DataFrame(rows)


def _running_sums(metric: Metric, arm: pd.DataFrame, day: np.ndarray, days: np.ndarray
                  ) -> pd.DataFrame:
    """Per day, sums over the arm's units that had arrived by its end: n, x and x * x (for a
    ratio, x the numerator and y the denominator, with y * y and x * y)."""
    if metric.kind == "ratio":
        x = arm[metric.numerator].to_numpy(dtype=float)
        y = arm[metric.denominator].to_numpy(dtype=float)
        parts = {"x": x, "y": y, "xx": x * x, "yy": y * y, "xy": x * y}
    else:
        x = metric_values(metric, arm)
        parts = {"x": x, "xx": x * x}
    frame = pd.DataFrame({"n": np.ones(len(arm)), **parts})
    return frame.groupby(day).sum().reindex(days, fill_value=0.0).cumsum()


def _estimate(metric: Metric, sums: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each day's level and the variance of its estimate, from running sums: a mean's sample
    variance over n, or a ratio's delta-method variance (as ``ratio_and_variance``). Sums of
    squares less squared sums cancel: where every value is (nearly) equal, rounding can leave a
    variance a hair below zero, which is zero."""
    n = sums["n"].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        var_x = (sums["xx"] - sums["x"] ** 2 / n).to_numpy() / (n - 1)
        if metric.kind != "ratio":
            return (sums["x"] / n).to_numpy(), np.maximum(var_x / n, 0.0)
        mean_y = (sums["y"] / n).to_numpy()
        ratio = sums["x"].to_numpy() / sums["y"].to_numpy()
        var_y = (sums["yy"] - sums["y"] ** 2 / n).to_numpy() / (n - 1)
        cov = (sums["xy"] - sums["x"] * sums["y"] / n).to_numpy() / (n - 1)
        variance = (var_x - 2 * ratio * cov + ratio ** 2 * var_y) / (n * mean_y ** 2)
        return ratio, np.maximum(variance, 0.0)  # NaN (no rows yet) stays NaN


def _measurable_sums(metric: Metric, control: pd.Series, treated: pd.Series) -> bool:
    """``_measurable`` from one day's running sums."""
    if min(control["n"], treated["n"]) < 2:
        return False
    if metric.kind == "ratio":
        return bool(control["y"] > 0 and treated["y"] > 0)
    n, x, xx = (control[k] + treated[k] for k in ("n", "x", "xx"))
    return bool(xx - x * x / n > 1e-12 * max(1.0, xx))


@dataclass(frozen=True)
class PlannedTest:
    """The group-sequential reading of an experiment with a planned stop."""

    crossed_on: datetime | None
    z: float
    bound: float
    fraction: float
    """Share of the planned units seen so far."""


def planned_test(daily: pd.DataFrame, experiment: Experiment, now: datetime,
                 alpha: float = 0.05) -> PlannedTest | None:
    """Each day's z against O'Brien-Fleming alpha-spending boundaries (Lan-DeMets), with the
    units planned by the stop time projected from the arrival rate so far: read daily, it keeps
    its false-positive rate at alpha and spends all of it by the stop (bench/bench_aa.py)."""
    from training.experiment_stats import spending_boundaries

    if experiment.stop is None or experiment.start is None or daily is None or daily.empty:
        return None
    elapsed = (min(now, experiment.stop) - experiment.start).total_seconds()
    planned = daily["units"].iloc[-1] * (experiment.stop - experiment.start).total_seconds() \
        / max(elapsed, 1.0)
    fractions = np.maximum.accumulate(np.minimum(daily["units"].to_numpy() / planned, 1.0))
    fractions = np.maximum(fractions, 1e-6)
    bounds = spending_boundaries(list(fractions), alpha)
    crossed = np.flatnonzero(np.abs(daily["z"].to_numpy()) >= bounds)
    return PlannedTest(daily["day"].iloc[crossed[0]] if crossed.size else None,
                       float(daily["z"].iloc[-1]), float(bounds[-1]), float(fractions[-1]))


def _verdict(report: ExperimentReport, experiment: Experiment, alpha: float) -> str:
    if report.ratio.mismatch:
        return (f"sample-ratio mismatch: units per variant {report.ratio.counts} against the "
                f"configured weights (p = {report.ratio.p_value:.2g} < 0.001); the assignment "
                "or the logging is broken, so no verdict: fix it before reading any metric")
    metric = experiment.primary_metric
    control = experiment.variants[0].name
    if report.breached:
        return ("a guardrail is breached, so do not ship: " + "; ".join(
            g for g in report.guardrails if "BREACHED" in g))
    if not report.comparisons.get(metric):
        return f"nothing to compare on {metric} yet ({METRICS[metric].description}); keep running"
    if report.planned is not None:
        return _planned_verdict(report, experiment)
    lines = []
    for comparison in report.comparisons[metric]:
        effect = comparison.effect
        interval = f"{effect.relative:+.1%} [{effect.low:+.1%}, {effect.high:+.1%}]"
        if comparison.adjusted_p < alpha:
            improves = better(metric, comparison.sequential.difference)
            lines.append(f"{comparison.variant} {'beats' if improves else 'loses to'} {control} "
                         f"on {metric} by {interval} (always-valid p = "
                         f"{comparison.adjusted_p:.2g}); "
                         + ("guardrails fine; ready to ship" if improves else f"keep {control}"))
        else:
            lines.append(f"{comparison.variant} vs {control} on {metric}: {interval}, not "
                         f"significant yet (always-valid p = {comparison.adjusted_p:.2g}); "
                         + _more_needed(report, experiment, comparison))
    return "; ".join(lines)


def _planned_verdict(report: ExperimentReport, experiment: Experiment) -> str:
    metric = experiment.primary_metric
    control, treatment = (v.name for v in experiment.variants)
    effect = report.comparisons[metric][0].effect
    interval = f"{effect.relative:+.1%} [{effect.low:+.1%}, {effect.high:+.1%}]"
    planned = report.planned
    stop = f"planned to stop {experiment.stop:%Y-%m-%d}"
    if planned.crossed_on is not None:
        improves = better(metric, planned.z)
        return (f"{treatment} {'beats' if improves else 'loses to'} {control} on {metric} by "
                f"{interval} (group-sequential, {stop}: boundary crossed on "
                f"{planned.crossed_on:%Y-%m-%d}); "
                + ("guardrails fine; ready to ship" if improves else f"keep {control}"))
    return (f"{treatment} vs {control} on {metric}: {interval}, not significant yet "
            f"(group-sequential, {stop}: z = {planned.z:.2f}, boundary {planned.bound:.2f} at "
            f"{planned.fraction:.0%} of the planned customers); keep running to the stop")


def _more_needed(report: ExperimentReport, experiment: Experiment, comparison: Comparison) -> str:
    if experiment.minimum_detectable_effect is None:
        return "keep running (set minimum_detectable_effect for how long)"
    base = comparison.effect.control
    if not 0 < base < 1 or METRICS[experiment.primary_metric].kind != "proportion":
        return "keep running"
    needed = units_needed(base, experiment.minimum_detectable_effect)
    have = min(comparison.effect.units)
    if have >= needed:
        return f"keep running: enough units for a {experiment.minimum_detectable_effect:.0%} " \
               "effect, which it does not show so far"
    return (f"keep running: about {needed - have:,} more customers per variant to detect "
            f"{experiment.minimum_detectable_effect:.0%}")



def write_html(report: ExperimentReport, path) -> object:
    """One page that opens without internet: the verdict, the sample-ratio check, the effects
    table, the primary metric's cumulative effect per day with the fixed-horizon interval and
    the always-valid confidence sequence, and each variant's metrics."""
    import html

    from matplotlib.figure import Figure

    from training.plots import png_base64

    figure = Figure(figsize=(9, 3.8))
    axis = figure.subplots()
    daily = report.daily if report.daily is not None else pd.DataFrame()
    if len(daily):
        days = daily["day"].dt.strftime("%m-%d")
        axis.fill_between(days, daily["sequential_low"], daily["sequential_high"], alpha=0.2,
                          label="always-valid confidence sequence")
        axis.fill_between(days, daily["fixed_low"], daily["fixed_high"], alpha=0.35,
                          label="fixed-horizon 95 % interval")
        axis.plot(days, daily["difference"], marker="o", label="difference (B - A)")
        axis.axhline(0, color="black", lw=0.8)
        last = daily.iloc[-1]  # early days' sequences are wide: frame the latest one
        span = max(last["sequential_high"] - last["sequential_low"], 1e-9)
        axis.set_ylim(min(daily["difference"].min(), last["sequential_low"]) - span / 2,
                      max(daily["difference"].max(), last["sequential_high"]) + span / 2)
        axis.legend(fontsize=8)
    axis.set_title("the primary metric's difference (B - A) at the end of each day")
    chart = png_base64(figure)
    per_variant = pd.DataFrame(
        {variant: {"units": len(group), **{m: metric_level(METRICS[m], group)
                                           for m in report.comparisons}}
         for variant, group in report.units.groupby("variant")}).T
    unmeasured = (f"<p>Nothing to compare yet on: {', '.join(report.unmeasured)}.</p>"
                  if report.unmeasured else "")
    rows = "".join(
        f"<tr><td>{m}</td><td>{c.variant}</td><td>{c.effect.control:.4g}</td>"
        f"<td>{c.effect.treatment:.4g}</td><td>{c.effect.relative:+.1%}</td>"
        f"<td>[{c.effect.low:+.1%}, {c.effect.high:+.1%}]</td><td>{c.effect.p_value:.3g}</td>"
        f"<td>[{c.sequential.low:.4g}, {c.sequential.high:.4g}]</td><td>{c.adjusted_p:.3g}</td>"
        "</tr>" for m, found in report.comparisons.items() for c in found)
    title = f"experiment {report.experiment}"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{border:1px solid #ccc;padding:3px 8px}}
table{{border-collapse:collapse}} img{{max-width:100%}}</style></head><body>
<h1>{html.escape(title)}</h1><p><b>Verdict:</b> {html.escape(report.verdict)}</p>
<p>{report.start:%Y-%m-%d %H:%M} to {report.end:%Y-%m-%d %H:%M} UTC; units per variant
{report.ratio.counts} (expected {({k: round(v) for k, v in report.ratio.expected.items()})}),
sample-ratio p = {report.ratio.p_value:.3g}{" — MISMATCH" if report.ratio.mismatch else ""};
{report.excluded} customers seen in two variants left out.</p>
<p>Guardrails: {html.escape("; ".join(report.guardrails) or "none")}</p>
<h2>Effects against the control</h2><table><tr><th>metric</th><th>variant</th><th>control</th>
<th>variant's</th><th>B/A - 1</th><th>95 % interval</th><th>p (fixed)</th>
<th>always-valid sequence (difference)</th><th>p (always valid, Holm)</th></tr>{rows}</table>
{unmeasured}<img alt="cumulative effect" src="data:image/png;base64,{chart}">
<h2>Per variant</h2>{per_variant.to_html(float_format=lambda x: f"{x:,.4g}")}
</body></html>"""
    path.write_text(page)
    return path


def winner(report: ExperimentReport, experiment: Experiment, alpha: float = 0.05) -> str | None:
    """The variant that beats the control on the primary metric with the always-valid test
    (Holm-corrected), the best of them if several; None without one or on a sample-ratio
    mismatch."""
    if report.ratio.mismatch:
        return None
    metric = experiment.primary_metric
    beating = [c for c in report.comparisons.get(metric, [])
               if c.adjusted_p < alpha and better(metric, c.sequential.difference)]
    if not beating:
        return None
    return max(beating, key=lambda c: c.effect.relative * (-1 if METRICS[metric].lower_is_better
                                                             else 1)).variant


@dataclass(frozen=True)
class InterleavingReport:
    experiment: str
    start: datetime
    end: datetime
    units: pd.DataFrame
    """Per customer: credited clicks on team A's and team B's items."""
    wins: dict[str, int]
    """Customers who clicked more of A's items, of B's, or as many of each (ties)."""
    p_value: float
    preference: float
    """(wins B - wins A) / customers who clicked anything: how much B is preferred."""
    verdict: str
    preferred: str | None = None
    """The variant customers significantly prefer (what ``ship`` ships), if any."""


def interleaving_report(warehouse: Warehouse, experiment: Experiment, end: datetime,
                        rule: AttributionRule | None = None, alpha: float = 0.05
                        ) -> InterleavingReport:
    """Which of the two rankers the customers prefer: per customer, the credited clicks on each
    team's items; a sign test (exact binomial, ``scipy.stats.binomtest``) over the customers who
    preferred one."""
    from scipy import stats

    start = experiment.start or (end - timedelta(days=90))
    end = min(end, experiment.stop) if experiment.stop else end
    rule = rule or AttributionRule()

    def read(connection) -> pd.DataFrame:
        attribute(connection, start, end, rule)
        return connection.execute(f"""
            SELECT customer_id, count_if(team = 'A') AS clicks_a, count_if(team = 'B') AS clicks_b
            FROM attributed
            WHERE event_type = '{EventType.CLICK.value}' AND team IS NOT NULL
              AND regexp_matches(variants, $pattern)
            GROUP BY customer_id""", {"pattern": variant_pattern(experiment.name, INTERLEAVED)}).df()

    units = warehouse.analyse(read)
    wins = {"A": int((units["clicks_a"] > units["clicks_b"]).sum()),
            "B": int((units["clicks_b"] > units["clicks_a"]).sum()),
            "tie": int((units["clicks_a"] == units["clicks_b"]).sum())}
    decided = wins["A"] + wins["B"]
    p_value = float(stats.binomtest(wins["B"], decided, 0.5).pvalue) if decided else 1.0
    preference = (wins["B"] - wins["A"]) / len(units) if len(units) else 0.0
    first, second = (v.name for v in experiment.variants)
    better = None
    if decided == 0:
        verdict = "no customer has clicked an interleaved item yet; keep running"
    elif p_value < alpha:
        better, worse = (second, first) if wins["B"] > wins["A"] else (first, second)
        verdict = (f"customers prefer {better} to {worse}: {max(wins['A'], wins['B']):,} of the "
                   f"{decided:,} who preferred one (p = {p_value:.2g})")
    else:
        verdict = (f"no preference shown yet between {first} and {second}: {wins['A']:,} vs "
                   f"{wins['B']:,} customers (p = {p_value:.2g}); keep running")
    return InterleavingReport(experiment.name, start, end, units, wins, p_value, preference,
                              verdict, better)

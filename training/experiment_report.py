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
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from features.contracts import EventType, ExposureStatus
from features.experiments import INTERLEAVED, Experiment
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
    ratio_and_variance,
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
    guardrails: list[str] = field(default_factory=list)
    """Each guardrail's reading, in words; a breached one says so."""
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
    mixed = units["variants"] > 1
    kept = unit_metrics(units[~mixed & units["variant"].isin(variants)])
    counts = {v: int((kept["variant"] == v).sum()) for v in variants}
    ratio = sample_ratio(counts, {v.name: v.weight for v in experiment.variants})
    report = ExperimentReport(experiment.name, start, end, kept, int(mixed.sum()), ratio)
    if min(counts.values(), default=0) < 2:
        report.verdict = f"not enough units yet: {counts}; keep running"
        return report
    report.comparisons = _holm_adjusted(_compare(kept, variants, alpha), alpha)
    report.daily = _daily(kept, variants, experiment.primary_metric, alpha)
    if len(variants) == 2:
        report.planned = planned_test(report.daily, experiment, end, alpha)
    if "latency" in experiment.guardrails:
        latency = warehouse.analyse(lambda c: _latency(c, experiment.name, start, end))
        _latency_guardrail(report, latency, variants)
    if "errors" in experiment.guardrails:
        failures = warehouse.analyse(lambda c: _failures(c, experiment.name, start, end))
        _error_guardrail(report, failures, variants)
    report.verdict = _verdict(report, experiment, alpha)
    return report


LATENCY_TOLERANCE, LATENCY_FLOOR_MS = 0.2, 5.0
"""A variant's p99 ranking time breaches the guardrail when it is both this share and this many
milliseconds above the control's (a millisecond more on a fast path is not a regression a
shopper feels)."""


def _latency(connection, name: str, start: datetime, end: datetime) -> pd.DataFrame:
    return connection.execute("""
        SELECT variant, quantile_cont(latency, 0.99) AS p99, count(*) AS answers
        FROM (SELECT regexp_extract(variants, $pattern, 2) AS variant,
                     any_value(latency_ms) AS latency
              FROM exposures
              WHERE timestamp >= $start AND timestamp < $end AND latency_ms IS NOT NULL
                AND regexp_matches(variants, $pattern)
              GROUP BY exposure_id, variants)
        GROUP BY variant""", {"pattern": variant_pattern(name), "start": start,
                              "end": end}).df().set_index("variant")


ERROR_MARGIN = 0.001
"""A variant's error rate breaches the guardrail when it is significantly (one-sided, 5 %)
more than this above the control's."""


def _failures(connection, name: str, start: datetime, end: datetime) -> pd.DataFrame:
    return connection.execute(f"""
        SELECT variant, count_if(failed) AS failed, count(*) AS requests
        FROM (SELECT regexp_extract(variants, $pattern, 2) AS variant,
                     bool_or(status = '{ExposureStatus.FAILED.value}') AS failed
              FROM exposures
              WHERE timestamp >= $start AND timestamp < $end
                AND exposure_type = 'recommendation' AND regexp_matches(variants, $pattern)
              GROUP BY exposure_id, variants)
        GROUP BY variant""", {"pattern": variant_pattern(name), "start": start,
                              "end": end}).df().set_index("variant")


def _error_guardrail(report: ExperimentReport, failures: pd.DataFrame,
                     variants: list[str]) -> None:
    from statsmodels.stats.proportion import test_proportions_2indep

    control = variants[0]
    if control not in failures.index:
        return
    base_failed, base_requests = (int(failures.at[control, k]) for k in ("failed", "requests"))
    for name in variants[1:]:
        if name not in failures.index:
            continue
        failed, requests = int(failures.at[name, "failed"]), int(failures.at[name, "requests"])
        rate, base = failed / requests, base_failed / base_requests
        p_value = 1.0
        if failed:
            p_value = float(test_proportions_2indep(
                failed, requests, base_failed, base_requests, value=ERROR_MARGIN,
                alternative="larger").pvalue)
        over = p_value < 0.05
        report.breached |= over
        report.guardrails.append(
            f"errors: {name} {rate:.2%} of {requests:,} requests failed vs {control} "
            f"{base:.2%} (p = {p_value:.2g} that it is more than {ERROR_MARGIN:.1%} above) "
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
    """Per-unit metrics derived from ``_units``' columns, once for every comparison and day:
    whether the unit converted, and its CUPED-adjusted revenue (one theta over all units)."""
    adjusted, _ = cuped(units["revenue"].to_numpy(), units["revenue_before"].to_numpy())
    return units.assign(converted=(units["purchases"] > 0).astype(float),
                        revenue_cuped=adjusted)


def _difference(metric: str, control: pd.DataFrame, treated: pd.DataFrame
                ) -> tuple[float, float, float]:
    """The control's level, treated minus control, and that difference's variance, for one
    metric (means per unit, or the delta method for click-through)."""
    if metric == "ctr":
        level, var_a = ratio_and_variance(control["clicks"], control["impressions"].clip(lower=1))
        other, var_b = ratio_and_variance(treated["clicks"], treated["impressions"].clip(lower=1))
        return level, other - level, var_a + var_b
    column = "converted" if metric == "conversion" else "revenue_cuped"
    a, b = control[column].to_numpy(), treated[column].to_numpy()
    variance = float(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return float(a.mean()), float(b.mean() - a.mean()), variance


def _units(connection, name: str, start: datetime, end: datetime, rule: AttributionRule,
           covariate_days: int) -> pd.DataFrame:
    attribute(connection, start, end, rule)
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
    """, {"pattern": variant_pattern(name), "start": start, "end": end,
          "covariate_start": start - timedelta(days=covariate_days)}).df()


def _compare(units: pd.DataFrame, variants: list[str], alpha: float
             ) -> dict[str, list[Comparison]]:
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


def _holm_adjusted(comparisons: dict[str, list[Comparison]], alpha: float
                   ) -> dict[str, list[Comparison]]:
    """The comparisons with their always-valid p-values Holm-adjusted over every variant and
    metric read together."""
    flat = [c for metric in METRICS for c in comparisons[metric]]
    adjusted = iter(holm([c.sequential.p_value for c in flat], alpha))
    return {metric: [replace(c, adjusted_p=next(adjusted)) for c in comparisons[metric]]
            for metric in METRICS}


def _sequential(metric: str, control: pd.DataFrame, treated: pd.DataFrame, alpha: float
                ) -> Sequential:
    """The always-valid test of the difference treated - control for one metric."""
    level, difference, variance = _difference(metric, control, treated)
    return msprt(difference, variance, _tau2(level, variance), alpha)


def _daily(units: pd.DataFrame, variants: list[str], metric: str, alpha: float) -> pd.DataFrame:
    """The primary metric's difference, first treatment minus control, as it looked at the end
    of each day (units that had arrived by then; their outcomes to the report's end), with its
    z statistic and both intervals."""
    units = units.assign(day=pd.to_datetime(units["first_exposure"], utc=True).dt.floor("D"))
    rows = []
    for day in sorted(units["day"].unique()):
        seen = units[units["day"] <= day]
        control, treated = (seen[seen["variant"] == v] for v in variants[:2])
        if min(len(control), len(treated)) < 2:
            continue
        level, difference, variance = _difference(metric, control, treated)
        sequential = msprt(difference, variance, _tau2(level, variance), alpha)
        half = 1.959964 * math.sqrt(variance)
        rows.append({"day": day, "units": len(seen), "difference": difference,
                     "z": difference / math.sqrt(variance) if variance > 0 else 0.0,
                     "fixed_low": difference - half, "fixed_high": difference + half,
                     "sequential_low": sequential.low, "sequential_high": sequential.high,
                     "sequential_p": sequential.p_value})
    return pd.DataFrame(rows)


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
    if report.planned is not None:
        return _planned_verdict(report, experiment)
    lines = []
    for comparison in report.comparisons[metric]:
        effect = comparison.effect
        interval = f"{effect.relative:+.1%} [{effect.low:+.1%}, {effect.high:+.1%}]"
        if comparison.adjusted_p < alpha:
            better = comparison.sequential.difference > 0
            lines.append(f"{comparison.variant} {'beats' if better else 'loses to'} {control} on "
                         f"{metric} by {interval} (always-valid p = "
                         f"{comparison.adjusted_p:.2g}); "
                         + ("guardrails fine; ready to ship" if better else f"keep {control}"))
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
        better = planned.z > 0
        return (f"{treatment} {'beats' if better else 'loses to'} {control} on {metric} by "
                f"{interval} (group-sequential, {stop}: boundary crossed on "
                f"{planned.crossed_on:%Y-%m-%d}); "
                + ("guardrails fine; ready to ship" if better else f"keep {control}"))
    return (f"{treatment} vs {control} on {metric}: {interval}, not significant yet "
            f"(group-sequential, {stop}: z = {planned.z:.2f}, boundary {planned.bound:.2f} at "
            f"{planned.fraction:.0%} of the planned customers); keep running to the stop")


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
    per_variant = report.units.groupby("variant").agg(
        units=("customer_id", "size"), conversion=("converted", "mean"),
        revenue_per_customer=("revenue", "mean"), clicks=("clicks", "sum"),
        impressions=("impressions", "sum"))
    per_variant["ctr"] = per_variant["clicks"] / per_variant["impressions"]
    rows = "".join(
        f"<tr><td>{m}</td><td>{c.variant}</td><td>{c.effect.control:.4g}</td>"
        f"<td>{c.effect.treatment:.4g}</td><td>{c.effect.relative:+.1%}</td>"
        f"<td>[{c.effect.low:+.1%}, {c.effect.high:+.1%}]</td><td>{c.effect.p_value:.3g}</td>"
        f"<td>[{c.sequential.low:.4g}, {c.sequential.high:.4g}]</td><td>{c.adjusted_p:.3g}</td>"
        "</tr>" for m in METRICS for c in report.comparisons.get(m, []))
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
<img alt="cumulative effect" src="data:image/png;base64,{chart}">
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
    beating = [c for c in report.comparisons.get(experiment.primary_metric, [])
               if c.adjusted_p < alpha and c.sequential.difference > 0]
    return max(beating, key=lambda c: c.effect.relative).variant if beating else None


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

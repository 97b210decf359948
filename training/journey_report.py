"""Reading a journey: who entered, what each step did, how runs ended, and whether the journey
made its customers convert more than its holdout did.

Everything comes from the exposure log: the journey's rows (entered, converted, exited,
finished) and its messages (sent, or suppressed with the rule), each naming the customer's
group, ``journey.<name>=treatment`` or ``=holdout``. A run **converts** when its customer sends
the journey's goal event (a purchase by default) within its conversion deadline (the goal's
``within_days``, else ``window_days``) of entering, whatever the journey did: the holdout,
which entered the same way and got no message, converts by the same rule, so the difference is
what the journey's messages added (intention to treat). The
interval of that difference is statsmodels' (``confint_proportions_2indep``, Newcombe's
method), and the test of it a two-proportion z-test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from features.contracts import EventType, ExposureStatus, ExposureType
from features.warehouse import Warehouse
from training.experiment_report import variant_pattern

GROUPS = ("treatment", "holdout")


@dataclass(frozen=True)
class JourneyOutline:
    """What the report needs of a journey. The journey itself is declared on the serving side
    (``serving.engagement.journeys.Journey.outline()``), which builds on this layer, not the
    reverse."""

    name: str
    goal: EventType
    message_steps: tuple[str, ...]
    """The names of its message steps, in order."""
    holdout: float
    conversion_days: float | None = None
    """The journey's conversion deadline, if it sets one: it wins over ``window_days``."""


@dataclass(frozen=True)
class Lift:
    treatment: float
    holdout: float
    difference: float
    """Treatment's conversion minus the holdout's, as a share of runs."""
    low: float
    high: float
    p_value: float

    @property
    def relative(self) -> float:
        return self.difference / self.holdout if self.holdout else math.nan


@dataclass(frozen=True)
class JourneyReport:
    journey: str
    start: datetime
    end: datetime
    window_days: float
    runs: pd.DataFrame
    """Per group: entered, converted (goal within the window), and how runs ended so far."""
    steps: pd.DataFrame
    """Per message step, in the journey's order: sent and suppressed (treatment), and the
    holdout's runs that reached it."""
    suppressions: pd.DataFrame
    """Suppressed messages per step and rule (treatment only: the holdout's are all holdout)."""
    lift: Lift | None
    verdict: str


def journey_report(warehouse: Warehouse, journey: JourneyOutline, start: datetime, end: datetime,
                   window_days: float = 7.0, alpha: float = 0.05) -> JourneyReport:
    window_days = journey.conversion_days or window_days
    pattern = variant_pattern(f"journey\\.{journey.name}")
    params = {"name": journey.name, "pattern": pattern, "start": start, "end": end,
              "window": timedelta(days=window_days)}
    goal = journey.goal.value

    def read(connection) -> tuple[pd.DataFrame, pd.DataFrame]:
        runs = connection.execute(f"""
            WITH entered AS (
                SELECT customer_id, timestamp AS entered_at,
                       regexp_extract(variants, $pattern, 2) AS grp
                FROM exposures
                WHERE exposure_type = '{ExposureType.JOURNEY.value}' AND placement = $name
                  AND status = '{ExposureStatus.ENTERED.value}'
                  AND timestamp >= $start AND timestamp < $end),
            converted AS (
                SELECT n.customer_id, n.entered_at, count(e.event_id) > 0 AS converted
                FROM entered n LEFT JOIN events e
                  ON e.customer_id = n.customer_id AND e.event_type = '{goal}'
                 AND e.timestamp >= n.entered_at AND e.timestamp < n.entered_at + $window
                GROUP BY ALL),
            ended AS (
                SELECT regexp_extract(variants, $pattern, 2) AS grp, status, count(*) AS runs
                FROM exposures
                WHERE exposure_type = '{ExposureType.JOURNEY.value}' AND placement = $name
                  AND status <> '{ExposureStatus.ENTERED.value}'
                  AND timestamp >= $start
                GROUP BY ALL)
            SELECT n.grp, count(*) AS entered, count_if(c.converted) AS converted,
                   (SELECT coalesce(sum(runs), 0) FROM ended d
                    WHERE d.grp = n.grp AND d.status = '{ExposureStatus.CONVERTED.value}')
                       AS reached_goal,
                   (SELECT coalesce(sum(runs), 0) FROM ended d
                    WHERE d.grp = n.grp AND d.status = '{ExposureStatus.EXITED.value}') AS exited,
                   (SELECT coalesce(sum(runs), 0) FROM ended d
                    WHERE d.grp = n.grp AND d.status = '{ExposureStatus.FINISHED.value}')
                       AS finished
            FROM entered n JOIN converted c USING (customer_id, entered_at)
            GROUP BY n.grp""", params).df()
        messages = connection.execute(f"""
            SELECT json_extract_string(context, '$.step') AS step,
                   regexp_extract(variants, $pattern, 2) AS grp, status,
                   coalesce(rule, '') AS rule, count(DISTINCT exposure_id) AS messages
            FROM exposures
            WHERE exposure_type = '{ExposureType.MESSAGE.value}' AND placement = $name
              AND timestamp >= $start AND timestamp < $end + $window
            GROUP BY ALL""", params).df()
        return runs, messages

    runs, messages = warehouse.analyse(read)
    runs = runs.set_index("grp").reindex(list(GROUPS), fill_value=0)
    runs.index.name = "group"
    steps, suppressions = _steps(journey, messages)
    lift = _lift(runs, alpha)
    return JourneyReport(journey.name, start, end, window_days, runs, steps, suppressions, lift,
                         _verdict(journey, runs, lift, alpha))


def _steps(journey: JourneyOutline, messages: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    names = list(journey.message_steps)
    treated = messages[messages["grp"] == "treatment"]
    held = messages[messages["grp"] == "holdout"]
    steps = pd.DataFrame({
        "step": names,
        "sent": [int(treated.loc[(treated["step"] == n)
                                 & (treated["status"] == ExposureStatus.SENT.value),
                                 "messages"].sum()) for n in names],
        "suppressed": [int(treated.loc[(treated["step"] == n)
                                       & (treated["status"] == ExposureStatus.SUPPRESSED.value),
                                       "messages"].sum()) for n in names],
        "holdout_reached": [int(held.loc[held["step"] == n, "messages"].sum()) for n in names]})
    suppressions = (treated[treated["status"] == ExposureStatus.SUPPRESSED.value]
                    .groupby(["step", "rule"], as_index=False)["messages"].sum()
                    .rename(columns={"messages": "suppressed"}))
    return steps, suppressions


def _lift(runs: pd.DataFrame, alpha: float) -> Lift | None:
    from statsmodels.stats.proportion import (
        confint_proportions_2indep,
        test_proportions_2indep,
    )

    (x_t, n_t), (x_h, n_h) = ((int(runs.at[g, "converted"]), int(runs.at[g, "entered"]))
                              for g in GROUPS)
    if min(n_t, n_h) == 0:
        return None
    with np.errstate(invalid="ignore", divide="ignore"):  # no conversions yet in either
        low, high = confint_proportions_2indep(x_t, n_t, x_h, n_h, compare="diff",
                                               method="newcomb", alpha=alpha)
        p_value = float(test_proportions_2indep(x_t, n_t, x_h, n_h, compare="diff").pvalue)
    return Lift(x_t / n_t, x_h / n_h, x_t / n_t - x_h / n_h, float(low), float(high),
                p_value if math.isfinite(p_value) else 1.0)


def _verdict(journey: JourneyOutline, runs: pd.DataFrame, lift: Lift | None, alpha: float) -> str:
    entered = int(runs["entered"].sum())
    if entered == 0:
        return "no customer entered this journey in the period"
    if lift is None:
        if journey.holdout == 0:
            return (f"{entered:,} runs; no holdout, so no lift can be measured: set holdout "
                    "(e.g. 0.1) in the journeys file")
        return f"{entered:,} runs, but none in one of the groups yet; keep running"
    interval = (f"{lift.difference:+.1%} points [{lift.low:+.1%}, {lift.high:+.1%}] "
                f"({lift.treatment:.1%} vs {lift.holdout:.1%} in the holdout)")
    if lift.low > 0:
        return f"{journey.name} lifts conversion by {interval}; p = {lift.p_value:.2g}"
    if lift.high < 0:
        return f"{journey.name} lowers conversion by {interval}; p = {lift.p_value:.2g}"
    return (f"no significant lift yet: {interval}, p = {lift.p_value:.2g}; keep running (the "
            f"interval narrows with more runs, {int(runs.at['holdout', 'entered']):,} in the "
            "holdout so far)")


def write_html(report: JourneyReport, path) -> object:
    """One page that opens offline: the verdict, the runs per group, the step funnel as a
    chart (sent and suppressed per message step, beside the runs that entered and converted),
    and the suppressions by rule."""
    import html

    from matplotlib.figure import Figure

    from training.plots import png_base64

    figure = Figure(figsize=(9, 3.8))
    funnel, groups = figure.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    treated = report.runs.loc["treatment"]
    labels = ["entered", *report.steps["step"], "converted"]
    sent = [treated["entered"], *report.steps["sent"], treated["converted"]]
    funnel.bar(labels, sent, color="#4c72b0", label="runs / messages sent")
    funnel.bar(labels, [0, *report.steps["suppressed"], 0], bottom=sent, color="#dd8452",
               label="suppressed")
    funnel.set_title("treatment: the step funnel")
    funnel.legend(fontsize=8)
    funnel.tick_params(axis="x", labelrotation=20)
    rates = [report.runs.at[g, "converted"] / report.runs.at[g, "entered"]
             if report.runs.at[g, "entered"] else 0.0 for g in GROUPS]
    groups.bar(list(GROUPS), rates, color=["#4c72b0", "#999999"])
    groups.set_title(f"converted within {report.window_days:g} days")
    groups.yaxis.set_major_formatter(lambda value, _: f"{value:.0%}")
    figure.tight_layout()
    chart = png_base64(figure)
    title = f"journey {report.journey}"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{border:1px solid #ccc;padding:3px 8px}}
table{{border-collapse:collapse}} img{{max-width:100%}}</style></head><body>
<h1>{html.escape(title)}</h1><p><b>Verdict:</b> {html.escape(report.verdict)}</p>
<p>Runs entered from {report.start:%Y-%m-%d %H:%M} to {report.end:%Y-%m-%d %H:%M} UTC; a run
converts when its customer buys within {report.window_days:g} days of entering.</p>
<h2>Runs per group</h2>{report.runs.to_html()}
<img alt="step funnel" src="data:image/png;base64,{chart}">
<h2>Message steps</h2>{report.steps.to_html(index=False)}
<h2>Suppressed, by rule</h2>{report.suppressions.to_html(index=False)}
</body></html>"""
    path.write_text(page)
    return path

"""The experiment report's per-customer counts and metrics, on a small warehouse whose right
answers are worked out by hand."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from features.experiments import METRICS, Experiment
from tests.test_attribution import DAY, T0, build, event, exposure
from training.experiment_report import (
    ExperimentReport,
    _daily,
    _difference,
    _measurable,
    _opt_out_guardrail,
    better,
    experiment_report,
    metric_level,
    unit_metrics,
)

EXPERIMENT = Experiment.model_validate({
    "name": "ranker", "traffic": 1, "start": (T0 - DAY).isoformat(),
    "secondary_metrics": [m for m in METRICS if m != "conversion"],
    "variants": [{"name": "A", "weight": 1}, {"name": "B", "weight": 1}]})


def in_variant(variant: str, entry: dict) -> dict:
    return {**entry, "variants": {"ranker": variant}}


@pytest.fixture
def units(tmp_path) -> pd.DataFrame:
    """c1 (A) is shown p1 and p2 at hour 0, had bought p3 two days before, then views, clicks,
    carts and buys p1 twice and p2 once in one session, redeems an offer, returns p2 and
    withdraws email consent; c2 (B) is shown p3 and buys p4 outside any session."""
    exposures = [
        in_variant("A", exposure("r1", "c1", 0, [("p1", "for_you"), ("p2", "for_you")])),
        in_variant("B", exposure("r2", "c2", 0, [("p3", "for_you")])),
        {**exposure("k1", "c1", 5, [], channel="email", placement="consent",
                    exposure_type="consent", status="withdrawn"), "variants": {}},
        {**exposure("k0", "c1", -1, [], channel="sms", placement="consent",
                    exposure_type="consent", status="withdrawn"), "variants": {}}]
    events = [
        event("e0", "c1", "p3", "purchase", -48),
        event("e1", "c1", "p1", "view", 1, session="s1"),
        event("e2", "c1", "p1", "click", 1, recommendation_id="r1", session="s1"),
        event("e3", "c1", "p1", "add_to_cart", 1, session="s1"),
        event("e4", "c1", "p1", "purchase", 2, quantity=2, session="s1"),
        event("e5", "c1", "p2", "purchase", 2, session="s1"),
        event("e6", "c1", "o1", "offer_redeemed", 3, session="s1"),
        event("e7", "c1", "p2", "return", 30),
        event("e8", "c2", "p4", "purchase", 4)]
    warehouse = build(tmp_path, exposures, events)
    report = experiment_report(warehouse, EXPERIMENT, T0 + 10 * DAY)
    return report.units.set_index("customer_id")


def test_each_customers_counts_after_and_before_the_first_exposure(units):
    c1 = units.loc["c1"]
    assert c1["variant"] == "A" and c1["impressions"] == 2 and c1["clicks"] == 1
    assert (c1["views"], c1["carts"], c1["redemptions"], c1["returns"]) == (1, 1, 1, 1)
    assert (c1["purchases"], c1["orders"], c1["quantity"]) == (2, 1, 3)
    assert c1["revenue"] == pytest.approx(2 * 10 + 20 - 20)  # catalog prices; p2 returned
    assert (c1["purchases_before"], c1["orders_before"], c1["revenue_before"]) == (1, 1, 5)
    assert c1["opt_outs"] == 1  # the sms opt-out came before the first exposure


def test_a_purchase_outside_a_session_is_an_order_of_its_own(units):
    c2 = units.loc["c2"]
    assert (c2["variant"], c2["purchases"], c2["orders"], c2["revenue"]) == ("B", 1, 1, 8)
    assert c2["opt_outs"] == 0 and c2["purchases_before"] == 0


def test_every_metric_is_made_of_counts_the_report_computes(units):
    for name, metric in METRICS.items():
        needed = [metric.numerator, metric.denominator or metric.numerator]
        if metric.cuped:
            needed += [f"{metric.numerator}_before", f"{metric.numerator}_cuped"]
        assert set(needed) <= set(units.columns), name


def test_metric_levels_read_as_a_person_would(units):
    a = units[units["variant"] == "A"]
    assert metric_level(METRICS["conversion"], units) == 1.0
    assert metric_level(METRICS["average_order_value"], a) == pytest.approx(20.0)
    assert metric_level(METRICS["return_rate"], a) == pytest.approx(0.5)
    assert metric_level(METRICS["opt_out"], units) == 0.5
    assert math.isnan(metric_level(METRICS["average_order_value"], a.assign(orders=0)))


def test_lower_is_better_for_returns_and_opt_outs_only():
    assert better("return_rate", -0.01) and better("opt_out", -0.01)
    assert not better("conversion", -0.01) and better("conversion", 0.01)
    assert {m for m, metric in METRICS.items() if metric.lower_is_better} == {
        "return_rate", "opt_out"}


def opt_out_reading(control: int, treated: int, customers: int = 10_000) -> ExperimentReport:
    units = pd.DataFrame({
        "variant": ["A"] * customers + ["B"] * customers,
        "opt_outs": [1] * control + [0] * (customers - control)
                    + [1] * treated + [0] * (customers - treated)})
    report = ExperimentReport("ranker", T0, T0 + timedelta(days=7), units, 0, None)
    _opt_out_guardrail(report, ["A", "B"])
    return report


def test_the_opt_out_guardrail_breaches_on_a_significantly_higher_opt_out_rate():
    report = opt_out_reading(control=20, treated=90)
    assert report.breached
    assert report.guardrails[0].startswith("opt-outs: B 0.90% of 10,000 customers withdrew "
                                           "consent vs A 0.20%")


def test_the_opt_out_guardrail_holds_within_the_margin():
    report = opt_out_reading(control=20, treated=25)
    assert not report.breached and report.guardrails[0].endswith("fine")


def test_a_metric_the_experiment_does_not_know_is_refused_with_the_ones_it_does():
    with pytest.raises(ValueError, match="primary_metric") as caught:
        Experiment.model_validate({**EXPERIMENT.model_dump(), "primary_metric": "happiness"})
    assert "average_order_value" in str(caught.value)


@settings(max_examples=40, deadline=None)
@given(metric=st.sampled_from(["conversion", "revenue", "average_order_value", "return_rate"]),
       seed=st.integers(0, 10_000), size=st.integers(8, 200))
def test_the_daily_series_ends_where_the_whole_sample_comparison_does(metric, seed, size):
    """The running sums of ``_daily`` and the per-unit arrays of ``_difference`` are two ways to
    one number: on the last day every unit has arrived."""
    rng = np.random.default_rng(seed)
    purchases = rng.poisson(0.8, size)
    units = unit_metrics(pd.DataFrame({
        "variant": np.where(np.arange(size) % 2 == 0, "A", "B"),
        "first_exposure": pd.Timestamp("2024-03-01", tz="UTC")
                          + pd.to_timedelta(rng.integers(0, 5 * 86400, size), unit="s"),
        "purchases": purchases, "purchases_before": rng.poisson(0.5, size),
        "orders": np.minimum(purchases, rng.integers(1, 3, size)),
        "revenue": purchases * rng.gamma(2.0, 10.0, size),
        "revenue_before": rng.gamma(1.0, 10.0, size),
        "returns": rng.binomial(purchases, 0.2)}
        | {c: np.zeros(size) for c in ("orders_before", "quantity", "quantity_before", "views",
                                       "views_before")}))
    control, treated = units[units["variant"] == "A"], units[units["variant"] == "B"]
    assume(_measurable(METRICS[metric], control, treated))
    daily = _daily(units, ["A", "B"], metric, 0.05)
    level, difference, variance = _difference(metric, control, treated)
    last = daily.iloc[-1]
    assert last["units"] == size
    assert last["difference"] == pytest.approx(difference, rel=1e-9, abs=1e-12)
    # the variances agree to rounding; where they are (nearly) zero, rounding is all there
    # is, and a square root would magnify it: compare them, on the scale of the level squared
    half = last["fixed_high"] - last["difference"]
    assert (half / 1.959964) ** 2 == pytest.approx(variance, rel=1e-6,
                                                   abs=1e-9 * max(1.0, level ** 2))

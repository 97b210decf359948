"""The journey report on a warehouse whose answers are known: runs per group, the step funnel,
suppressions by rule, and the lift over the holdout against Newcombe's worked example."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from serving.engagement.journeys import DEFAULT_JOURNEYS, load_journeys
from serving.exposure_log import journey_exposure, suppressed_exposure
from tests.test_attribution import DAY, T0, at, build, event
from training.journey_report import journey_report

JOURNEY = load_journeys(DEFAULT_JOURNEYS).journey("cart_recovery").outline()


def entered(customer: str, group: str, hours: float = 0) -> dict:
    return journey_exposure("cart_recovery", customer, "entered", at(hours).timestamp(),
                            {"journey.cart_recovery": group}, reason="cart left")


def ended(customer: str, group: str, status: str, hours: float) -> dict:
    return journey_exposure("cart_recovery", customer, status, at(hours).timestamp(),
                            {"journey.cart_recovery": group})


def message(customer: str, group: str, step: str, status: str, rule: str | None = None,
            hours: float = 0.5) -> dict:
    variants = {"journey.cart_recovery": group}
    if status == "suppressed":
        return suppressed_exposure(f"s-{customer}-{step}", customer, "cart_recovery", "push",
                                   rule, "why", at(hours).timestamp(), variants, step)
    return {"exposure_id": f"m-{customer}-{step}", "exposure_type": "message",
            "customer_id": customer, "at": at(hours).timestamp(), "channel": "push",
            "placement": "cart_recovery", "status": "sent", "rule": None, "model_versions": {},
            "items": [("product", "p1", "for_you")], "context": {"step": step},
            "variants": variants}


@pytest.fixture
def report(tmp_path):
    """Treatment c1..c4: c1 and c2 buy within a day, c3 after eight days (too late), c4 never;
    push sent to c1..c3, suppressed for c4 (no consent), the email sent to c3. Holdout h1, h2:
    h1 buys; both reach the push step, suppressed as holdout."""
    exposures = [
        *(entered(c, "treatment") for c in ("c1", "c2", "c3", "c4")),
        *(entered(h, "holdout") for h in ("h1", "h2")),
        *(message(c, "treatment", "push_reminder", "sent") for c in ("c1", "c2", "c3")),
        message("c4", "treatment", "push_reminder", "suppressed", "consent"),
        *(message(h, "holdout", "push_reminder", "suppressed", "holdout") for h in ("h1", "h2")),
        message("c3", "treatment", "email_offer", "sent", hours=1.5),
        ended("c1", "treatment", "converted", 5), ended("c2", "treatment", "converted", 20),
        ended("c3", "treatment", "finished", 1.5), ended("c4", "treatment", "finished", 1.5),
        ended("h1", "holdout", "converted", 6), ended("h2", "holdout", "finished", 1.5)]
    events = [event("e1", "c1", "p1", "purchase", 5), event("e2", "c2", "p2", "purchase", 20),
              event("e3", "c3", "p1", "purchase", 8 * 24), event("e4", "h1", "p3", "purchase", 6)]
    warehouse = build(tmp_path, exposures, events)
    return journey_report(warehouse, JOURNEY, T0 - DAY, T0 + DAY, window_days=7)


def test_runs_per_group_count_entries_conversions_in_the_window_and_how_runs_ended(report):
    runs = report.runs
    assert runs.loc["treatment", ["entered", "converted", "reached_goal", "finished"]
                    ].tolist() == [4, 2, 2, 2]
    assert runs.loc["holdout", ["entered", "converted", "reached_goal", "finished"]
                    ].tolist() == [2, 1, 1, 1]


def test_a_journeys_conversion_deadline_wins_over_the_purchase_window(tmp_path):
    exposures = [entered("c1", "treatment"), entered("c2", "treatment")]
    events = [event("e1", "c1", "p1", "purchase", 5), event("e2", "c2", "p2", "purchase", 20)]
    warehouse = build(tmp_path, exposures, events)
    half_day = dataclasses.replace(JOURNEY, conversion_days=0.5)
    report = journey_report(warehouse, half_day, T0 - DAY, T0 + DAY, window_days=7)
    assert report.window_days == 0.5 and report.runs.at["treatment", "converted"] == 1


def test_the_step_funnel_follows_the_journeys_order(report):
    assert report.steps.to_dict("records") == [
        {"step": "push_reminder", "sent": 3, "suppressed": 1, "holdout_reached": 2},
        {"step": "email_offer", "sent": 1, "suppressed": 0, "holdout_reached": 0}]
    assert report.suppressions.to_dict("records") == [
        {"step": "push_reminder", "rule": "consent", "suppressed": 1}]


def test_equal_conversion_is_no_lift(report):
    assert report.lift.difference == 0
    assert report.verdict.startswith("no significant lift yet: +0.0% points")


def test_the_lift_interval_is_newcombes(tmp_path):
    """Newcombe (1998), Statistics in Medicine 17, table II, example (a): 56/70 against 48/80,
    difference 0.2000, 95 % interval 0.0524 to 0.3339 (method 10)."""
    exposures, events = [], []
    for group, runs, buyers in (("treatment", 70, 56), ("holdout", 80, 48)):
        for number in range(runs):
            customer = f"{group[0]}{number}"
            exposures.append(entered(customer, group))
            if number < buyers:
                events.append(event(f"e-{customer}", customer, "p1", "purchase", 2))
    warehouse = build(tmp_path, exposures, events)
    lift = journey_report(warehouse, JOURNEY, T0 - DAY, T0 + DAY).lift
    assert lift.difference == pytest.approx(0.2)
    assert (lift.low, lift.high) == (pytest.approx(0.0524, abs=5e-5),
                                     pytest.approx(0.3339, abs=5e-5))


def test_a_journey_without_a_holdout_says_how_to_measure_its_lift(tmp_path):
    warehouse = build(tmp_path, [entered("c1", "treatment")], [])
    plain = dataclasses.replace(JOURNEY, holdout=0.0)
    assert "set holdout" in journey_report(warehouse, plain, T0 - DAY, T0 + DAY).verdict


def test_the_report_command_prints_the_verdict_and_writes_html(tmp_path):
    from tests.test_cli import run

    build(tmp_path, [entered("c1", "treatment"), entered("h1", "holdout")], [])
    window = ["--from", (T0 - timedelta(hours=1)).isoformat(), "--to",
              (T0 + timedelta(hours=1)).isoformat(), "--data-dir", str(tmp_path)]
    shown = run("journeys", "report", "cart_recovery", *window)
    assert shown.exit_code == 0, shown.output
    assert "verdict: no significant lift yet" in shown.output
    page = tmp_path / "cart.html"
    written = run("journeys", "report", "cart_recovery", *window, "--format", "html",
                  "--out", str(page))
    assert written.exit_code == 0 and "data:image/png;base64," in page.read_text()
    missing = run("journeys", "report", "nope", "--data-dir", str(tmp_path))
    assert missing.exit_code == 2 and "no journey 'nope'" in missing.output

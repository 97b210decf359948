"""``nextbest journeys``: what is in force, and the one scheduler process that runs them."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from features.cli import DataDir, command_group, console, friendly_errors, settings_with
from features.journeys import Journey, JourneyPlan, Step

journeys_app = command_group("Customer journeys: what is in force, and their scheduler.")


def _plan(data_dir: Path | None) -> tuple[JourneyPlan, Path]:
    from features.journeys import journeys_path, load_journeys

    path = journeys_path(settings_with(data_dir))
    return load_journeys(path), path  # a JourneysError is a ValueError: reported, exit 2


@journeys_app.command("show")
@friendly_errors
def show_journeys(
    as_json: Annotated[bool, typer.Option("--json", help="Print them as JSON.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Print the journeys in force, highest priority first: who enters, each step, the goal."""
    plan, path = _plan(data_dir)
    if as_json:
        console.print_json(plan.model_dump_json(by_alias=True))
        return
    console.print(f"[bold]journeys[/] from {path}" if plan.journeys else f"no journeys in {path}")
    for journey in plan.by_priority:
        console.print(f"\n[bold]{journey.name}[/] (priority {journey.priority}"
                      + (f", {journey.holdout:.0%} held out" if journey.holdout else "") + ")",
                      highlight=False)
        console.print(f"  enters: {_entry(journey)}", highlight=False)
        for number, step in enumerate(journey.steps, 1):
            console.print(f"  {number}. {step.name}: {_step(step)}", highlight=False)
        goal = f"a {journey.goal.event.value}" if journey.goal else "none"
        again = (f"{journey.reentry.after_days:g} days after a run ends"
                 if journey.reentry.after_days is not None else "never")
        console.print(f"  goal: {goal}; enters again: {again}", highlight=False)


def _entry(journey: Journey) -> str:
    entry = journey.entry
    what = {"cart_abandoned": f"a cart idle {entry.after_minutes:g} minutes, nothing bought",
            "category_browsing": f"{entry.views} views in one category within "
                                 f"{entry.within_days:g} days, nothing bought there",
            "event": f"a {entry.event.value if entry.event else '?'} event",
            "first_purchase": "a first purchase",
            "lapsing": f"no purchase for {entry.days_without_purchase:g} days"}[entry.when]
    if entry.segments:
        what += f"; segments {', '.join(entry.segments)}"
    if entry.propensity_deciles:
        what += f"; propensity deciles {entry.propensity_deciles[0]}-{entry.propensity_deciles[1]}"
    return what


def _step(step: Step) -> str:
    if step.wait is not None:
        wait = step.wait
        if wait.until_local is not None:
            return f"wait until {wait.until_local:%H:%M} local time"
        if wait.until_event is not None:
            return f"wait for a {wait.until_event.value}, at most {wait.timeout_hours:g} h"
        return f"wait {wait.seconds / 3600:g} h"
    if step.branch is not None:
        return "; ".join(f"if {_condition(case.if_)} go to {case.goto}"
                         for case in step.branch) + "; else the next step"
    if step.message is not None:
        m = step.message
        return f"send {m.items} {m.send} item(s) by {m.channel}" + (
            f" ({m.reason})" if m.reason else "")
    if step.update is not None:
        return "set " + ", ".join(f"{k}={v}" for k, v in step.update.items())
    return "exit"


def _condition(condition) -> str:
    (name, value), = ((k, v) for k, v in condition.__dict__.items() if v is not None)
    return f"{name} {value}"


@journeys_app.command("run")
@friendly_errors
def run_journeys(
    once: Annotated[bool, typer.Option("--once", help="One pass over what is due, then exit.")
                    ] = False,
    interval: Annotated[float, typer.Option(min=0.05, help="Seconds between passes.")] = 0.2,
    data_dir: DataDir = None,
) -> None:
    """The journey scheduler: one process per deployment, beside the API workers. Every
    --interval seconds it advances the customers with something due; it reads the journeys file
    again when it changes and the models when the alias moves. Ctrl+C stops it."""
    from features.journeys import JourneysError, journeys_path, load_journeys
    from features.online import open_online_store
    from features.policy import load_policy, policy_path
    from serving.exposure_log import ExposureLog
    from serving.journeys import JourneyEngine
    from serving.models import resolve_versions
    from serving.service import build_state, load_state

    settings = settings_with(data_dir)
    plan, path = _plan(data_dir)
    store = open_online_store(settings)
    state = [build_state(settings)]
    log = ExposureLog(store, settings.exposure_buffer, settings.exposure_flush_ms).start()
    engine = JourneyEngine(plan, load_policy(policy_path(settings)), store, lambda: state[0],
                           settings.max_category_share, log.record)
    stamp, checked = _stamp(path), time.monotonic()
    totals: Counter = Counter()
    console.print(f"journey scheduler: {', '.join(j.name for j in plan.journeys) or 'none'} "
                  f"from {path}, every {interval:g} s" + ("" if once else "; Ctrl+C stops"))
    try:
        while True:
            started = time.perf_counter()
            outcomes = engine.tick(datetime.now(UTC))
            passed = Counter(o.status for o in outcomes)
            totals.update(passed)
            if outcomes or once:
                console.print(f"{datetime.now(UTC):%H:%M:%S} {len(outcomes)} outcome(s) in "
                              f"{time.perf_counter() - started:.2f} s: "
                              + (", ".join(f"{k} {v}" for k, v in sorted(passed.items()))
                                 or "nothing due"), highlight=False)
            if once:
                break
            time.sleep(interval)
            if time.monotonic() - checked >= settings.reload_interval_seconds:
                checked = time.monotonic()
                if _stamp(journeys_path(settings)) != stamp:
                    stamp = _stamp(journeys_path(settings))
                    try:
                        engine.plan = load_journeys(journeys_path(settings))
                        console.print("journeys file read again")
                    except JourneysError as error:
                        console.print(f"journeys file not applied, still running the previous "
                                      f"one: {error}")
                if resolve_versions(settings, settings.serving_alias) != \
                        state[0].models.versions:
                    state[0] = load_state(settings)
                    console.print(f"models now {state[0].models.versions}")
    except KeyboardInterrupt:
        pass
    finally:
        log.close()
    console.print(f"done: {', '.join(f'{k} {v}' for k, v in sorted(totals.items())) or 'nothing'}",
                  highlight=False)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size

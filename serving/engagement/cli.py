"""``nextbest policy|journeys``: the contact policy and the journeys in force, the scheduler's
outbox and the journeys' reports (the scheduler itself runs in ``nextbest worker``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from features.cli import DataDir, command_group, console, friendly_errors, settings_with

if TYPE_CHECKING:  # the command line loads what a command uses when it runs
    from serving.engagement.journeys import Journey, JourneyPlan, Step
    from serving.engagement.policy import ContactPolicy

policy_app = command_group("The contact policy and trigger rules.")
journeys_app = command_group("Customer journeys: what is in force, their outbox and reports.")


def _policy(data_dir: Path | None) -> tuple[ContactPolicy, str]:
    from serving.engagement.policy import load_policy, policy_path

    path = policy_path(settings_with(data_dir))
    return load_policy(path), str(path)  # a PolicyError is a ValueError: reported, exit 2


@policy_app.command("show")
@friendly_errors
def show_policy(
    as_json: Annotated[bool, typer.Option("--json", help="Print the policy as JSON.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Print the policy in force: quiet hours, caps, cross-channel memory, trigger rules."""
    from rich.table import Table

    policy, path = _policy(data_dir)
    if as_json:
        console.print_json(policy.model_dump_json())
        return
    console.print(f"[bold]contact policy[/] from {path}")
    quiet = policy.quiet_hours
    console.print("quiet hours: " + (f"{quiet.start:%H:%M}-{quiet.end:%H:%M} {quiet.timezone}"
                                     if quiet else "none"))
    console.print(f"cross-channel memory: {policy.cross_channel_memory_hours:g} hours")
    caps = Table("channel", "at most", "per")
    for channel, cap in policy.caps.items():
        caps.add_row(channel.value, str(cap.max), f"{cap.per_days:g} days")
    console.print(caps)
    if policy.daily_caps:
        days = ", ".join(f"{getattr(c, 'value', c)} {most}" for c, most in policy.daily_caps.items())
        console.print(f"daily caps (the customer's own calendar day): {days}", highlight=False)
    if policy.fatigue is not None:
        console.print(f"fatigue: after {policy.fatigue.after_unanswered} unanswered messages in "
                      f"a row on a channel, one per {policy.fatigue.rest_days:g} days there",
                      highlight=False)
    console.print("[bold]triggers[/]" if policy.triggers else "no triggers")
    for rule in policy.triggers:
        when = (f"a cart idle {rule.after_minutes:g} minutes" if rule.when == "cart_abandoned"
                else f"{rule.views} views in one category within {rule.within_days:g} days")
        console.print(f"  {rule.name}: on {when}, send {rule.items} {rule.action} item(s) by the "
                      f"first allowed of {', '.join(c.value for c in rule.channels)}; expires "
                      f"after {rule.expires_after_hours:g} h, at most once per "
                      f"{rule.cooldown_hours:g} h", highlight=False)


def _plan(data_dir: Path | None) -> tuple[JourneyPlan, Path]:
    """The journeys file's journeys and the policy's trigger rules, and the journeys file."""
    from serving.engagement.journeys import journeys_in_force, journeys_path

    settings = settings_with(data_dir)
    return journeys_in_force(settings), journeys_path(settings)  # errors: reported, exit 2


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


@journeys_app.command("outbox")
@friendly_errors
def show_outbox(
    after: Annotated[str | None, typer.Option(help="Only decisions after this position.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="How many to show.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Messages the journeys decided, oldest first, with their positions: what the shop's
    sender reads (``after`` the last position it handled)."""
    from rich.table import Table

    from features.online import open_online_store

    entries = open_online_store(settings_with(data_dir)).outbox(after, limit)
    if as_json:
        for position, decision in entries:
            print(json.dumps({"position": position, **decision}))
        return
    table = Table("position", "created", "journey", "step", "customer", "channel", "items",
                  "reason")
    for position, d in entries:
        table.add_row(position, d["created_at"][:19], d["trigger"], d.get("step", ""),
                      d["customer_id"], d["channel"], ", ".join(i["item_id"] for i in d["items"]),
                      d["reason"])
    console.print(table)


@journeys_app.command("report")
@friendly_errors
def report_journey(
    name: str,
    start: Annotated[str | None, typer.Option(
        "--from", help="Runs entered at or after this time (UTC, ISO 8601) [default: 30 days "
                       "ago].")] = None,
    end: Annotated[str | None, typer.Option(
        "--to", help="... and before this one [default: now].")] = None,
    file_format: Annotated[str, typer.Option("--format", help="table or html.")] = "table",
    out: Annotated[Path | None, typer.Option(help="Where the HTML goes [default: "
                                                  "<name>.html].")] = None,
    data_dir: DataDir = None,
) -> None:
    """A journey's runs per group (entered, converted within the purchase window, how they
    ended), its message steps (sent, suppressed by rule) and its lift over its holdout, from
    the warehouse (run 'nextbest events flush' first for what the service holds)."""
    from datetime import timedelta

    from rich.table import Table

    from features.cli import parse_time
    from features.warehouse import Warehouse
    from training.journey_report import journey_report, write_html

    if file_format not in ("table", "html"):
        raise ValueError(f"--format must be table or html, got {file_format!r}")
    settings = settings_with(data_dir)
    plan, _ = _plan(data_dir)
    journey = plan.journey(name)
    until = parse_time(end, "--to").to_pydatetime() if end else datetime.now(UTC)
    since = parse_time(start, "--from").to_pydatetime() if start else until - timedelta(days=30)
    if since >= until:
        raise ValueError(f"--from {since.isoformat()} is not before --to {until.isoformat()}")
    report = journey_report(Warehouse(settings.data_dir / "warehouse"), journey.outline(), since, until,
                            settings.purchase_window_days)
    if file_format == "html":
        console.print(f"wrote {write_html(report, out or Path(f'{name}.html'))}")
        return
    runs = Table("group", "entered", f"converted ({report.window_days:g} d)", "reached goal",
                 "exited", "finished")
    for group, row in report.runs.iterrows():
        runs.add_row(group, *(f"{int(row[c]):,}" for c in ("entered", "converted",
                                                            "reached_goal", "exited",
                                                            "finished")))
    console.print(runs)
    steps = Table("step", "sent", "suppressed", "holdout reached")
    for row in report.steps.itertuples(index=False):
        steps.add_row(row.step, f"{row.sent:,}", f"{row.suppressed:,}",
                      f"{row.holdout_reached:,}")
    console.print(steps)
    for row in report.suppressions.itertuples(index=False):
        console.print(f"suppressed at {row.step} by {row.rule}: {row.suppressed:,}",
                      highlight=False)
    console.print(f"verdict: {report.verdict}", highlight=False)

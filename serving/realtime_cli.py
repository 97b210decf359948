"""``nextbest policy|events|triggers``: the real-time parts, from the command line.

``policy show`` prints the contact policy and trigger rules the service applies; ``events flush``
moves ingested events to the warehouse (the service also does it on a timer); ``triggers run``
evaluates the timed triggers once, as the service's timer does, and ``triggers outbox`` lists the
decisions written for other systems to send.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from features.cli import console, friendly_errors, warehouse_at
from features.online import open_online_store
from features.policy import ContactPolicy, load_policy, policy_path
from features.settings import get_settings
from serving.service import build_state
from serving.triggers import TriggerEngine

policy_app = typer.Typer(help="The contact policy and trigger rules.", no_args_is_help=True)
events_app = typer.Typer(help="Events ingested in real time.", no_args_is_help=True)
triggers_app = typer.Typer(help="Behavioural triggers and their outbox.", no_args_is_help=True)


def _policy() -> tuple[ContactPolicy, str]:
    path = policy_path(get_settings())
    return load_policy(path), str(path)  # a PolicyError is a ValueError: reported, exit 2


@policy_app.command("show")
@friendly_errors
def show_policy(
    as_json: Annotated[bool, typer.Option("--json", help="Print the policy as JSON.")] = False,
) -> None:
    """Print the policy in force: quiet hours, caps, cross-channel memory, trigger rules."""
    policy, path = _policy()
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
    console.print("[bold]triggers[/]" if policy.triggers else "no triggers")
    for rule in policy.triggers:
        when = (f"a cart idle {rule.after_minutes:g} minutes" if rule.when == "cart_abandoned"
                else f"{rule.views} views in one category within {rule.within_days:g} days")
        console.print(f"  {rule.name}: on {when}, send {rule.items} {rule.action} item(s) by the "
                      f"first allowed of {', '.join(c.value for c in rule.channels)}; expires "
                      f"after {rule.expires_after_hours:g} h, at most once per "
                      f"{rule.cooldown_hours:g} h", highlight=False)


@events_app.command("flush")
@friendly_errors
def flush_events() -> None:
    """Move events ingested by the service into the warehouse (exactly once)."""
    settings = get_settings()
    store = open_online_store(settings)
    moved = store.flush_to(warehouse_at(None))
    console.print(f"moved {moved:,} event(s) from the {store.name} online store to the warehouse")


@triggers_app.command("run")
@friendly_errors
def run_triggers() -> None:
    """Evaluate the timed triggers once now, and show what each one did."""
    settings = get_settings()
    policy, _ = _policy()
    state = build_state(settings)
    engine = TriggerEngine(policy, open_online_store(settings), lambda: state,
                           settings.max_category_share)
    outcomes = engine.tick(datetime.now(UTC))
    table = Table("trigger", "customer", "status", "detail")
    for outcome in outcomes:
        table.add_row(outcome.trigger, outcome.customer_id, outcome.status, outcome.detail)
    console.print(table)
    fired = sum(o.status == "fired" for o in outcomes)
    console.print(f"{fired} decision(s) written to the outbox, {len(outcomes) - fired} not sent")


@triggers_app.command("outbox")
@friendly_errors
def show_outbox(
    after: Annotated[str | None, typer.Option(help="Only decisions after this position.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="How many to show.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Decisions the triggers wrote, oldest first, with their positions."""
    entries = open_online_store(get_settings()).outbox(after, limit)
    if as_json:
        for position, decision in entries:
            print(json.dumps({"position": position, **decision}))
        return
    table = Table("position", "created", "trigger", "customer", "channel", "items", "reason")
    for position, d in entries:
        table.add_row(position, d["created_at"][:19], d["trigger"], d["customer_id"], d["channel"],
                      ", ".join(i["item_id"] for i in d["items"]), d["reason"])
    console.print(table)

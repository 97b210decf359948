"""``nextbest policy|events``: the real-time parts, from the command line.

``policy show`` prints the contact policy and trigger rules the journeys apply; ``events flush``
moves ingested events to the warehouse (the service also does it on a timer); ``events delete``
removes stored events that should never have been accepted. The journeys and their outbox are
``nextbest journeys`` (``serving.journeys_cli``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from features.cli import (
    DataDir,
    command_group,
    console,
    errors,
    friendly_errors,
    parse_time,
    settings_with,
    warehouse_at,
)

if TYPE_CHECKING:
    from features.policy import ContactPolicy

policy_app = command_group("The contact policy and trigger rules.")
events_app = command_group("Events ingested in real time, and removing stored ones.")


def _policy(data_dir: Path | None) -> tuple[ContactPolicy, str]:
    from features.policy import load_policy, policy_path

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
def flush_events(data_dir: DataDir = None) -> None:
    """Move events ingested by the service, and the exposures it logged, into the warehouse
    (exactly once)."""
    from features.online import open_online_store

    store = open_online_store(settings_with(data_dir))
    warehouse = warehouse_at(data_dir)
    moved = store.flush_to(warehouse)
    shown = store.flush_exposures_to(warehouse)
    console.print(f"moved {moved:,} event(s) and {shown:,} exposure row(s) from the {store.name} "
                  "online store to the warehouse")


@events_app.command("delete")
@friendly_errors
def delete_events(
    event_id: Annotated[list[str] | None, typer.Option(
        help="Only events with this event_id, repeatable.")] = None,
    customer: Annotated[list[str] | None, typer.Option(
        help="Only events of this customer, repeatable.")] = None,
    start: Annotated[str | None, typer.Option(
        "--from", help="Only events at or after this time (UTC, ISO 8601).")] = None,
    end: Annotated[str | None, typer.Option(
        "--to", help="Only events before this time (UTC, ISO 8601).")] = None,
    dry_run: Annotated[bool, typer.Option(
        help="Count the matching events and change nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Remove stored events matching every option given (at least one), e.g. a batch sent with
    wrong timestamps. Events still waiting in the online store are moved to the warehouse first,
    so they are covered too. The removal is atomic; the removed events are kept in
    <data-dir>/warehouse/deleted/ (import that file to undo) and it is logged in
    <data-dir>/warehouse/deletions.jsonl."""
    from features.online import open_online_store
    from features.warehouse import EventCriteria

    criteria = EventCriteria(tuple(event_id or ()), tuple(customer or ()),
                             parse_time(start, "--from") if start else None,
                             parse_time(end, "--to") if end else None)
    warehouse = warehouse_at(data_dir)
    if not dry_run:
        open_online_store(settings_with(data_dir)).flush_to(warehouse)
    matching = warehouse.delete_events(criteria, dry_run=True).removed
    if dry_run or matching == 0:
        console.print(f"{matching:,} stored event(s) match; nothing was changed")
        return
    if not yes and not typer.confirm(f"delete {matching:,} stored event(s)?"):
        errors.print("nothing was deleted")
        raise typer.Exit(code=1)
    result = warehouse.delete_events(criteria)
    console.print(f"deleted {result.removed:,} event(s); they are kept in {result.kept_in} "
                  "(import it with 'nextbest data import events' to undo)")

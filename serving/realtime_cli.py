"""``nextbest events``: events ingested in real time, from the command line.

``events flush`` moves ingested events to the warehouse (the service also does it on a timer);
``events delete`` removes stored events that should never have been accepted; ``events
consume`` reads them from NATS JetStream (``serving.stream``). The contact policy
and the journeys are ``nextbest policy`` and ``nextbest journeys`` (``serving.engagement.cli``).
"""

from __future__ import annotations

from typing import Annotated

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

events_app = command_group("Events ingested in real time, and removing stored ones.")


@events_app.command("consume")
@friendly_errors
def consume_events(
    url: Annotated[str | None, typer.Option(
        help="NATS server [default: $NEXTBEST_STREAM_URL].")] = None,
    until_idle: Annotated[float | None, typer.Option(
        min=0.1, help="Stop once nothing has arrived for this many seconds (drain a backlog); "
                      "default: run until interrupted.")] = None,
    processes: Annotated[int, typer.Option(
        min=1, max=64, help="Consumer processes sharing the stream's durable consumer; one "
                            "per core takes the most.")] = 1,
    data_dir: DataDir = None,
) -> None:
    """Record events published on NATS JetStream (NEXTBEST_STREAM_SUBJECT) into the online
    store, as POST /events does: validated, deduplicated by event_id, acknowledged once
    stored; what cannot be recorded goes to NEXTBEST_STREAM_DEAD_LETTER with the reason."""
    from serving.stream import StreamConfig, run_processes

    settings = settings_with(data_dir)
    if url is not None:
        settings = settings.model_copy(update={"stream_url": url})
    if not settings.stream_url:
        raise ValueError("no NATS server: pass --url nats://HOST:4222 or set NEXTBEST_STREAM_URL")
    config = StreamConfig.from_settings(settings)
    console.print(f"consuming {config.subject} from {config.url} (stream {config.stream}, "
                  f"consumer {config.durable}, {processes} process(es)); dead letters to "
                  f"{config.dead_letter}", highlight=False)
    try:
        stats = run_processes(settings, processes, until_idle, _report)
    except ConnectionError as error:  # the server is not there
        raise ValueError(str(error)) from None
    console.print(stats.line(), highlight=False)


_shown = [0.0]


def _report(stats) -> None:
    """Each process's figures every 5 seconds (a module-level function: consumer processes
    are spawned, and take it by name)."""
    import os
    import time

    if time.monotonic() - _shown[0] >= 5:
        _shown[0] = time.monotonic()
        console.print(f"[{os.getpid()}] {stats.line()}", highlight=False)


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

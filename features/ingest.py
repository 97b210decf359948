"""Check events sent in real time against the event contract, one problem per bad field.

The same vectorized validation as file imports (``features.validation``) runs on the whole
batch at once, so a batch of ten thousand events is checked in milliseconds; each problem is
reported with the event's index in the batch, so a caller knows which ones to fix and resend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from features.contracts import EVENTS
from features.validation import validate_table


@dataclass(frozen=True)
class EventProblem:
    index: int
    field: str | None
    value: str | None
    expected: str

    def __str__(self) -> str:
        where = f"events[{self.index}]" + (f".{self.field}" if self.field else "")
        got = "" if self.value is None else f"got {self.value!r}, "
        return f"{where}: {got}expected {self.expected}"

    def as_dict(self) -> dict:
        return {"index": self.index, "field": self.field, "value": self.value,
                "expected": self.expected, "message": str(self)}


@dataclass(frozen=True)
class ParsedEvents:
    events: list[dict]
    """Valid events in contract form, timestamps as ISO strings, plus ``at`` (epoch seconds)."""
    problems: list[EventProblem]
    rejected: list[int]
    """Indexes of the events with at least one problem."""
    repeated: int = 0
    """Events whose event_id appeared earlier in the same batch: a retry, counted once."""


def parse_events(raw: Sequence[object], max_problems: int = 100) -> ParsedEvents:
    """Split ``raw`` (decoded JSON) into valid events and problems naming index and field."""
    problems: list[EventProblem] = []
    objects: list[dict] = []
    positions: list[int] = []
    ids: set[str] = set()
    repeated = 0
    for index, entry in enumerate(raw):
        if isinstance(entry, dict):
            event_id = entry.get("event_id")
            if isinstance(event_id, str) and event_id in ids:
                repeated += 1
                continue
            if isinstance(event_id, str):
                ids.add(event_id)
            objects.append(entry)
            positions.append(index)
        else:
            problems.append(EventProblem(index, None, _shown(entry), "a JSON object (an event)"))
    if not objects:
        return ParsedEvents([], problems, [p.index for p in problems], repeated)
    frame = pd.DataFrame(objects)
    missing = [c.name for c in EVENTS.columns if c.required and c.name not in frame.columns]
    for name in missing:  # absent from every event: report per event, as a caller reads it
        frame[name] = None
    typed, report = validate_table(frame, EVENTS, "events", max_problems=max_problems)
    for problem in report.problems:
        problems.append(EventProblem(positions[problem.row - 1] if problem.row else -1,
                                     problem.column, problem.value, problem.expected))
    bad = set(report.bad_rows.tolist())
    good = typed.drop(index=list(bad)) if bad else typed
    events = []
    if len(good):
        stamps = good["timestamp"]
        records = good.assign(timestamp=stamps.dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")).astype(object)
        records = records.where(records.notna(), None).to_dict("records")
        for record, moment in zip(records, stamps, strict=True):
            record["at"] = moment.timestamp()
            events.append(record)
    rejected = sorted({p.index for p in problems if p.index >= 0} | {positions[r] for r in bad})
    return ParsedEvents(events, sorted(problems, key=lambda p: p.index), rejected, repeated)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."

"""Check events sent in real time against the event contract, one problem per bad field.

Each event is checked on its own, by the contract's columns, with the same rules as file
imports (``features.validation``, which is vectorized for millions of rows but has a fixed cost
per call that a single event should not pay). Each problem is reported with the event's index
in the batch, so a caller knows which ones to fix and resend.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd

from features.contracts import EVENTS, Column
from features.event_time import TimeWindow
from features.settings import get_settings
from features.validation import INT64_LIMIT, TIMEZONE_SUFFIX, context_too_large, is_json_object


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


def parse_events(raw: Sequence[object], max_problems: int = 100,
                 window: TimeWindow | None = None,
                 max_context_bytes: int | None = None) -> ParsedEvents:
    """Split ``raw`` (decoded JSON) into valid events and problems naming index and field.
    Timestamps must lie in ``window`` and contexts within ``max_context_bytes`` (default: the
    settings', now)."""
    window = window or TimeWindow.current()
    max_context_bytes = max_context_bytes or get_settings().max_context_bytes
    problems: list[EventProblem] = []
    events: list[dict] = []
    rejected: list[int] = []
    ids: set[str] = set()
    repeated = 0
    for index, entry in enumerate(raw):
        if not isinstance(entry, dict):
            found = [EventProblem(index, None, _shown(entry), "a JSON object (an event)")]
        else:
            record, found = check_event(entry, index, window, max_context_bytes)
            if not found:
                if record["event_id"] in ids:
                    repeated += 1  # a retry inside the batch: counted once
                    continue
                ids.add(record["event_id"])
                events.append(record)
                continue
        rejected.append(index)
        problems.extend(found[:max(0, max_problems - len(problems))])
    return ParsedEvents(events, problems, rejected, repeated)


def check_event(entry: dict, index: int = 0, window: TimeWindow | None = None,
                max_context_bytes: int | None = None) -> tuple[dict, list[EventProblem]]:
    """One event checked against the event contract, with the same rules as file validation
    (``features.validation``) but per record: a single event costs microseconds, not the fixed
    cost of a DataFrame. A test holds the two to the same verdicts."""
    window = window or TimeWindow.current()
    max_context_bytes = max_context_bytes or get_settings().max_context_bytes
    record: dict = {}
    problems: list[EventProblem] = []
    for name, convert, column, required, plain in _PLAN:
        value = entry.get(name)
        if plain and type(value) is str and (text := value.strip()):  # ids: most values
            record[name] = text
            continue
        if name == EVENTS.extras_column and isinstance(value, dict):
            value = json.dumps(value)  # over HTTP, context may be sent as an object
        if value is None or _missing(value):
            if required:
                problems.append(EventProblem(index, name, None, f"a value ({name} is required)"))
            record[name] = column.default
            continue
        try:
            record[name] = convert(value, column)
        except ValueError as error:
            problems.append(EventProblem(index, name, _text(value), str(error)))
            continue
        outside = column.in_event_window and window.problem(record[name])
        if outside:
            problems.append(EventProblem(index, name, _text(value), outside))
    unknown = entry.keys() - _KNOWN  # usually empty
    extras = {k: entry[k] for k in unknown if entry[k] is not None and entry[k] != ""}
    context = record.get(EVENTS.extras_column)
    if context is not None and not is_json_object(context):
        problems.append(EventProblem(index, EVENTS.extras_column, context,
                                     "a JSON object such as {\"page\": \"home\"}"))
    elif extras:
        merged = {**(json.loads(context) if context else {}), **extras}
        record[EVENTS.extras_column] = json.dumps(merged, default=str)
    context = record.get(EVENTS.extras_column)
    if context is not None and len(context.encode()) > max_context_bytes:
        problems.append(EventProblem(index, EVENTS.extras_column, f"{context[:60]}...",
                                     context_too_large(max_context_bytes,
                                                       len(context.encode()))))
    if not problems:
        moment = record.pop("timestamp")
        record["timestamp"] = moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
        record["at"] = moment.timestamp()
    return record, problems


_KNOWN = set(EVENTS.column_names)
_TIMESTAMP = "a timezone-aware timestamp such as 2024-05-01T12:00:00Z"


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and not value.strip())


def _text(value: object) -> str:
    return value if isinstance(value, str) else str(value)


def _string(value: object, column: Column) -> str:
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ValueError("a string" + (f", one of {', '.join(column.allowed)}" if column.allowed
                                       else ""))
    text = _text(value).strip()
    if column.allowed is not None and text not in column.allowed:
        raise ValueError(f"one of {', '.join(column.allowed)}")
    return text


def _timestamp(value: object, column: Column) -> datetime:
    text = _text(value).strip()
    if not TIMEZONE_SUFFIX.search(text):
        raise ValueError(_TIMESTAMP)
    try:
        moment = datetime.fromisoformat(text)  # fast, and most senders write this form
    except ValueError:
        try:  # the rest of ISO 8601 that the file importer accepts (e.g. nanoseconds)
            moment = pd.Timestamp(text).to_pydatetime()
        except (ValueError, OverflowError):
            raise ValueError(_TIMESTAMP) from None
    if moment is pd.NaT or moment.tzinfo is None:
        raise ValueError(_TIMESTAMP)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # a time zone that moves it past year 1 or 9999
        raise ValueError(_TIMESTAMP) from None


def _number(value: object, column: Column, integer: bool) -> float:
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(kind)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(kind) from None
    if not math.isfinite(number) or (integer and number != math.floor(number)):
        raise ValueError(kind)
    if integer and abs(number) >= INT64_LIMIT:
        raise ValueError(f"{kind} below {INT64_LIMIT:.0e}")
    if column.min_value is not None and number < column.min_value:
        raise ValueError(f"{kind} >= {column.min_value:g}")
    return number


_CONVERT = {
    "string": _string,
    "timestamp": _timestamp,
    "int": lambda value, column: int(_number(value, column, integer=True)),
    "float": lambda value, column: _number(value, column, integer=False),
}


_PLAN = tuple((column.name, _CONVERT[column.type], column,
               not column.nullable and column.default is None,
               column.type == "string" and column.allowed is None) for column in EVENTS.columns)
"""Each column's converter, whether it is required and whether it is a free string (an id),
looked up once rather than per event."""


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


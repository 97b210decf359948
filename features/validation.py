"""Check a table against its contract and turn it into typed columns.

Validation is vectorized (one boolean mask per rule) so that a ten-million-row file is checked
in seconds, and it reports *every* problem up to a limit, each with the file, the row, the
column, the value and what would have been right — the things a person needs to fix the file.

Rows are numbered from 1 for the first data row (the line after a CSV header is row 1).
"""

from __future__ import annotations

import json
import re
import zoneinfo
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import pandas as pd

from features.contracts import LIST_SEPARATOR, Column, TableContract
from features.event_time import TimeWindow
from features.settings import get_settings

TIMEZONE_SUFFIX = re.compile(r"(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$")
INT64_LIMIT = 2.0**63  # whole numbers are stored as int64
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one cell (or, when ``row`` is None, with the whole file)."""

    source: str
    row: int | None
    column: str | None
    value: str | None
    expected: str

    def __str__(self) -> str:
        where = [self.source]
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column '{self.column}'")
        got = "" if self.value is None else f"got {self.value!r}, "
        return f"{', '.join(where)}: {got}expected {self.expected}"


@dataclass
class ValidationReport:
    """What validating one table found. ``bad_rows`` are 0-based positions in the input."""

    table: str
    source: str
    n_rows: int
    problems: list[Problem] = field(default_factory=list)
    n_problems: int = 0
    bad_rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    unknown_columns: list[str] = field(default_factory=list)
    file_level: bool = False

    @property
    def ok(self) -> bool:
        return self.n_problems == 0

    def describe(self) -> str:
        """A human summary: counts first, then each listed problem on its own line."""
        if self.ok:
            lines = [f"{self.source}: {self.n_rows} {self.table} rows, no problems"]
        else:
            lines = [
                f"{self.source}: {self.n_problems} problem(s) in {self.table} "
                f"({len(self.bad_rows)} of {self.n_rows} rows affected)"
            ]
            lines += [f"  {p}" for p in self.problems]
            if self.n_problems > len(self.problems):
                lines.append(f"  ... and {self.n_problems - len(self.problems)} more")
        if self.unknown_columns:
            lines.append(
                f"  note: column(s) not in the contract kept as JSON in "
                f"'{self.table}' extras: {', '.join(self.unknown_columns)}"
            )
        return "\n".join(lines)


class _Collector:
    """Collects problems from masks, listing at most ``limit`` but counting all."""

    def __init__(self, source: str, n_rows: int, limit: int) -> None:
        self.source = source
        self.limit = limit
        self.problems: list[Problem] = []
        self.count = 0
        self.bad = np.zeros(n_rows, dtype=bool)
        self.file_level = False

    def file_problem(self, column: str | None, expected: str) -> None:
        self.count += 1
        self.file_level = True
        if len(self.problems) < self.limit:
            self.problems.append(Problem(self.source, None, column, None, expected))

    def rows(self, mask: np.ndarray, raw: pd.Series, column: str, expected: str) -> None:
        mask = np.asarray(mask, dtype=bool)
        positions = np.flatnonzero(mask)
        if positions.size == 0:
            return
        self.count += int(positions.size)
        self.bad |= mask
        room = self.limit - len(self.problems)
        for position in positions[: max(room, 0)]:
            value = raw.iloc[position]
            shown = None if _is_missing(value) else str(value)
            self.problems.append(Problem(self.source, int(position) + 1, column, shown, expected))


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA or (
        isinstance(value, str) and value == ""
    ) or value is pd.NaT


def _missing_mask(raw: pd.Series) -> np.ndarray:
    mask = raw.isna().to_numpy().copy()
    if raw.dtype == object or pd.api.types.is_string_dtype(raw):
        mask |= (raw.astype("string").str.strip() == "").fillna(False).to_numpy(dtype=bool)
    return mask


def validate_table(
    frame: pd.DataFrame, contract: TableContract, source: str, max_problems: int = 100,
    window: TimeWindow | None = None,
) -> tuple[pd.DataFrame, ValidationReport]:
    """Validate ``frame`` against ``contract`` and return it with contract types.

    The returned frame has exactly the contract's columns, in order, typed; columns the contract
    does not know are folded into its extras column as JSON so nothing is dropped silently. Rows
    with problems are still in it: the caller decides (reject or quarantine) using the report.
    Event times are checked against ``window`` (default: the settings' window, now).
    """
    frame = frame.reset_index(drop=True)
    window = window or TimeWindow.current()
    collector = _Collector(source, len(frame), max_problems)
    known = set(contract.column_names)
    unknown = [c for c in frame.columns if c not in known]
    typed: dict[str, pd.Series] = {}

    for column in contract.columns:
        if column.name not in frame.columns:
            if column.required:
                collector.file_problem(
                    column.name, f"a column named '{column.name}' ({column.description})"
                )
                collector.bad[:] = True
            typed[column.name] = _default_series(column, len(frame))
            continue
        typed[column.name] = _check_column(frame[column.name], column, collector)
        if column.in_event_window:
            _check_window(typed[column.name], frame[column.name], column, window, collector)

    if unknown:
        typed[contract.extras_column] = _fold_extras(
            frame[unknown], typed[contract.extras_column], contract.extras_column, collector
        )
    key = typed[contract.key]
    duplicated = key.duplicated(keep="first").to_numpy() & ~_missing_mask(key)
    collector.rows(duplicated, frame.get(contract.key, key),
                   contract.key, f"a unique {contract.key} (this one appears on an earlier row)")
    _check_table_rules(contract, typed, frame, collector)

    result = pd.DataFrame(typed)[contract.column_names]
    report = ValidationReport(
        table=contract.name,
        source=source,
        n_rows=len(frame),
        problems=sorted(collector.problems, key=lambda p: (p.row or 0)),
        n_problems=collector.count,
        bad_rows=np.flatnonzero(collector.bad),
        unknown_columns=unknown,
        file_level=collector.file_level,
    )
    return result, report


def _default_series(column: Column, n: int) -> pd.Series:
    if column.type == "timestamp":
        return pd.Series(pd.NaT, index=range(n), dtype="datetime64[us, UTC]")
    if column.type == "bool":
        return pd.Series(np.full(n, bool(column.default)), dtype=bool)
    if column.type == "int":
        return pd.Series([column.default] * n, dtype="Int64")
    if column.type == "float":
        value = np.nan if column.default is None else float(column.default)
        return pd.Series(np.full(n, value), dtype="float64")
    return pd.Series([column.default] * n, dtype="string")


def _check_column(raw: pd.Series, column: Column, collector: _Collector) -> pd.Series:
    raw = raw.reset_index(drop=True)
    missing = _missing_mask(raw)
    if not column.nullable and column.default is None:
        collector.rows(missing, raw, column.name, f"a value ({column.name} is required)")
    checker = {
        "string": _as_string,
        "timestamp": _as_timestamp,
        "int": _as_int,
        "float": _as_float,
        "bool": _as_bool,
    }[column.type]
    values = checker(raw, missing, column, collector)
    if column.default is not None and missing.any():
        values = values.copy()
        values[missing] = column.default
    return values


def _as_string(raw: pd.Series, missing: np.ndarray, column: Column, collector: _Collector):
    if raw.dtype == object:  # cells of any Python type (a frame built in memory, or from JSON)
        not_text = raw.map(lambda v: isinstance(v, dict | list | tuple | bool)).to_numpy(bool)
        collector.rows(not_text, raw, column.name, "a string" + (
            f", one of {', '.join(column.allowed)}" if column.allowed else ""))
        missing = missing | not_text
    values = raw.astype("string").str.strip()
    values[missing] = pd.NA
    limit = get_settings().max_cell_bytes
    too_long = _longer_than(values, limit)
    if too_long.any():
        collector.rows(too_long, values.str.slice(0, 60), column.name,
                       f"at most {limit:,} bytes (NEXTBEST_MAX_CELL_BYTES)")
    if column.time_zone:
        bad = ~values.isin(_time_zones()).to_numpy(dtype=bool) & ~missing
        collector.rows(bad, raw, column.name, "an IANA time zone such as Europe/London or "
                       "America/New_York")
    if column.allowed is None:
        return values
    allowed = set(column.allowed)
    expected = f"one of {', '.join(column.allowed)}"
    if column.is_list:
        elements = values.fillna("").str.split(LIST_SEPARATOR)
        bad = elements.map(lambda parts: any(p and p.strip() not in allowed for p in parts))
        collector.rows(bad.to_numpy(dtype=bool) & ~missing, raw, column.name,
                       f"'{LIST_SEPARATOR}'-separated values, each {expected}")
    else:
        bad = ~values.isin(allowed).to_numpy(dtype=bool) & ~missing
        collector.rows(bad, raw, column.name, expected)
    return values


def _as_timestamp(raw: pd.Series, missing: np.ndarray, column: Column, collector: _Collector):
    expected = "a timezone-aware timestamp such as 2024-05-01T12:00:00Z"
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        return raw.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
    if pd.api.types.is_datetime64_dtype(raw):
        collector.file_problem(column.name, f"{expected} (the column has no timezone)")
        collector.bad[:] = True
        return raw.dt.tz_localize("UTC").astype("datetime64[us, UTC]")
    text = raw.astype("string").str.strip()
    parsed = pd.to_datetime(text.where(~missing), format="ISO8601", utc=True, errors="coerce")
    has_zone = text.str.contains(TIMEZONE_SUFFIX, regex=True).fillna(False).to_numpy(dtype=bool)
    unparsed = parsed.isna().to_numpy() & ~missing
    collector.rows(unparsed | (~has_zone & ~missing & ~unparsed), raw, column.name, expected)
    return parsed.astype("datetime64[us, UTC]")


def _check_window(times: pd.Series, raw: pd.Series, column: Column, window: TimeWindow,
                  collector: _Collector) -> None:
    late, early = window.outside(times)
    raw = raw.reset_index(drop=True)
    collector.rows(late, raw, column.name, window.too_late)
    collector.rows(early, raw, column.name, window.too_early)


def _as_number(raw: pd.Series, missing: np.ndarray, column: Column, collector: _Collector,
               integer: bool) -> pd.Series:
    kind = "a whole number" if integer else "a number"
    numbers = pd.to_numeric(raw.where(~missing), errors="coerce").astype("float64")
    values = numbers.to_numpy()
    not_number = np.isnan(values) & ~missing
    if raw.dtype == object:  # true is not 1
        not_number |= raw.map(lambda v: isinstance(v, bool | dict | list)).to_numpy(bool)
    not_number |= np.isinf(values)
    collector.rows(not_number, raw, column.name, kind)
    checked = ~np.isnan(values) & ~not_number
    if integer:
        fractional = checked & (np.floor(values) != values)
        collector.rows(fractional, raw, column.name, kind)
        huge = checked & ~fractional & (np.abs(values) >= INT64_LIMIT)
        collector.rows(huge, raw, column.name, f"{kind} below {INT64_LIMIT:.0e}")
    if column.min_value is not None:
        below = checked & (values < column.min_value)
        collector.rows(below, raw, column.name, f"{kind} >= {column.min_value:g}")
    return numbers


def _as_int(raw, missing, column, collector):
    numbers = _as_number(raw, missing, column, collector, integer=True)
    safe = numbers.where(np.isfinite(numbers) & (numbers == np.floor(numbers))
                         & (numbers.abs() < INT64_LIMIT))
    return safe.astype("Int64")


def _as_float(raw, missing, column, collector):
    numbers = _as_number(raw, missing, column, collector, integer=False)
    return numbers.where(np.isfinite(numbers))


def _as_bool(raw: pd.Series, missing: np.ndarray, column: Column, collector: _Collector):
    if pd.api.types.is_bool_dtype(raw):
        return raw.fillna(bool(column.default)).astype(bool)
    text = raw.astype("string").str.strip().str.lower()
    truthy = text.isin(_TRUE).to_numpy(dtype=bool)
    falsy = text.isin(_FALSE).to_numpy(dtype=bool)
    collector.rows(~truthy & ~falsy & ~missing, raw, column.name, "true or false")
    return pd.Series(truthy, dtype=bool)


def _fold_extras(unknown: pd.DataFrame, existing: pd.Series, name: str,
                 collector: _Collector) -> pd.Series:
    """Merge columns the contract lacks into the JSON extras column, row by row."""
    records = unknown.reset_index(drop=True).astype(object).where(unknown.notna().to_numpy(), None)
    merged: list[str | None] = []
    not_object = np.zeros(len(existing), dtype=bool)
    for position, (row, current) in enumerate(zip(records.to_dict("records"), existing,
                                                  strict=True)):
        payload: dict = {}
        if isinstance(current, str) and current:
            if is_json_object(current):
                payload.update(json.loads(current))
            else:
                not_object[position] = True
        payload.update({k: v for k, v in row.items() if v is not None and v != ""})
        merged.append(json.dumps(payload, default=str) if payload else None)
    collector.rows(not_object, existing, name, "a JSON object such as {\"page\": \"home\"}")
    return pd.Series(merged, dtype="string")


def _check_table_rules(contract: TableContract, typed: dict[str, pd.Series],
                       raw: pd.DataFrame, collector: _Collector) -> None:
    """Rules that span columns: JSON context, offer fields, validity windows."""
    extras = typed[contract.extras_column]
    folded = len(raw.columns.difference(contract.column_names)) > 0
    if contract.extras_column in raw.columns and not folded:
        present = np.flatnonzero(extras.notna().to_numpy())
        not_object = np.zeros(len(extras), dtype=bool)
        not_object[present] = [not is_json_object(s) for s in extras.iloc[present]]
        collector.rows(not_object, raw[contract.extras_column].reset_index(drop=True),
                       contract.extras_column, "a JSON object such as {\"page\": \"home\"}")
    limit = get_settings().max_context_bytes
    too_large = _longer_than(extras, limit)
    if too_large.any():
        collector.rows(too_large, extras.str.slice(0, 60), contract.extras_column,
                       context_too_large(limit))
    if contract.name != "items":
        return
    offers = (typed["kind"] == "offer").fillna(False).to_numpy(dtype=bool)
    no_value = offers & typed["offer_value"].isna().to_numpy()
    collector.rows(no_value, _raw_or_typed(raw, typed, "offer_value"), "offer_value",
                   "a value for every offer (what it is worth to the customer)")
    valid_from, valid_to = typed["valid_from"], typed["valid_to"]
    inverted = (valid_from.notna() & valid_to.notna() & (valid_from > valid_to)).to_numpy()
    collector.rows(inverted, _raw_or_typed(raw, typed, "valid_to"), "valid_to",
                   "a time after valid_from")


def _raw_or_typed(raw: pd.DataFrame, typed: dict[str, pd.Series], name: str) -> pd.Series:
    return raw[name].reset_index(drop=True) if name in raw.columns else typed[name]


def _longer_than(texts: pd.Series, limit: int) -> np.ndarray:
    """Which texts take more than ``limit`` bytes in UTF-8 (missing ones do not). A character
    is 1 to 4 bytes, so only texts of more than ``limit // 4`` characters are encoded to tell."""
    over = np.zeros(len(texts), dtype=bool)
    long = np.flatnonzero((texts.str.len() > limit // 4).fillna(False).to_numpy(dtype=bool))
    over[long] = [len(texts.iloc[i].encode()) > limit for i in long]
    return over


def context_too_large(limit: int, size: int | None = None) -> str:
    """What an event's (or a row's) too large JSON context is told, wherever it comes from."""
    has = f", not {size:,}" if size is not None else ""
    return (f"at most {limit:,} bytes of context (NEXTBEST_MAX_CONTEXT_BYTES){has}: keep large "
            "payloads out of events")


def is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


@cache
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())

"""Read a table file (CSV or Parquet), validate it, and decide what to do with bad rows.

A file with problems is never half-loaded silently: the caller says up front whether such a
file is rejected whole (``on_error="reject"``, the default) or loaded without its bad rows, which
go to a quarantine file next to the warehouse together with the reason each was set aside.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from features.contracts import TableContract
from features.settings import get_settings
from features.validation import ValidationReport, validate_table

OnError = Literal["reject", "quarantine"]


class DataFileError(ValueError):
    """A file that cannot be loaded as asked; the message says where and what to fix."""

    def __init__(self, message: str, report: ValidationReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class LoadedTable:
    """The good rows of a file, typed, with the report and where bad rows went (if anywhere)."""

    frame: pd.DataFrame
    report: ValidationReport
    quarantine_path: Path | None = None


def read_raw(path: Path, max_cell_bytes: int | None = None) -> pd.DataFrame:
    """Read a CSV or Parquet file as it is, keeping CSV cells as text for exact error messages.

    A file that could hold a cell over ``max_cell_bytes`` (default: the settings') is refused
    before it is parsed: a CSV line longer than its header's columns could hold, or a Parquet
    column whose cells average more than that. Parsing a 1 GiB cell had taken 9.5 GB of memory."""
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path}: no such file")
    max_cell_bytes = max_cell_bytes or get_settings().max_cell_bytes
    suffix = path.suffix.lower()
    try:
        if suffix in {".parquet", ".pq"}:
            _check_parquet_cells(path, max_cell_bytes)
            return pd.read_parquet(path)
        if suffix in {".csv", ".txt", ".tsv"}:
            sep = "\t" if suffix == ".tsv" else ","
            _check_csv_lines(path, sep, max_cell_bytes)
            return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except DataFileError:
        raise  # the checks' own message says what is wrong
    except (ValueError, OSError, pd.errors.ParserError) as error:
        raise DataFileError(f"{path}: cannot be read as {suffix[1:]}: {error}") from error
    raise DataFileError(f"{path}: unknown file type '{suffix}'; expected .csv, .tsv or .parquet")


def _check_csv_lines(path: Path, sep: str, max_cell_bytes: int) -> None:
    """Refuse a line longer than the header's columns, each at most ``max_cell_bytes``, could
    make; reads the file in blocks, never a line whole."""
    with open(path, "rb") as handle:
        header = handle.readline(max_cell_bytes * 1024)
        columns = header.count(sep.encode()) + 1
        limit = columns * (max_cell_bytes + 1)
        line, length = 1, 0  # the line being read (1 = the first data line) and its length so far
        while block := handle.read(1 << 20):
            ends = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)
            lengths = np.diff(np.concatenate([[-1], ends]))
            lengths[0] += length
            too_long = np.flatnonzero(lengths > limit)
            if too_long.size:
                _refuse_line(path, line + int(too_long[0]), max_cell_bytes)
            line += ends.size
            length = (len(block) - 1 - int(ends[-1])) if ends.size else length + len(block)
            if length > limit:
                _refuse_line(path, line, max_cell_bytes)


def _refuse_line(path: Path, row: int, max_cell_bytes: int) -> None:
    raise DataFileError(f"{path}, row {row}: the line is longer than its cells could be, each at "
                        f"most {max_cell_bytes:,} bytes (NEXTBEST_MAX_CELL_BYTES); nothing was "
                        "read. Is it the right file, with the right separator?")


def _check_parquet_cells(path: Path, max_cell_bytes: int) -> None:
    metadata = pq.ParquetFile(path).metadata
    for group in range(metadata.num_row_groups):
        rows = max(metadata.row_group(group).num_rows, 1)
        for index in range(metadata.num_columns):
            column = metadata.row_group(group).column(index)
            if column.total_uncompressed_size > rows * max_cell_bytes + 1024:
                raise DataFileError(
                    f"{path}: column '{column.path_in_schema}' holds cells larger than "
                    f"{max_cell_bytes:,} bytes (NEXTBEST_MAX_CELL_BYTES); nothing was read")


def load_table(
    path: Path,
    contract: TableContract,
    on_error: OnError = "reject",
    quarantine_dir: Path | None = None,
    max_problems: int = 100,
) -> LoadedTable:
    """Load ``path`` as ``contract``'s table, rejecting or quarantining bad rows as asked."""
    raw = read_raw(path)
    return check_frame(raw, contract, str(path), on_error, quarantine_dir, max_problems)


def check_frame(
    raw: pd.DataFrame,
    contract: TableContract,
    source: str,
    on_error: OnError = "reject",
    quarantine_dir: Path | None = None,
    max_problems: int = 100,
) -> LoadedTable:
    """Validate an in-memory table the same way a file is validated."""
    if on_error not in ("reject", "quarantine"):
        raise ValueError(f"on_error must be 'reject' or 'quarantine', got {on_error!r}")
    frame, report = validate_table(raw, contract, source, max_problems)
    if report.ok:
        return LoadedTable(frame, report)
    if on_error == "reject" or report.file_level:
        hint = "" if report.file_level else " (or load it with on_error='quarantine')"
        raise DataFileError(f"rejected{hint}: {report.describe()}", report)
    if quarantine_dir is None:
        raise ValueError("on_error='quarantine' needs a quarantine_dir to write bad rows to")
    bad = raw.iloc[report.bad_rows].copy()
    bad.insert(0, "_row", report.bad_rows + 1)
    bad["_problems"] = _problems_by_row(report, bad["_row"])
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    target = quarantine_dir / f"{contract.name}-{Path(source).stem}-{stamp}.csv"
    bad.to_csv(target, index=False)
    good = frame.drop(index=report.bad_rows).reset_index(drop=True)
    return LoadedTable(good, report, target)


def _problems_by_row(report: ValidationReport, rows: pd.Series) -> list[str]:
    listed: dict[int, list[str]] = {}
    for problem in report.problems:
        if problem.row is not None:
            listed.setdefault(problem.row, []).append(f"{problem.column}: expected {problem.expected}")
    unlisted = "not listed (over the report limit); run 'nextbest data validate' for details"
    return ["; ".join(listed.get(int(row), [unlisted])) for row in rows]

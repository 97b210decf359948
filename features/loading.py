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

import pandas as pd

from features.contracts import TableContract
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


def read_raw(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file as it is, keeping CSV cells as text for exact error messages."""
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in {".parquet", ".pq"}:
            return pd.read_parquet(path)
        if suffix in {".csv", ".txt", ".tsv"}:
            sep = "\t" if suffix == ".tsv" else ","
            return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (ValueError, OSError, pd.errors.ParserError) as error:
        raise DataFileError(f"{path}: cannot be read as {suffix[1:]}: {error}") from error
    raise DataFileError(f"{path}: unknown file type '{suffix}'; expected .csv, .tsv or .parquet")


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

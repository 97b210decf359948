"""Turn public data sets and a shop's own transaction exports into contract tables.

Every importer returns an :class:`ImportBatch`: events, the items and customers they mention,
and a report of what was kept, what was skipped and why. Event ids are derived from the source
(file row, invoice line) so that importing the same file twice stores nothing new.

* MovieLens (``u.data`` or ``ratings.csv``): a rating means the customer watched the movie, so
  each rating becomes a ``purchase`` event; the stars are kept in ``context.rating``.
* CDNOW (``CDNOW_master.txt``): each transaction line becomes a ``purchase`` of the shop's one
  generic item (the data set has no product ids); quantity is the number of CDs, price the
  average CD price of the line.
* A generic transaction table (invoice lines, CSV or Parquet) with a column mapping, and
  explicit rules for cancellations and returns (netted against the purchases they reverse),
  codes that are not products, and rows without a customer.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field, ValidationError, field_validator

from features.contracts import CUSTOMERS, EVENTS, ITEMS, TableContract
from features.event_time import TimeWindow
from features.loading import DataFileError, read_raw
from features.validation import validate_table


@dataclass
class ImportBatch:
    """Contract tables built from one source, and counts of what happened to its rows."""

    source: str
    events: pd.DataFrame
    items: pd.DataFrame
    customers: pd.DataFrame
    rows_read: int = 0
    skipped: Counter = field(default_factory=Counter)
    samples: dict[str, list[str]] = field(default_factory=dict)
    """Up to three values of the column that failed, per skip reason."""
    notes: list[str] = field(default_factory=list)

    @property
    def skipped_share(self) -> float:
        return sum(self.skipped.values()) / self.rows_read if self.rows_read else 0.0

    def describe(self) -> str:
        lines = [f"{self.source}: read {self.rows_read} rows -> {len(self.events)} events, "
                 f"{len(self.items)} items, {len(self.customers)} customers", *self.notes]
        for reason, count in sorted(self.skipped.items()):
            lines.append(_skip_line(reason, count, self.samples.get(reason, [])))
        return "\n".join(lines)


def _typed(frame: pd.DataFrame, contract: TableContract, source: str) -> pd.DataFrame:
    """Conform importer output to the contract; a problem here is a bug in the mapping."""
    typed, report = validate_table(frame, contract, source)
    if not report.ok:
        raise DataFileError(report.describe(), report)
    return typed


def _customers_from(events: pd.DataFrame, source: str) -> pd.DataFrame:
    first = events.groupby("customer_id", sort=True)["timestamp"].min().reset_index()
    first.columns = ["customer_id", "first_seen"]
    return _typed(first, CUSTOMERS, f"{source} customers")


# ---------------------------------------------------------------------------- MovieLens
def import_movielens(path: Path) -> ImportBatch:
    """MovieLens ratings, from ``u.data`` (100K) or ``ratings.csv`` (later releases)."""
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path}: no such file")
    if path.suffix == ".csv":
        raw = pd.read_csv(path)
        needed = {"userId", "movieId", "rating", "timestamp"}
        _require_columns(raw, needed, path)
        raw = raw.rename(columns={"userId": "user", "movieId": "item"})
    else:
        raw = pd.read_csv(path, sep="\t", header=None, names=["user", "item", "rating", "timestamp"])
        if raw[["user", "item", "timestamp"]].isna().any().any():
            raise DataFileError(f"{path}: expected 4 tab-separated columns "
                                "(user id, item id, rating, unix time) on every line")
    events = pd.DataFrame({
        "event_id": "ml-" + raw["user"].astype(str) + "-" + raw["item"].astype(str),
        "customer_id": "u" + raw["user"].astype(str),
        "item_id": "m" + raw["item"].astype(str),
        "event_type": "purchase",
        "timestamp": pd.to_datetime(raw["timestamp"].astype("int64"), unit="s", utc=True),
        "channel": "web",
        "quantity": 1,
        "context": [f'{{"rating": {_number(r)}}}' for r in raw["rating"]],
    })
    items = _movielens_items(path, events["item_id"].unique())
    return ImportBatch(
        source=str(path),
        events=_typed(events, EVENTS, str(path)),
        items=_typed(items, ITEMS, f"{path} items"),
        customers=_customers_from(events, str(path)),
        rows_read=len(raw),
    )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(float(value))


def _movielens_items(path: Path, item_ids: np.ndarray) -> pd.DataFrame:
    """Titles and genres from ``u.item`` or ``movies.csv`` beside the ratings, when present."""
    catalog = pd.DataFrame({"item_id": sorted(item_ids)})
    u_item, movies = path.parent / "u.item", path.parent / "movies.csv"
    genres_file = path.parent / "u.genre"
    if u_item.exists() and genres_file.exists():
        genre_names = [g.split("|")[0] for g in genres_file.read_text(
            encoding="latin-1").splitlines() if g.strip()]
        raw = pd.read_csv(u_item, sep="|", header=None, encoding="latin-1")
        flags = raw.iloc[:, 5:5 + len(genre_names)].to_numpy(dtype=bool)
        genres = ["|".join(g for g, f in zip(genre_names, row, strict=True) if f) for row in flags]
        known = pd.DataFrame({"item_id": "m" + raw[0].astype(str), "title": raw[1].astype(str),
                              "genres": genres})
    elif movies.exists():
        raw = pd.read_csv(movies)
        known = pd.DataFrame({"item_id": "m" + raw["movieId"].astype(str),
                              "title": raw["title"], "genres": raw["genres"]})
    else:
        known = pd.DataFrame(columns=["item_id", "title", "genres"])
    catalog = catalog.merge(known, on="item_id", how="left")
    catalog["title"] = catalog["title"].fillna(catalog["item_id"])
    first_genre = catalog["genres"].fillna("unknown").str.split("|").str[0]
    catalog["category"] = "movies/" + first_genre.str.lower().str.replace(" ", "-")
    catalog["description"] = catalog["title"] + " (" + catalog["genres"].fillna("") + ")"
    catalog["kind"] = "product"
    catalog["repeatable"] = False
    return catalog.drop(columns=["genres"])


# ---------------------------------------------------------------------------- CDNOW
CDNOW_ITEM = "cdnow-cd"


def import_cdnow(path: Path) -> ImportBatch:
    """CDNOW transactions (``CDNOW_master.txt``: customer_id, date, number_of_cds, dollar_value)."""
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path}: no such file")
    raw = pd.read_csv(path, sep=r"\s+", dtype={"customer_id": str, "date": str})
    _require_columns(raw, {"customer_id", "date", "number_of_cds", "dollar_value"}, path)
    skipped: Counter = Counter()
    keep = raw["number_of_cds"] > 0
    skipped["no CDs on the line (number_of_cds <= 0)"] = int((~keep).sum())
    raw = raw[keep]
    row_number = raw.index.to_numpy() + 1
    events = pd.DataFrame({
        "event_id": [f"cdnow-{n}" for n in row_number],
        "customer_id": "cd" + raw["customer_id"].str.lstrip("0"),
        "item_id": CDNOW_ITEM,
        "event_type": "purchase",
        "timestamp": pd.to_datetime(raw["date"], format="%Y%m%d", utc=True),
        "channel": "web",
        "quantity": raw["number_of_cds"].astype("int64"),
        "price": (raw["dollar_value"] / raw["number_of_cds"]).round(4),
    })
    items = pd.DataFrame({"item_id": [CDNOW_ITEM], "kind": "product", "title": "CD",
                          "category": "music/cds", "repeatable": True})
    return ImportBatch(str(path), _typed(events, EVENTS, str(path)), _typed(items, ITEMS, "cdnow"),
                       _customers_from(events, str(path)), len(keep), +skipped)


# ---------------------------------------------------------------------------- transactions
NO_TEXT = frozenset({"", "nan", "none", "null", "n/a"})
"""Cell texts that mean "nothing here" in exported spreadsheets (compared in lower case)."""


class TransactionMapping(BaseModel):
    """Which source column holds what, and the rules for rows that are not plain sales.

    Load it from a TOML file (``[mapping]`` keys named like these fields) or build it from
    ``--map field=Column`` options.
    """

    invoice: str = Field(description="Invoice / order number column.")
    item: str = Field(description="Product code column.")
    quantity: str = Field(description="Units column; negative means a return.")
    timestamp: str = Field(description="Invoice date-time column.")
    price: str = Field(description="Unit price column.")
    customer: str = Field(description="Customer id column.")
    description: str | None = Field(None, description="Product description column.")
    country: str | None = Field(None, description="Customer country/region column.")
    timestamp_format: str | None = Field(
        None, description="strftime format of the dates, e.g. '%d/%m/%Y %H:%M'; ISO if unset.")
    timezone: str = Field("UTC", description="Timezone of dates that carry none.")
    cancelled_prefix: str | None = Field(
        "C", description="Invoices starting with this are cancellations.")
    returns: Literal["net", "skip"] = Field(
        "net", description="Cancellation and return lines (an invoice with the cancelled prefix, "
        "or a negative quantity): 'net' takes their units off the customer's latest earlier "
        "purchases of the item; 'skip' leaves those purchases as they are. Either way the lines "
        "themselves are not purchases.")
    exclude_items: list[str] = Field(
        default_factory=list, description="Regular expressions of item codes that are not products "
        "(postage, fees, manual adjustments), matched against the whole code, e.g. "
        "['POST', 'DOT', 'M', 'BANK CHARGES']; their rows are skipped and counted.")
    channel: str = Field("web", description="Channel to record the purchases under.")

    @field_validator("exclude_items")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"{pattern!r} is not a regular expression ({error})") from None
        return value

    @classmethod
    def from_file(cls, path: Path) -> TransactionMapping:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise DataFileError(f"{path}: cannot read the mapping: {error}") from error
        return cls.parse(data.get("mapping", data), str(path))

    @classmethod
    def parse(cls, values: dict, source: str = "mapping") -> TransactionMapping:
        try:
            return cls(**values)
        except ValidationError as error:
            problems = "; ".join(f"'{'.'.join(map(str, e['loc']))}': {e['msg']}"
                                 for e in error.errors())
            raise DataFileError(f"{source}: {problems}") from None


def import_transactions(path: Path, mapping: TransactionMapping,
                        window: TimeWindow | None = None) -> ImportBatch:
    """Invoice lines → purchase events, with items and customers found in them.

    Every row is a sale, a cancellation or return (netted against the purchases it reverses,
    or skipped, as the mapping says), or skipped for the first rule it breaks; the report
    counts each and shows examples of the values that failed. A file with no importable sale is
    an error, not an empty import."""
    raw = read_raw(Path(path))
    source = str(path)
    needed = {getattr(mapping, f) for f in ("invoice", "item", "quantity", "timestamp", "price",
                                            "customer")}
    needed |= {c for c in (mapping.description, mapping.country) if c}
    _require_columns(raw, needed, path)
    frame = raw.reset_index(drop=True).astype({c: "string" for c in needed})
    when = _parse_times(frame[mapping.timestamp], mapping)
    quantity = pd.to_numeric(frame[mapping.quantity], errors="coerce")
    sales, reversals, skipped = _apply_rules(frame, when, quantity, mapping,
                                             window or TimeWindow.current())
    notes: list[str] = []
    quantity = quantity.abs()
    if len(reversals):
        quantity, netted = _net_reversals(frame, when, quantity, sales, reversals, mapping)
        if netted.unmatched < len(reversals):
            notes.append(netted.describe())
        if netted.unmatched:
            skipped.add("cancellation or return with no earlier purchase of the item by the "
                        "customer", reversals[netted.unmatched_rows], frame[mapping.invoice])
        sales = sales[quantity[sales].to_numpy() > 0]
    if not len(sales):
        raise DataFileError(f"{path}: none of its {len(raw)} rows is a sale that can be imported\n"
                            + skipped.describe())
    rows = frame.loc[sales]
    invoice = rows[mapping.invoice].str.strip()
    item = rows[mapping.item].str.strip()
    customer = _customer_ids(rows[mapping.customer])
    line = rows.groupby([invoice, item], sort=False).cumcount()
    events = pd.DataFrame({
        "event_id": "tx-" + invoice + "-" + item + "-" + line.astype(str),
        "customer_id": customer,
        "item_id": item,
        "event_type": "purchase",
        "timestamp": when[sales],
        "channel": mapping.channel,
        "session_id": "inv-" + invoice,
        "quantity": quantity[sales].astype("int64"),
        "price": pd.to_numeric(rows[mapping.price]),
    })
    items = _items_from_transactions(events, rows, mapping)
    customers = _customers_from(events, source)
    if mapping.country:
        region = rows.groupby(customer)[mapping.country].agg(lambda s: s.mode().iat[0])
        customers["region"] = customers["customer_id"].map(region)
    return ImportBatch(source, _typed(events, EVENTS, source), _typed(items, ITEMS, source),
                       customers, len(raw), skipped.counts, skipped.samples, notes)


class _Skips:
    """Rows set aside, by reason, with up to three example values of the column that failed."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.samples: dict[str, list[str]] = {}

    def add(self, reason: str, rows: pd.Index, values: pd.Series) -> None:
        if not len(rows):
            return
        self.counts[reason] += len(rows)
        shown = values.loc[rows].astype("string").fillna("").str.strip()
        self.samples.setdefault(reason, shown[shown != ""].drop_duplicates().head(3).tolist())

    def describe(self) -> str:
        return "\n".join(_skip_line(reason, count, self.samples.get(reason, []))
                         for reason, count in sorted(self.counts.items()))


def _skip_line(reason: str, count: int, samples: list[str]) -> str:
    examples = f" (e.g. {', '.join(repr(v) for v in samples)})" if samples else ""
    return f"  skipped {count} row(s): {reason}{examples}"


def _apply_rules(frame: pd.DataFrame, when: pd.Series, quantity: pd.Series,
                 mapping: TransactionMapping, window: TimeWindow
                 ) -> tuple[pd.Index, pd.Index, _Skips]:
    """Sales and reversals (cancellations, returns); every other row is skipped for the first
    rule it breaks, and counted with examples."""
    m = mapping
    invoice = frame[m.invoice].str.strip().fillna("")
    item = frame[m.item].fillna("").str.strip()
    price = pd.to_numeric(frame[m.price], errors="coerce")
    late, early = window.outside(when)
    date_format = f" in format {m.timestamp_format}" if m.timestamp_format else ""
    excluded = pd.Series(False, index=frame.index)
    for pattern in m.exclude_items:
        excluded |= item.str.fullmatch(pattern).fillna(False)
    cancelled = (invoice.str.startswith(m.cancelled_prefix) if m.cancelled_prefix
                 else pd.Series(False, index=frame.index))
    reversal = cancelled | (quantity < 0).fillna(False)
    rules: list[tuple[pd.Series, str, str]] = [
        (excluded, "not a product (item code matches exclude_items)", m.item),
        (frame[m.customer].fillna("").str.strip().str.lower().isin(NO_TEXT),
         f"no customer ('{m.customer}' empty)", m.customer),
        (quantity.isna(), f"'{m.quantity}' is not a number", m.quantity),
        (quantity == 0, "zero quantity", m.quantity),
        (price.isna() | (price < 0), f"'{m.price}' is missing or negative", m.price),
        (when.isna(), f"'{m.timestamp}' is not a date{date_format}", m.timestamp),
        (pd.Series(late, index=frame.index), f"'{m.timestamp}' is {window.too_late}", m.timestamp),
        (pd.Series(early, index=frame.index), f"'{m.timestamp}' is {window.too_early}",
         m.timestamp),
    ]
    if m.returns == "skip":
        rules += [(cancelled, f"cancelled invoice (number starts with '{m.cancelled_prefix}')",
                   m.invoice),
                  (quantity < 0, "return (negative quantity)", m.quantity)]
    skipped = _Skips()
    remaining = pd.Series(True, index=frame.index)
    for mask, reason, column in rules:
        hit = remaining & mask.fillna(False).astype(bool)
        skipped.add(reason, frame.index[hit.to_numpy()], frame[column])
        remaining &= ~hit
    return (frame.index[(remaining & ~reversal).to_numpy()],
            frame.index[(remaining & reversal).to_numpy()], skipped)


@dataclass(frozen=True)
class _Netting:
    reversal_lines: int
    removed: int
    reduced: int
    unmatched_rows: np.ndarray
    """Positions, within the reversals, of lines with units left over: no earlier purchase."""

    @property
    def unmatched(self) -> int:
        return int(self.unmatched_rows.size)

    def describe(self) -> str:
        return (f"  netted {self.reversal_lines - self.unmatched} cancellation or return line(s) "
                f"against earlier purchases: {self.removed} purchase line(s) removed, "
                f"{self.reduced} reduced")


def _net_reversals(frame: pd.DataFrame, when: pd.Series, quantity: pd.Series, sales: pd.Index,
                   reversals: pd.Index, mapping: TransactionMapping
                   ) -> tuple[pd.Series, _Netting]:
    """Take each reversal's units off the same customer's latest purchases of the item made at
    or before it (last in, first out); return every row's quantity after netting."""
    keys = (_customer_ids(frame[mapping.customer]) + "\x1f"
            + frame[mapping.item].str.strip()).to_numpy(dtype=object)
    times = when.astype("datetime64[us, UTC]").array.asi8
    units = quantity.to_numpy(dtype=float).copy()
    reversing = set(keys[reversals])
    candidates = sales[[k in reversing for k in keys[sales]]]
    bought: dict[str, list[int]] = {}
    for row in candidates[np.argsort(times[candidates], kind="stable")]:
        bought.setdefault(keys[row], []).append(row)
    unmatched, touched = [], set()
    for position in np.argsort(times[reversals], kind="stable"):
        row = reversals[position]
        left = units[row]
        for sale in reversed(bought.get(keys[row], [])):
            if left <= 0:
                break
            if times[sale] > times[row] or units[sale] <= 0:
                continue
            taken = min(left, units[sale])
            units[sale] -= taken
            left -= taken
            touched.add(sale)
        if left > 0:
            unmatched.append(position)
    removed = sum(1 for sale in touched if units[sale] <= 0)
    return (pd.Series(units, index=quantity.index),
            _Netting(len(reversals), removed, len(touched) - removed,
                     np.array(sorted(unmatched), dtype=np.int64)))


def _customer_ids(values: pd.Series) -> pd.Series:
    """Customer ids as text; spreadsheets turn 17850 into 17850.0."""
    return values.str.strip().str.replace(r"\.0$", "", regex=True)


def _parse_times(text: pd.Series, mapping: TransactionMapping) -> pd.Series:
    parsed = pd.to_datetime(text, format=mapping.timestamp_format or "ISO8601", errors="coerce")
    if getattr(parsed.dt, "tz", None) is None:
        parsed = parsed.dt.tz_localize(mapping.timezone, ambiguous="NaT", nonexistent="NaT")
    return parsed.dt.tz_convert("UTC")


def _items_from_transactions(events: pd.DataFrame, rows: pd.DataFrame,
                             mapping: TransactionMapping) -> pd.DataFrame:
    """Products seen only in transactions: their commonest description (the item code when it
    has none) and median price."""
    grouped = events.groupby("item_id", sort=True)
    items = pd.DataFrame({"price": grouped["price"].median()})
    if mapping.description:
        described = rows[mapping.description].fillna("").str.strip()
        described = described.where(~described.str.lower().isin(NO_TEXT), "")
        text = described.groupby(events["item_id"].to_numpy()).agg(
            lambda s: s[s != ""].mode().iat[0] if (s != "").any() else "")
        items["title"] = text.reindex(items.index)
    else:
        items["title"] = items.index
    items["title"] = items["title"].where(items["title"].fillna("") != "", items.index.to_series())
    items["description"] = items["title"]
    items["kind"] = "product"
    items["attributes"] = json.dumps({"source": "transactions"})
    return items.reset_index(names="item_id")


def _require_columns(raw: pd.DataFrame, needed: set[str], path: Path) -> None:
    missing = sorted(needed - set(raw.columns))
    if missing:
        raise DataFileError(
            f"{path}: missing column(s) {', '.join(repr(m) for m in missing)}; "
            f"the file has: {', '.join(map(str, raw.columns))}"
        )

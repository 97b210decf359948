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
  explicit rules for cancellations, returns and rows without a customer.
"""

from __future__ import annotations

import json
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field, ValidationError

from features.contracts import CUSTOMERS, EVENTS, ITEMS, TableContract
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

    def describe(self) -> str:
        lines = [f"{self.source}: read {self.rows_read} rows -> {len(self.events)} events, "
                 f"{len(self.items)} items, {len(self.customers)} customers"]
        for reason, count in sorted(self.skipped.items()):
            lines.append(f"  skipped {count} row(s): {reason}")
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
        "C", description="Invoices starting with this are cancellations (skipped).")
    returns: str = Field("skip", pattern="^(skip)$",
                         description="What to do with negative quantities: 'skip' (reported).")
    channel: str = Field("web", description="Channel to record the purchases under.")

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


def import_transactions(path: Path, mapping: TransactionMapping) -> ImportBatch:
    """Invoice lines → purchase events, with items and customers found in them."""
    raw = read_raw(Path(path))
    source = str(path)
    needed = {getattr(mapping, f) for f in ("invoice", "item", "quantity", "timestamp", "price",
                                            "customer")}
    needed |= {c for c in (mapping.description, mapping.country) if c}
    _require_columns(raw, needed, path)
    frame = raw.astype({c: "string" for c in needed})
    frame, skipped = _apply_rules(frame, mapping)
    when = _parse_times(frame[mapping.timestamp], mapping)

    invoice = frame[mapping.invoice].str.strip()
    item = frame[mapping.item].str.strip()
    customer = frame[mapping.customer].str.strip().str.replace(r"\.0$", "", regex=True)
    line = frame.groupby([invoice, item], sort=False).cumcount()
    events = pd.DataFrame({
        "event_id": "tx-" + invoice + "-" + item + "-" + line.astype(str),
        "customer_id": customer,
        "item_id": item,
        "event_type": "purchase",
        "timestamp": when,
        "channel": mapping.channel,
        "session_id": "inv-" + invoice,
        "quantity": pd.to_numeric(frame[mapping.quantity]).astype("int64"),
        "price": pd.to_numeric(frame[mapping.price]),
    })
    items = _items_from_transactions(events, frame, mapping)
    customers = _customers_from(events, source)
    if mapping.country:
        region = frame.groupby(customer)[mapping.country].agg(lambda s: s.mode().iat[0])
        customers["region"] = customers["customer_id"].map(region)
    return ImportBatch(source, _typed(events, EVENTS, source), _typed(items, ITEMS, source),
                       customers, len(raw), skipped)


def _apply_rules(frame: pd.DataFrame, mapping: TransactionMapping) -> tuple[pd.DataFrame, Counter]:
    """Keep plain sales; every other row is skipped for the first rule it meets, and counted."""
    invoice = frame[mapping.invoice].str.strip().fillna("")
    quantity = pd.to_numeric(frame[mapping.quantity], errors="coerce")
    price = pd.to_numeric(frame[mapping.price], errors="coerce")
    when = _parse_times(frame[mapping.timestamp], mapping)
    date_format = f" in format {mapping.timestamp_format}" if mapping.timestamp_format else ""
    rules = [
        (invoice.str.startswith(mapping.cancelled_prefix) if mapping.cancelled_prefix
         else pd.Series(False, index=frame.index),
         f"cancelled invoice (number starts with '{mapping.cancelled_prefix}')"),
        (frame[mapping.customer].fillna("").str.strip().isin(["", "nan", "NaN"]),
         f"no customer ('{mapping.customer}' empty)"),
        (quantity.isna(), f"'{mapping.quantity}' is not a number"),
        (quantity < 0, "return (negative quantity)"),
        (quantity == 0, "zero quantity"),
        (price.isna() | (price < 0), f"'{mapping.price}' is missing or negative"),
        (when.isna(), f"'{mapping.timestamp}' is not a date{date_format}"),
    ]
    reason = pd.Series(pd.NA, index=frame.index, dtype="string")
    for mask, text in rules:
        reason = reason.mask(reason.isna() & mask.fillna(False).astype(bool), text)
    return frame[reason.isna().to_numpy()], Counter(reason.dropna().tolist())


def _parse_times(text: pd.Series, mapping: TransactionMapping) -> pd.Series:
    parsed = pd.to_datetime(text, format=mapping.timestamp_format or "ISO8601", errors="coerce")
    if getattr(parsed.dt, "tz", None) is None:
        parsed = parsed.dt.tz_localize(mapping.timezone, ambiguous="NaT", nonexistent="NaT")
    return parsed.dt.tz_convert("UTC")


def _items_from_transactions(events: pd.DataFrame, frame: pd.DataFrame,
                             mapping: TransactionMapping) -> pd.DataFrame:
    """Products seen only in transactions: their commonest description and median price."""
    grouped = events.groupby("item_id", sort=True)
    items = pd.DataFrame({"price": grouped["price"].median()})
    if mapping.description:
        described = frame[mapping.description].str.strip().fillna("")
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

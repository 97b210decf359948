"""``nextbest data ...`` and ``nextbest features ...``: the data commands people run.

Every command takes ``--data-dir`` (default from ``NEXTBEST_DATA_DIR`` or ``./.nextbest``),
shows progress on long work, and turns a bad input into one clear message and exit code 2.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from features.contracts import CONTRACTS, contract_for
from features.importers import (
    ImportBatch,
    TransactionMapping,
    import_cdnow,
    import_movielens,
    import_transactions,
)
from features.loading import DataFileError, load_table
from features.point_in_time import build_feature_table, compute_item_features
from features.settings import get_settings
from features.synthetic import ShopConfig, generate_shop, store_shop
from features.warehouse import Warehouse

console = Console()
errors = Console(stderr=True, soft_wrap=True)

data_app = typer.Typer(help="Generate, import, validate and summarize shop data.",
                       no_args_is_help=True)
features_app = typer.Typer(help="Build point-in-time feature tables.", no_args_is_help=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Warehouse directory [default: $NEXTBEST_DATA_DIR or .nextbest]"),
]


class TableName(StrEnum):
    events = "events"
    items = "items"
    customers = "customers"


class OnErrorChoice(StrEnum):
    reject = "reject"
    quarantine = "quarantine"


def friendly_errors(command: Callable) -> Callable:
    """Print a data or argument problem as one clear message with exit code 2, not a trace."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (DataFileError, ValueError, FileNotFoundError) as error:
            errors.print(f"[bold red]error:[/] {error}", markup=True, highlight=False)
            raise typer.Exit(code=2) from None

    return wrapper


def warehouse_at(data_dir: Path | None) -> Warehouse:
    root = data_dir or get_settings().data_dir
    return Warehouse(root / "warehouse")


def progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                    console=console, transient=False)


# ---------------------------------------------------------------------------- data generate
@data_app.command("generate")
@friendly_errors
def generate(
    events: Annotated[int | None, typer.Option(
        min=100, help="Aim for about this many events (sizes customers and catalog).")] = None,
    customers: Annotated[int | None, typer.Option(
        min=1, help="Number of customers (instead of --events).")] = None,
    days: Annotated[int, typer.Option(min=7, help="Days of history.")] = 180,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same shop.")] = 42,
    data_dir: DataDir = None,
) -> None:
    """Generate a synthetic shop (customers, catalog, events) into the warehouse."""
    if events is not None and customers is not None:
        raise ValueError("give --events or --customers, not both")
    if customers is not None:
        config = ShopConfig(n_customers=customers, days=days, seed=seed)
    else:
        config = ShopConfig.for_events(events or 200_000, seed=seed, days=days)
    warehouse = warehouse_at(data_dir)
    with progress() as bar:
        task = bar.add_task("generating shop", total=2)
        shop = generate_shop(config)
        bar.update(task, advance=1, description="writing warehouse")
        store_shop(warehouse, shop)
        bar.update(task, advance=1, description="done")
    console.print(f"generated {len(shop.events):,} events, {len(shop.customers):,} customers, "
                  f"{len(shop.items):,} items into {warehouse.root}")


# ---------------------------------------------------------------------------- data import
import_app = typer.Typer(help="Import contract files, public data sets or transaction exports.",
                         no_args_is_help=True)
data_app.add_typer(import_app, name="import")


def _store(warehouse: Warehouse, batch: ImportBatch) -> None:
    items = warehouse.upsert("items", batch.items)
    people = warehouse.upsert("customers", batch.customers)
    events = warehouse.append_events(batch.events)
    console.print(batch.describe())
    console.print(f"stored: {events.added:,} new events ({events.existing:,} already there), "
                  f"{items.added:,} new items, {people.added:,} new customers")


for _table in CONTRACTS:
    def _import_contract_file(
        file: Annotated[Path, typer.Argument(help="CSV, TSV or Parquet file with contract columns.")],
        on_error: Annotated[OnErrorChoice, typer.Option(
            help="reject: load nothing if any row is bad; quarantine: load the good rows and "
                 "write the bad ones, with reasons, to <data-dir>/warehouse/quarantine/.")
        ] = OnErrorChoice.reject,
        data_dir: DataDir = None,
        _table: str = _table,
    ) -> None:
        warehouse = warehouse_at(data_dir)
        result = warehouse.import_file(file, _table, on_error.value,
                                       get_settings().max_reported_errors)
        if result.report is not None and not result.report.ok:
            errors.print(result.report.describe(), highlight=False)
            errors.print(f"quarantined {len(result.report.bad_rows)} row(s) to "
                         f"{result.quarantine_path}", highlight=False)
        elif result.report is not None and result.report.unknown_columns:
            console.print(result.report.describe(), highlight=False)
        console.print(f"{_table}: {result.added:,} new, {result.existing:,} already stored")

    _import_contract_file.__doc__ = f"Import {_table} in the contract format (see docs/data.md)."
    import_app.command(_table)(friendly_errors(_import_contract_file))


@import_app.command("movielens")
@friendly_errors
def import_movielens_command(
    file: Annotated[Path, typer.Argument(help="u.data (MovieLens 100K) or ratings.csv.")],
    data_dir: DataDir = None,
) -> None:
    """Import MovieLens ratings as purchases (titles and genres from u.item when beside it)."""
    _store(warehouse_at(data_dir), import_movielens(file))


@import_app.command("cdnow")
@friendly_errors
def import_cdnow_command(
    file: Annotated[Path, typer.Argument(help="CDNOW_master.txt")],
    data_dir: DataDir = None,
) -> None:
    """Import the CDNOW purchase history (one generic CD item; quantity = CDs bought)."""
    _store(warehouse_at(data_dir), import_cdnow(file))


@import_app.command("transactions")
@friendly_errors
def import_transactions_command(
    file: Annotated[Path, typer.Argument(help="Invoice-lines table, CSV or Parquet.")],
    mapping: Annotated[Path | None, typer.Option(
        help="TOML file with a [mapping] table: invoice, item, quantity, timestamp, price, "
             "customer, and optionally description, country, timestamp_format, timezone, "
             "cancelled_prefix, channel.")] = None,
    map_: Annotated[list[str] | None, typer.Option(
        "--map", help="field=Column, repeatable; overrides the mapping file. "
                      "E.g. --map invoice=InvoiceNo --map item=StockCode")] = None,
    data_dir: DataDir = None,
) -> None:
    """Import a shop's transaction export. Cancellations, returns and rows without a customer
    are skipped by explicit rules, and counted in the report."""
    values: dict[str, str] = {}
    if mapping is not None:
        values.update(TransactionMapping.from_file(mapping).model_dump(exclude_none=True))
    for pair in map_ or []:
        field, sep, column = pair.partition("=")
        if not sep or not field or not column:
            raise ValueError(f"--map {pair!r}: expected field=Column, e.g. --map item=StockCode")
        values[field.strip()] = column.strip()
    _store(warehouse_at(data_dir), import_transactions(file, TransactionMapping.parse(values)))


# ---------------------------------------------------------------------------- validate, summary
@data_app.command("validate")
@friendly_errors
def validate(
    file: Annotated[Path, typer.Argument(help="CSV, TSV or Parquet file.")],
    table: Annotated[TableName, typer.Option(help="Which contract to check it against.")],
    max_errors: Annotated[int, typer.Option(min=1, help="List at most this many problems.")] = 100,
) -> None:
    """Check a file against a table contract without storing anything; exit 1 if it has problems."""
    try:
        loaded = load_table(file, contract_for(table.value), "reject", max_problems=max_errors)
    except DataFileError as error:
        if error.report is None:
            raise
        errors.print(error.report.describe(), highlight=False)
        raise typer.Exit(code=1) from None
    console.print(loaded.report.describe(), highlight=False)


@data_app.command("summary")
@friendly_errors
def summary(data_dir: DataDir = None) -> None:
    """Print what the warehouse holds: sizes, period, funnel, channels, categories."""
    warehouse = warehouse_at(data_dir)
    counts = warehouse.counts()
    if counts["events"] == 0:
        raise ValueError(f"the warehouse at {warehouse.root} is empty; run 'nextbest data "
                         "generate' or 'nextbest data import ...' first")
    for table in summary_tables(warehouse, counts):
        console.print(table)


def summary_tables(warehouse: Warehouse, counts: dict[str, int]) -> list[Table]:
    period = warehouse.query(
        "select min(timestamp) as first, max(timestamp) as last, "
        "count(distinct customer_id) as active from events").iloc[0]
    sizes = Table(title=f"warehouse {warehouse.root}")
    for column in ("table", "rows"):
        sizes.add_column(column)
    for name, n in counts.items():
        sizes.add_row(name, f"{n:,}")
    sizes.add_row("active customers", f"{int(period['active']):,}")
    sizes.add_row("period", f"{period['first']:%Y-%m-%d} .. {period['last']:%Y-%m-%d}")

    by_type = _query_table(warehouse, "events by type",
        "select event_type, count(*) as events, count(distinct customer_id) as customers "
        "from events group by 1 order by 2 desc",
        {"event type": "{}", "events": "{:,}", "customers": "{:,}"})
    by_channel = _query_table(warehouse, "channels",
        "select channel, count(*) as events, "
        "avg(case when event_type = 'purchase' then 1.0 else 0 end) as purchase_share "
        "from events group by 1 order by 2 desc",
        {"channel": "{}", "events": "{:,}", "purchase share": "{:.1%}"})
    by_category = _query_table(warehouse, "purchases by top-level category",
        "select split_part(i.category, '/', 1) as category, count(*) as purchases, "
        "coalesce(sum(e.price * e.quantity), 0) as revenue from events e join items i "
        "using (item_id) where e.event_type = 'purchase' group by 1 order by 2 desc limit 10",
        {"category": "{}", "purchases": "{:,}", "revenue": "{:,.0f}"})
    return [sizes, by_type, by_channel, by_category]


def _query_table(warehouse: Warehouse, title: str, sql: str, columns: dict[str, str]) -> Table:
    """A rich table of a DuckDB query: one column per entry, heading -> format of its value."""
    result = warehouse.query(sql)
    table = Table(title=title)
    for heading in columns:
        table.add_column(heading)
    for row in result.itertuples(index=False):
        table.add_row(*(fmt.format(value) for fmt, value in zip(columns.values(), row, strict=True)))
    return table


# ---------------------------------------------------------------------------- features build
@features_app.command("build")
@friendly_errors
def build_features(
    cutoff: Annotated[list[str] | None, typer.Option(
        help="Cutoff time (UTC, ISO 8601), repeatable. Features see only events before it.")] = None,
    every: Annotated[int | None, typer.Option(
        min=1, help="Instead of --cutoff: a cutoff every N days, ending at the last event.")] = None,
    count: Annotated[int, typer.Option(min=1, help="With --every: how many cutoffs.")] = 4,
    out: Annotated[Path | None, typer.Option(
        help="Output Parquet file [default: <data-dir>/features/customer_features.parquet].")] = None,
    data_dir: DataDir = None,
) -> None:
    """Build the offline customer feature table (one row per customer and cutoff) and the item
    popularity/trend table as of the last cutoff."""
    warehouse = warehouse_at(data_dir)
    cutoffs = resolve_cutoffs(warehouse, cutoff, every, count)
    settings = get_settings()
    options = dict(abandoned_after=pd.Timedelta(minutes=settings.abandoned_cart_after_minutes),
                   recent_items=settings.recent_items)
    items = warehouse.items()
    features_dir = (data_dir or settings.data_dir) / "features"
    out = out or features_dir / "customer_features.parquet"
    with progress() as bar:
        task = bar.add_task("building features", total=len(cutoffs) + 1)

        def done(moment: pd.Timestamp) -> None:
            bar.update(task, advance=1, description=f"features as of {moment:%Y-%m-%d %H:%M}")

        table = build_feature_table(lambda moment: warehouse.events(end=moment), cutoffs, items,
                                    on_cutoff=done, **options)
        bar.update(task, completed=len(cutoffs), description="item features")
        item_table = compute_item_features(warehouse.events(end=cutoffs[-1]), cutoffs[-1])
        bar.advance(task)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out, index=False)
    item_out = out.parent / "item_features.parquet"
    item_table.to_parquet(item_out)
    console.print(f"{len(table):,} customer rows x {table.shape[1] - 2} features over "
                  f"{len(cutoffs)} cutoff(s) -> {out}")
    console.print(f"{len(item_table):,} items -> {item_out}")


def resolve_cutoffs(warehouse: Warehouse, cutoffs: list[str] | None, every: int | None,
                    count: int) -> list[pd.Timestamp]:
    if cutoffs and every:
        raise ValueError("give --cutoff or --every, not both")
    if cutoffs:
        parsed = []
        for text in cutoffs:
            try:
                moment = pd.Timestamp(text)
            except ValueError:
                raise ValueError(f"--cutoff {text!r} is not a time; use ISO 8601 such as "
                                 "2024-06-01T00:00:00Z") from None
            parsed.append(moment.tz_localize("UTC") if moment.tzinfo is None
                          else moment.tz_convert("UTC"))
        return sorted(parsed)
    last = warehouse.query("select max(timestamp) as t from events").iloc[0]["t"]
    if pd.isna(last):
        raise ValueError(f"the warehouse at {warehouse.root} has no events to build features from")
    end = pd.Timestamp(last).tz_convert("UTC").ceil("D")
    step = pd.Timedelta(days=every or 30)
    return [end - step * i for i in reversed(range(count))]

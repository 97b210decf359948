"""``nextbest data ...`` and ``nextbest features ...``: the data commands people run.

Every command takes ``--data-dir`` (default from ``NEXTBEST_DATA_DIR`` or ``./.nextbest``),
shows progress on long work, and turns a bad input into one clear message and exit code 2.

The command line loads only what the command it runs needs: this module, and every module that
defines commands, imports pandas, pyarrow, MLflow and the models inside the commands, so that
``nextbest --help`` answers at once (tests/test_cli.py holds it to that).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from features.settings import Settings, get_settings

if TYPE_CHECKING:
    import pandas as pd
    from rich.table import Table

    from features.importers import ImportBatch
    from features.warehouse import Warehouse

console = Console()
errors = Console(stderr=True, soft_wrap=True)


def command_group(help: str) -> typer.Typer:
    """A group of commands. Help texts are shown as written: with rich markup on, typer would
    swallow every ``[...]`` in them (``[default: ...]``, a TOML ``[mapping]`` table)."""
    return typer.Typer(help=help, no_args_is_help=True, rich_markup_mode=None)


data_app = command_group("Generate, import, validate and summarize shop data.")
features_app = command_group("Build point-in-time feature tables.")

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
        except (ValueError, FileNotFoundError) as error:  # a DataFileError is a ValueError
            errors.print(f"[bold red]error:[/] {error}", markup=True, highlight=False)
            raise typer.Exit(code=2) from None

    return wrapper


def settings_with(data_dir: Path | None = None, tracking_uri: str | None = None) -> Settings:
    """The settings, with what the command line gave taking precedence."""
    updates = {k: v for k, v in (("data_dir", data_dir), ("tracking_uri", tracking_uri)) if v}
    return get_settings().model_copy(update=updates)


def warehouse_at(data_dir: Path | None) -> Warehouse:
    from features.warehouse import Warehouse

    return Warehouse(settings_with(data_dir).data_dir / "warehouse")


def progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                    console=console, transient=False)


def parse_time(text: str, option: str) -> pd.Timestamp:
    """An ISO 8601 time from the command line, in UTC (a time without a zone is UTC)."""
    import pandas as pd

    try:
        moment = pd.Timestamp(text)
    except ValueError:
        moment = pd.NaT
    if moment is pd.NaT:
        raise ValueError(f"{option} {text!r} is not a time; use ISO 8601 such as "
                         "2024-06-01T00:00:00Z")
    return moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")


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
    from features.synthetic import ShopConfig, generate_shop, store_shop

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
import_app = command_group("Import contract files, public data sets or transaction exports.")
data_app.add_typer(import_app, name="import")


def _store(warehouse: Warehouse, batch: ImportBatch) -> None:
    items = warehouse.upsert("items", batch.items)
    people = warehouse.upsert("customers", batch.customers)
    events = warehouse.append_events(batch.events)
    console.print(batch.describe(), highlight=False)
    limit = get_settings().max_skipped_share
    if batch.skipped_share > limit:
        errors.print(f"[bold yellow]warning:[/] {batch.skipped_share:.0%} of the rows were "
                     f"skipped (more than NEXTBEST_MAX_SKIPPED_SHARE, {limit:.0%}); the reasons "
                     "and examples are above — check the mapping before training on this",
                     markup=True, highlight=False)
    console.print(f"stored: {events.added:,} new events ({events.existing:,} already there), "
                  f"{items.added:,} new items, {people.added:,} new customers")


def _contract_import(table: TableName) -> Callable[..., None]:
    """The ``data import <table>`` command for one contract table."""

    def command(
        file: Annotated[Path, typer.Argument(help="CSV, TSV or Parquet file with contract columns.")],
        on_error: Annotated[OnErrorChoice, typer.Option(
            help="reject: load nothing if any row is bad; quarantine: load the good rows and "
                 "write the bad ones, with reasons, to <data-dir>/warehouse/quarantine/.")
        ] = OnErrorChoice.reject,
        data_dir: DataDir = None,
    ) -> None:
        warehouse = warehouse_at(data_dir)
        result = warehouse.import_file(file, table.value, on_error.value,
                                       get_settings().max_reported_errors)
        if result.report is not None and not result.report.ok:
            errors.print(result.report.describe(), highlight=False)
            errors.print(f"quarantined {len(result.report.bad_rows)} row(s) to "
                         f"{result.quarantine_path}", highlight=False)
        elif result.report is not None and result.report.unknown_columns:
            console.print(result.report.describe(), highlight=False)
        console.print(f"{table.value}: {result.added:,} new, {result.existing:,} already stored")

    command.__doc__ = f"Import {table.value} in the contract format (see docs/data.md)."
    return command


for _table in TableName:
    import_app.command(_table.value)(friendly_errors(_contract_import(_table)))


@import_app.command("movielens")
@friendly_errors
def import_movielens_command(
    file: Annotated[Path, typer.Argument(help="u.data (MovieLens 100K) or ratings.csv.")],
    data_dir: DataDir = None,
) -> None:
    """Import MovieLens ratings as purchases (titles and genres from u.item when beside it)."""
    from features.importers import import_movielens

    _store(warehouse_at(data_dir), import_movielens(file))


@import_app.command("cdnow")
@friendly_errors
def import_cdnow_command(
    file: Annotated[Path, typer.Argument(help="CDNOW_master.txt")],
    data_dir: DataDir = None,
) -> None:
    """Import the CDNOW purchase history (one generic CD item; quantity = CDs bought)."""
    from features.importers import import_cdnow

    _store(warehouse_at(data_dir), import_cdnow(file))


@import_app.command("transactions")
@friendly_errors
def import_transactions_command(
    file: Annotated[Path, typer.Argument(help="Invoice-lines table, CSV or Parquet.")],
    mapping: Annotated[Path | None, typer.Option(
        help="TOML file with a [mapping] table: invoice, item, quantity, timestamp, price, "
             "customer, and optionally description, country, timestamp_format, timezone, "
             "cancelled_prefix, returns, exclude_items, channel.")] = None,
    map_: Annotated[list[str] | None, typer.Option(
        "--map", help="field=Column, repeatable; overrides the mapping file. "
                      "E.g. --map invoice=InvoiceNo --map item=StockCode")] = None,
    exclude_item: Annotated[list[str] | None, typer.Option(
        help="Item codes that are not products (a regular expression matched against the whole "
             "code), repeatable, added to the mapping's exclude_items. E.g. --exclude-item POST")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Import a shop's transaction export. Cancellations and returns are netted against the
    purchases they reverse; rows without a customer, non-product codes and unreadable rows are
    skipped by explicit rules, and counted in the report with examples."""
    from features.importers import TransactionMapping, import_transactions

    values: dict[str, object] = {}
    if mapping is not None:
        values.update(TransactionMapping.from_file(mapping).model_dump(exclude_none=True))
    for pair in map_ or []:
        field, sep, column = pair.partition("=")
        if not sep or not field or not column:
            raise ValueError(f"--map {pair!r}: expected field=Column, e.g. --map item=StockCode")
        values[field.strip()] = column.strip()
    if exclude_item:
        values["exclude_items"] = [*values.get("exclude_items", []), *exclude_item]
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
    from features.contracts import contract_for
    from features.loading import DataFileError, load_table

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
    from rich.table import Table

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
    from rich.table import Table

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
    from features.point_in_time import FeatureOptions, build_feature_table, compute_item_features

    settings = settings_with(data_dir)
    warehouse = warehouse_at(data_dir)
    cutoffs = resolve_cutoffs(warehouse, cutoff, every, count)
    items = warehouse.items()
    out = out or settings.data_dir / "features" / "customer_features.parquet"
    with progress() as bar:
        task = bar.add_task("building features", total=len(cutoffs) + 1)

        def done(moment: pd.Timestamp) -> None:
            bar.update(task, advance=1, description=f"features as of {moment:%Y-%m-%d %H:%M}")

        table = build_feature_table(lambda moment: warehouse.events(end=moment), cutoffs, items,
                                    FeatureOptions.from_settings(settings), on_cutoff=done)
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
    """The cutoffs asked for, or ``count`` of them ``every`` days apart ending at the last event
    (or now, if that is earlier): features are never computed as of a time still to come."""
    import pandas as pd

    if cutoffs and every:
        raise ValueError("give --cutoff or --every, not both")
    now = pd.Timestamp.now(tz="UTC")
    if cutoffs:
        parsed = sorted(parse_time(text, "--cutoff") for text in cutoffs)
        if parsed[-1] > now:
            raise ValueError(f"--cutoff {parsed[-1].isoformat()} is in the future (now "
                             f"{now:%Y-%m-%dT%H:%M:%SZ}); features are computed from what has "
                             "happened")
        return parsed
    last = warehouse.query("select max(timestamp) as t from events").iloc[0]["t"]
    if pd.isna(last):
        raise ValueError(f"the warehouse at {warehouse.root} has no events to build features from")
    end = min(pd.Timestamp(last).tz_convert("UTC").ceil("D"), now)
    step = pd.Timedelta(days=every or 30)
    return [end - step * i for i in reversed(range(count))]

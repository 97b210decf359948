"""``nextbest train ...``, ``nextbest models ...`` and ``nextbest scores ...``: training jobs,
the model registry and campaign exports. MLflow and the models load inside the commands."""

from __future__ import annotations

import json
import numbers
import time
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from features.cli import (
    DataDir,
    command_group,
    console,
    errors,
    friendly_errors,
    parse_time,
    settings_with,
)
from training.progress import JobProgress
from training.recommenders import NAMES

if TYPE_CHECKING:
    from mlflow import MlflowClient

train_app = command_group("Train, evaluate and register models.")
models_app = command_group("List, promote and roll back registered models.")
scores_app = command_group("Export propensity scores for campaigns.")
report_app = command_group("Reports on what nextbest showed and sent, and what it earned.")

TrackingUri = Annotated[str | None, typer.Option(
    help="MLflow tracking URI [default: $NEXTBEST_TRACKING_URI or sqlite under the data dir].")]
ModelName = Annotated[str | None, typer.Option(
    "--name", help="Registered model [default: $NEXTBEST_RECOMMENDER_NAME or recommender].")]


def parse_pairs(pairs: list[str] | None, option: str) -> dict[str, object]:
    """``["factors=64", "similarity=bm25"]`` -> ``{"factors": 64, "similarity": "bm25"}``."""
    values: dict[str, object] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{option} {pair!r}: expected name=value, e.g. {option} factors=64")
        try:
            values[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[key.strip()] = raw
    return values


class RichJobProgress(JobProgress):
    """A job's stages as lines with their durations, and search trials on a bar of the budget."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.current: tuple[str, float] | None = None
        self.task = bar.add_task("starting", total=None)
        self.search = None

    def stage(self, description: str) -> None:
        self.finish()
        self.current = (description, time.monotonic())
        self.bar.update(self.task, description=description)

    def trial(self, number: int, elapsed: float, budget: float, score: float, best: float) -> None:
        if self.search is None:
            self.search = self.bar.add_task("search", total=budget)
        self.bar.update(self.search, completed=min(elapsed, budget),
                        description=f"trial {number}: {score:.4f} (best {best:.4f})")

    def warn(self, message: str) -> None:
        self.bar.console.print(f"[bold yellow]warning:[/] {message}", highlight=False)

    def finish(self) -> None:
        if self.current is not None:
            description, started = self.current
            self.bar.console.print(f"[green]✓[/] {description} ({time.monotonic() - started:.1f} s)",
                                   highlight=False)
            self.current = None


def job_progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                    console=console, transient=True)


@train_app.command("recommender")
@friendly_errors
def train_recommender_command(
    model: Annotated[str, typer.Option(help=f"Which recommender: {', '.join(NAMES)}.")] = "als",
    param: Annotated[list[str] | None, typer.Option(
        help="Hyperparameter name=value, repeatable, e.g. --param factors=128.")] = None,
    cutoff: Annotated[str | None, typer.Option(
        help="Holdout starts here (UTC, ISO 8601) [default: the last --test-days of data].")] = None,
    test_days: Annotated[float | None, typer.Option(
        min=0.01, help="Days of holdout after the cutoff [default: $NEXTBEST_TEST_DAYS or 14].")
    ] = None,
    k: Annotated[int, typer.Option(
        "--k", min=1, max=1000, help="Length of the evaluated lists (metrics @k).")] = 10,
    search_budget: Annotated[float | None, typer.Option(
        min=1, help="Seconds of random hyperparameter search before the final fit.")] = None,
    weight: Annotated[list[str] | None, typer.Option(
        help="Event weight type=value, repeatable, e.g. --weight purchase=5 [default: purchase 5, "
             "add_to_cart 3, view 1, click 1].")] = None,
    half_life: Annotated[float | None, typer.Option(
        min=0.01, help="Time decay: events this many days old count half.")] = None,
    register: Annotated[bool, typer.Option(help="Register the model and run the gate.")] = True,
    data_dir: DataDir = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Train a recommender on the warehouse, evaluate it on a time holdout against the
    popularity baseline, log it to MLflow, register it as challenger and promote it to champion
    if it beats the current one and the baseline."""
    from training.recommender_job import BASELINE, MIN_EVALUATED, train_recommender

    settings = settings_with(data_dir, tracking_uri)
    if test_days is not None:
        settings = settings.model_copy(update={"test_days": test_days})
    moment = parse_time(cutoff, "--cutoff") if cutoff else None
    weights = {k: float(v) for k, v in parse_pairs(weight, "--weight").items()} or None
    with job_progress() as bar:
        progress = RichJobProgress(bar)
        outcome = train_recommender(settings, model, parse_pairs(param, "--param"), moment,
                                    search_budget, register, weights, half_life, k=k,
                                    progress=progress)
        progress.finish()
    _recommender_table(outcome, BASELINE)
    evaluated = outcome.customers_evaluated
    console.print(f"evaluated on {evaluated:,} customers (those known to the model with a "
                  f"purchase in the {settings.test_days:g}-day holdout)")
    if evaluated < MIN_EVALUATED:
        errors.print(f"[bold yellow]warning:[/] only {evaluated} customers were evaluated: these "
                     "metrics are mostly noise; use a longer --test-days or more data",
                     markup=True, highlight=False)
    if outcome.search_trials:
        console.print(f"search: {outcome.search_trials} trials, chose {outcome.params}")
    if outcome.decision is not None:
        console.print(f"registered {settings.recommender_name} version {outcome.version}: "
                      f"{outcome.decision.reason}", highlight=False)


def _recommender_table(outcome, baseline: str) -> None:
    from rich.table import Table

    k, m = outcome.k, outcome.metrics
    table = Table(title=f"{outcome.model}: holdout metrics @{k} (run {outcome.run_id[:8]})")
    columns = [("new items", ""), ("all items", "all_items/")]
    if f"{baseline}/ndcg@{k}" in m:
        columns.append((f"{baseline}, new items", f"{baseline}/"))
    table.add_column("metric")
    for heading, _ in columns:
        table.add_column(heading, justify="right")
    for name in ("precision", "recall", "ndcg", "map", "hit_rate", "coverage", "popularity_bias"):
        table.add_row(f"{name}@{k}", *(f"{m[f'{prefix}{name}@{k}']:.4f}" for _, prefix in columns))
    console.print(table)


def _registry(name: str | None, data_dir: Path | None,
              tracking_uri: str | None) -> tuple[MlflowClient, str]:
    """A client on the configured store, and the registered model name to act on."""
    from mlflow import MlflowClient

    from training.tracking import configure

    settings = settings_with(data_dir, tracking_uri)
    configure(settings)
    return MlflowClient(), name or settings.recommender_name


@models_app.command("list")
@friendly_errors
def list_models(
    name: ModelName = None,
    data_dir: DataDir = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Every version of a registered model with its aliases, holdout score and gate decision."""
    from rich.table import Table

    from training import registry

    client, name = _registry(name, data_dir, tracking_uri)
    table = Table(title=f"registered model '{name}'")
    columns = ("version", "aliases", "model", "metric", "score", "created", "gate")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in registry.list_versions(client, name):
        table.add_row(*(row[c] for c in columns))
    console.print(table)


@models_app.command("promote")
@friendly_errors
def promote_model(
    version: Annotated[str, typer.Argument(help="Version to make champion.")],
    name: ModelName = None,
    reason: Annotated[str, typer.Option(help="Why, recorded on the version.")] = "promoted by hand",
    data_dir: DataDir = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Make a version champion by hand (bypassing the gate), remembering the one it replaces."""
    from training import registry

    client, name = _registry(name, data_dir, tracking_uri)
    registry.promote(client, name, version, reason)
    console.print(f"{name}: champion is now version {version}")


@models_app.command("rollback")
@friendly_errors
def rollback_model(
    name: ModelName = None,
    data_dir: DataDir = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Point champion back at the version the current champion replaced."""
    from training import registry

    client, name = _registry(name, data_dir, tracking_uri)
    current, previous = registry.rollback(client, name)
    console.print(f"{name}: champion rolled back from version {current} to version {previous}")


class View(StrEnum):
    new = "new"
    all = "all"
    both = "both"


def evaluate_command(
    model: Annotated[str, typer.Option(help=f"Which recommender: {', '.join(NAMES)}.")] = "ease",
    param: Annotated[list[str] | None, typer.Option(
        help="Hyperparameter name=value, repeatable, e.g. --param factors=128.")] = None,
    protocol: Annotated[str, typer.Option(
        help="time (the last --test-days), stratified (--ratio of each customer's events, "
             "--seed) or leave_last_out (each customer's last --leave-out purchases).")] = "time",
    k: Annotated[list[int] | None, typer.Option(
        "--k", min=1, max=1000, help="List length(s), repeatable: --k 10 --k 20 [default: 10].")
    ] = None,
    items: Annotated[View, typer.Option(
        help="new (items the customer never touched: discovery), all (repeats count), or "
             "both.")] = View.both,
    test_days: Annotated[float | None, typer.Option(
        min=0.01, help="time: days of test [default: $NEXTBEST_TEST_DAYS or 14].")] = None,
    cutoff: Annotated[str | None, typer.Option(
        help="time: the test starts here (UTC, ISO 8601) [default: the last --test-days].")
    ] = None,
    ratio: Annotated[float, typer.Option(
        min=0.01, max=0.99, help="stratified: share of each customer's events that trains.")
    ] = 0.75,
    seed: Annotated[int, typer.Option(help="stratified: the shuffle's seed.")] = 42,
    leave_out: Annotated[int, typer.Option(
        min=1, help="leave_last_out: purchases held out per customer.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Evaluate a recommender on the warehouse under any protocol, at any k, in either view,
    without logging or registering it (what the benchmarks run; ``train recommender`` is the
    job that registers)."""
    from rich.table import Table

    from training.recommender_job import ProtocolEvaluation, evaluate_protocol

    settings = settings_with(data_dir)
    if test_days is not None:
        settings = settings.model_copy(update={"test_days": test_days})
    views = {"new": ("new_items",), "all": ("all_items",), "both": ("new_items", "all_items")}
    def run(progress: JobProgress) -> ProtocolEvaluation:
        return evaluate_protocol(
            settings, model, parse_pairs(param, "--param"), protocol, tuple(k or [10]),
            views[items.value], parse_time(cutoff, "--cutoff") if cutoff else None, ratio, seed,
            leave_out, progress=progress)

    if as_json:  # nothing but the JSON on standard output
        result = run(JobProgress())
        console.print_json(json.dumps({"model": result.model, "params": result.params,
                                       "split": result.split, "metrics": result.metrics,
                                       "not_evaluated": result.missing}, default=str))
        return
    with job_progress() as bar:
        progress = RichJobProgress(bar)
        result = run(progress)
        progress.finish()
    split = ", ".join(f"{key} {value}" for key, value in result.split.items())
    for view, by_k in result.metrics.items():
        table = Table(title=f"{result.model}, {view.replace('_', ' ')} ({split})")
        for column in ("k", "precision", "recall", "ndcg", "map", "hit rate", "coverage",
                       "customers"):
            table.add_column(column, justify="right")
        for at, m in by_k.items():
            table.add_row(str(at), *(f"{m[f'{name}@{at}']:.4f}" for name in
                                     ("precision", "recall", "ndcg", "map", "hit_rate",
                                      "coverage")), f"{int(m['customers_evaluated']):,}")
        console.print(table)
    evaluated = {view: int(next(iter(by_k.values()))["customers_evaluated"])
                 for view, by_k in result.metrics.items()}
    console.print("customers evaluated: " + ", ".join(
        f"{count:,} ({view.replace('_', ' ')})" for view, count in evaluated.items()),
        highlight=False)
    for view, why in result.missing.items():
        console.print(f"{view.replace('_', ' ')}: not evaluated: {why}", highlight=False)


@train_app.command("propensity")
@friendly_errors
def train_propensity_command(
    kind: Annotated[str, typer.Option(help="purchase, category or offer.")] = "purchase",
    horizon: Annotated[float | None, typer.Option(
        help="Buy within this many days [default: $NEXTBEST_HORIZON_DAYS or 30; offers 7].")] = None,
    snapshots: Annotated[int, typer.Option(help="Training snapshots (rolling cutoffs).")] = 4,
    param: Annotated[list[str] | None, typer.Option(
        help="Model parameter name=value, e.g. --param num_leaves=63; --param family=logistic "
             "(or lightgbm, blend) skips the choice of family.")] = None,
    register: Annotated[bool, typer.Option(help="Register the model and run the gate.")] = True,
    data_dir: DataDir = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Train a calibrated propensity model on rolling snapshots: each family (LightGBM, small-data
    LightGBM, logistic RFM, a blend) is fitted and the one that ranks the validation snapshot
    best is kept; compare it with the recency and RFM baselines on a later test snapshot, log
    it, register it and run the gate (it must beat the champion and both baselines)."""
    from rich.table import Table

    from training.propensity_job import train_propensity

    if horizon is not None and horizon <= 0:
        raise ValueError(f"--horizon must be a positive number of days, got {horizon}")
    settings = settings_with(data_dir, tracking_uri)
    with job_progress() as bar:
        progress = RichJobProgress(bar)
        outcome = train_propensity(settings, kind, parse_pairs(param, "--param"), horizon,
                                   snapshots, register=register, progress=progress)
        progress.finish()
    table = Table(title=f"{kind} propensity on the test snapshot (run {outcome.run_id[:8]})")
    for column in ("metric", "nextbest", "uncalibrated", "recency", "rfm_logistic"):
        table.add_column(column, justify="right")
    for name in ("roc_auc", "pr_auc", "brier", "log_loss", "ece", "lift_top_decile"):
        m = outcome.metrics
        table.add_row(name, *(f"{m[key]:.4f}" for key in (
            name, f"uncalibrated/{name}", f"recency/{name}", f"rfm_logistic/{name}")))
    validation = {k.split("/")[1]: v for k, v in outcome.metrics.items()
                  if k.startswith("validation/")}
    if len(validation) > 1:
        console.print("chose " + outcome.chosen + " by ROC-AUC on the validation snapshot: "
                      + ", ".join(f"{name} {auc:.4f}" for name, auc in validation.items()),
                      highlight=False)
    console.print(table)
    if outcome.decision is not None:
        console.print(f"registered version {outcome.version}: {outcome.decision.reason}",
                      highlight=False)


class ScoreFormat(StrEnum):
    csv = "csv"
    parquet = "parquet"


@scores_app.command("export")
@friendly_errors
def export_scores_command(
    out: Annotated[Path, typer.Option(help="File to write.")],
    model: Annotated[str, typer.Option(
        help="Registered purchase-propensity model [default: propensity].")] = "propensity",
    segment: Annotated[str | None, typer.Option(help="Only customers of this segment.")] = None,
    min_score: Annotated[float | None, typer.Option(help="Only scores at or above this.")] = None,
    top: Annotated[int | None, typer.Option(help="Only the N highest scores.")] = None,
    version: Annotated[str | None, typer.Option(
        help="Score with this registered version [default: the champion].")] = None,
    as_of: Annotated[str | None, typer.Option(
        help="Score as of this time (UTC, ISO 8601), from the events before it [default: just "
             "after the newest event, and never after now].")] = None,
    file_format: Annotated[ScoreFormat, typer.Option("--format", help="csv or parquet.")
                           ] = ScoreFormat.csv,
    data_dir: DataDir = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Export propensity scores of the champion (or --version): customer, score, decile,
    segment, top 3 reasons, model version, and scored_at (the time the features are as of)."""
    from training.propensity.export import export_scores

    settings = settings_with(data_dir, tracking_uri)
    if model != settings.propensity_name:
        raise ValueError(f"cannot export model {model!r}: exports are per customer, from "
                         f"'{settings.propensity_name}' (purchase propensity); category and offer "
                         "propensities score (customer, category) and (customer, offer) pairs")
    moment = parse_time(as_of, "--as-of") if as_of else None
    with Progress(console=console) as progress:
        task = progress.add_task("scoring customers", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        table = export_scores(settings, model, out, file_format.value, segment, min_score, top,
                              at=moment, on_progress=advance, version=version,
                              warn=lambda text: errors.print(f"[bold yellow]warning:[/] {text}",
                                                             markup=True, highlight=False))
    scored_at = table["scored_at"].iloc[0] if len(table) else None
    console.print(f"wrote {len(table):,} customers to {out}"
                  + (f", scored as of {scored_at:%Y-%m-%d %H:%M:%S} UTC" if scored_at is not None
                     else ""))


SCREEN_COLUMNS = ("period", "impressions", "customers_reached", "ctr", "conversion_rate",
                  "attributed_revenue", "revenue_share")
SCREEN_LABELS = {"impressions": "shown", "customers_reached": "reach", "ctr": "CTR",
                 "conversion_rate": "conv.", "attributed_revenue": "revenue",
                 "revenue_share": "share"}
"""What fits a terminal; the CSV and the HTML page have every KPI."""


class ReportFormat(StrEnum):
    table = "table"
    csv = "csv"
    html = "html"


@report_app.command("kpis")
@friendly_errors
def report_kpis_command(
    start: Annotated[str | None, typer.Option("--from", help="First moment (UTC, ISO 8601), "
                                              "e.g. 2024-05-01 [default: 7 days before --to].")
                     ] = None,
    end: Annotated[str | None, typer.Option("--to", help="End, exclusive (UTC, ISO 8601) "
                                            "[default: now].")] = None,
    by: Annotated[str, typer.Option(help="Break down by any of channel, placement, kind, "
                                    "model_version, segment, source, exposure_type, "
                                    "comma-separated.")] = "",
    period: Annotated[str, typer.Option(help="day, week or all.")] = "day",
    file_format: Annotated[ReportFormat, typer.Option("--format", help="table (on screen), "
                                                      "csv or html (with charts).")
                           ] = ReportFormat.table,
    out: Annotated[Path | None, typer.Option(help="File for csv or html [default: "
                                             "kpis.csv / kpis.html].")] = None,
    data_dir: DataDir = None,
) -> None:
    """KPIs of the exposures made in a period: impressions, reach, CTR, add-to-cart and
    conversion rates, attributed revenue and its share, revenue per customer, order value,
    offer redemption, catalog coverage, popularity bias; the funnel; messages decided, sent,
    suppressed (by rule) and converted. Definitions: docs/analytics.md."""
    from rich import box
    from rich.table import Table

    from features.warehouse import Warehouse
    from training.attribution import AttributionRule
    from training.kpi_report import write_csv, write_html
    from training.kpis import kpi_report

    settings = settings_with(data_dir)
    until = parse_time(end, "--to").to_pydatetime() if end else _now()
    since = (parse_time(start, "--from").to_pydatetime() if start
             else until - timedelta(days=7))
    report = kpi_report(Warehouse(settings.data_dir / "warehouse"), since, until,
                        [d.strip() for d in by.split(",") if d.strip()], period,
                        AttributionRule.from_settings(settings))
    if file_format is ReportFormat.csv:
        console.print(f"wrote {len(report.kpis):,} rows to {write_csv(report, out or Path('kpis.csv'))}")
        return
    if file_format is ReportFormat.html:
        console.print(f"wrote {write_html(report, out or Path('kpis.html'))}")
        return
    if report.kpis.empty:
        console.print("no exposures in this period: nothing was shown or sent (is the service "
                      "running with NEXTBEST_EXPOSURE_LOGGING on, and were its exposures moved "
                      "with 'nextbest events flush'?)")
        return
    table = Table(title=f"KPIs per {period}", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    for column in [*SCREEN_COLUMNS[:1], *report.by, *SCREEN_COLUMNS[1:]]:
        table.add_column(SCREEN_LABELS.get(column, column), justify="right", no_wrap=True)
    shown = ["period", *report.by, *SCREEN_COLUMNS[1:]]
    for row in report.kpis[shown].itertuples(index=False):
        table.add_row(*(_cell(name, value) for name, value in zip(shown, row, strict=True)))
    console.print(table)
    console.print("every KPI (add-to-cart rate, order value, offer redemption, coverage, "
                  "popularity bias, ...): --format csv or --format html")
    funnel = " -> ".join(f"{r.stage} {r.count:,}" for r in report.funnel.itertuples())
    console.print(f"funnel: {funnel}")
    if len(report.messages):
        total = {k: int(report.messages[k].sum())
                 for k in ("decided", "sent", "suppressed", "converted")}
        rules = ", ".join(f"{r.rule}: {int(r.suppressed)}" for r in report.suppressions.itertuples())
        console.print(f"messages: {total['decided']:,} decided, {total['sent']:,} sent, "
                      f"{total['suppressed']:,} suppressed ({rules or 'none'}), "
                      f"{total['converted']:,} converted within the purchase window")


def _now() -> datetime:
    return datetime.now(UTC)


def _cell(name: str, value) -> str:
    from training.kpi_report import RATES

    if isinstance(value, numbers.Integral):
        return f"{value:,}"
    if isinstance(value, numbers.Real):
        if value != value:  # NaN: nothing to divide by
            return "-"
        return f"{value:.2%}" if name in RATES else f"{value:,.2f}"
    return str(value)


experiments_app = command_group("Experiments: list them, start and stop them, read a report.")


@experiments_app.command("list")
@friendly_errors
def list_experiments(data_dir: DataDir = None) -> None:
    """The experiments in the experiments file, with their layer, traffic, variants and state."""
    from rich.table import Table

    from features.experiments import load_plan, plan_path

    settings = settings_with(data_dir)
    path = plan_path(settings)
    plan = load_plan(path)
    console.print(f"{path}: global holdout {plan.holdout.share:.1%}")
    if not plan.experiments:
        console.print("no experiments; declare them in that file (docs/experiments.md)")
        return
    table = Table()
    for column in ("name", "layer", "traffic", "variants", "primary", "state"):
        table.add_column(column)
    now = _now()
    for e in plan.experiments:
        state = ("running" if e.running(now) else
                 "stopped" if e.stop and e.stop <= now else "not started")
        table.add_row(e.name, e.layer, f"{e.traffic:.0%}",
                      ", ".join(f"{v.name} ({v.weight:g})" for v in e.variants),
                      e.primary_metric, state)
    console.print(table)


def _set_time(name: str, field: str, data_dir: Path | None) -> None:
    """Set an experiment's start or stop to now in the file, keeping the rest of it."""
    import yaml

    from features.experiments import load_plan, plan_path

    path = plan_path(settings_with(data_dir))
    load_plan(path).experiment(name)  # it exists
    data = yaml.safe_load(path.read_text())
    for entry in data["experiments"]:
        if entry["name"] == name:
            entry[field] = _now().isoformat(timespec="seconds")
            if field == "start":
                entry.pop("stop", None)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    load_plan(path)  # still valid
    console.print(f"{name}: {field} set to now in {path} (a running service applies it at its "
                  "next reload check)")


@experiments_app.command("start")
@friendly_errors
def start_experiment(name: str, data_dir: DataDir = None) -> None:
    """Start an experiment now."""
    _set_time(name, "start", data_dir)


@experiments_app.command("stop")
@friendly_errors
def stop_experiment(name: str, data_dir: DataDir = None) -> None:
    """Stop an experiment now (its report keeps reading up to this moment)."""
    _set_time(name, "stop", data_dir)


@experiments_app.command("report")
@friendly_errors
def report_experiment(
    name: str,
    file_format: Annotated[str, typer.Option(
        "--format", help="table, csv (each unit's metrics) or html (with the cumulative effect "
                         "over time)")] = "table",
    out: Annotated[Path | None, typer.Option(help="File for csv or html [default: <name>.csv "
                                             "or <name>.html].")] = None,
    data_dir: DataDir = None,
) -> None:
    """The experiment's units per variant, the sample-ratio check, each metric's effect with
    its fixed-horizon interval and always-valid p-value, and the verdict."""
    from rich.table import Table

    from features.experiments import load_plan, plan_path
    from features.warehouse import Warehouse
    from training.attribution import AttributionRule
    from training.experiment_report import experiment_report

    settings = settings_with(data_dir)
    experiment = load_plan(plan_path(settings)).experiment(name)
    if file_format not in ("table", "csv", "html"):
        raise ValueError(f"--format must be table, csv or html, got {file_format!r}")
    if experiment.kind == "interleaving":
        _interleaving(settings, experiment, file_format, out)
        return
    report = experiment_report(Warehouse(settings.data_dir / "warehouse"), experiment, _now(),
                               AttributionRule.from_settings(settings))
    if file_format == "csv":
        path = out or Path(f"{name}.csv")
        report.units.to_csv(path, index=False)
        console.print(f"wrote {len(report.units):,} units to {path}")
        return
    if file_format == "html":
        from training.experiment_report import write_html

        console.print(f"wrote {write_html(report, out or Path(f'{name}.html'))}")
        return
    console.print(f"{name}: {report.start:%Y-%m-%d %H:%M} to {report.end:%Y-%m-%d %H:%M} UTC; "
                  f"units {report.ratio.counts}, {report.excluded} excluded (seen in two "
                  f"variants); sample ratio p = {report.ratio.p_value:.3g}. A: the control "
                  "(first variant); p: fixed-horizon; p seq.: always valid, Holm-corrected"
                  + (" MISMATCH" if report.ratio.mismatch else " (fine)"), highlight=False)
    if report.comparisons:
        table = Table()
        for column in ("metric", "variant", "A", "B", "B/A-1", "95% CI", "p", "p seq."):
            table.add_column(column, justify="right")
        for metric, found in report.comparisons.items():
            for c in found:
                e = c.effect
                table.add_row(metric, c.variant, f"{e.control:.4g}", f"{e.treatment:.4g}",
                              f"{e.relative:+.1%}", f"[{e.low:+.1%}, {e.high:+.1%}]",
                              f"{e.p_value:.3g}", f"{c.adjusted_p:.3g}")
        console.print(table)
    if report.unmeasured:
        console.print(f"nothing to compare yet on: {', '.join(report.unmeasured)}")
    for guardrail in report.guardrails:
        console.print(f"guardrail {guardrail}", highlight=False)
    console.print(f"verdict: {report.verdict}", highlight=False)


def _interleaving(settings, experiment, file_format: str, out: Path | None) -> None:
    from features.warehouse import Warehouse
    from training.attribution import AttributionRule
    from training.experiment_report import interleaving_report

    report = interleaving_report(Warehouse(settings.data_dir / "warehouse"), experiment, _now(),
                                 AttributionRule.from_settings(settings))
    if file_format == "csv":
        path = out or Path(f"{experiment.name}.csv")
        report.units.to_csv(path, index=False)
        console.print(f"wrote {len(report.units):,} customers' clicks per team to {path}")
        return
    if file_format == "html":
        raise ValueError("interleaving experiments report as a table or csv; html is for A/B "
                         "experiments")
    first, second = (v.name for v in experiment.variants)
    console.print(f"{experiment.name} (interleaving {first} as team A, {second} as team B): "
                  f"{len(report.units):,} customers clicked; preferred A: {report.wins['A']:,}, "
                  f"B: {report.wins['B']:,}, tie: {report.wins['tie']:,}; sign test p = "
                  f"{report.p_value:.3g}", highlight=False)
    console.print(f"verdict: {report.verdict}", highlight=False)


@experiments_app.command("ship")
@friendly_errors
def ship_experiment(
    name: str,
    variant: Annotated[str | None, typer.Option(
        help="The variant to ship [default: the one the verdict says beats the control].")
    ] = None,
    force: Annotated[bool, typer.Option(
        help="Ship even though the verdict does not say it won.")] = False,
    data_dir: DataDir = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Make the winning variant's recommender version champion through the registry (recording
    the experiment and its verdict as the reason; 'nextbest models rollback' undoes it), and
    stop the experiment."""
    from features.experiments import load_plan, plan_path
    from features.warehouse import Warehouse
    from training import registry
    from training.attribution import AttributionRule
    from training.experiment_report import experiment_report, winner

    settings = settings_with(data_dir, tracking_uri)
    experiment = load_plan(plan_path(settings)).experiment(name)
    if experiment.kind == "interleaving":
        from training.experiment_report import interleaving_report

        read = interleaving_report(Warehouse(settings.data_dir / "warehouse"), experiment,
                                   _now(), AttributionRule.from_settings(settings))
        verdict, won = read.verdict, read.preferred
    else:
        report = experiment_report(Warehouse(settings.data_dir / "warehouse"), experiment,
                                   _now(), AttributionRule.from_settings(settings))
        verdict = report.verdict
        won = winner(report, experiment)
    chosen = variant or won
    if chosen is None:
        raise ValueError(f"no variant of {name!r} has won yet ({verdict}); name one with "
                         "--variant and --force to ship it anyway")
    variants = {v.name: v for v in experiment.variants}
    if chosen not in variants:
        raise ValueError(f"{name!r} has no variant {chosen!r}; it has {', '.join(variants)}")
    if chosen != won and not force:
        raise ValueError(f"the verdict does not say {chosen!r} won ({verdict}); add "
                         "--force to ship it anyway")
    version = variants[chosen].recommender
    if version is None:
        raise ValueError(f"variant {chosen!r} names no recommender version, so there is nothing "
                         "to move in the registry: apply what it changes (its ranking settings "
                         "or personalization) in the configuration, then stop the experiment")
    client, model = _registry(None, data_dir, tracking_uri)
    registry.promote(client, model, version,
                     reason=f"experiment {name}: {chosen} shipped; {verdict}")
    _set_time(name, "stop", data_dir)
    console.print(f"{model}: champion is now version {version} (variant {chosen} of {name}); "
                  f"'nextbest models rollback' undoes it")


@experiments_app.command("create")
@friendly_errors
def create_experiment(
    name: str,
    variants: Annotated[str, typer.Option(
        help="Variant names, control first, comma-separated, e.g. A,B.")] = "A,B",
    weights: Annotated[str | None, typer.Option(
        help="Their relative weights, e.g. 1,1 [default: equal].")] = None,
    recommenders: Annotated[str | None, typer.Option(
        help="Recommender version per variant, empty for the champion, e.g. ',7'.")] = None,
    kind: Annotated[str, typer.Option(help="ab or interleaving.")] = "ab",
    layer: Annotated[str, typer.Option(help="Layer (experiments of one layer never share a "
                                       "customer).")] = "default",
    traffic: Annotated[float, typer.Option(help="Share of the layer's customers.")] = 1.0,
    primary_metric: Annotated[str, typer.Option(
        help="What the verdict is about: conversion, revenue, ctr or another metric of "
             "docs/experiments.md.")] = "conversion",
    secondary_metrics: Annotated[str | None, typer.Option(
        help="Also reported, comma-separated [default: revenue,ctr].")] = None,
    mde: Annotated[float | None, typer.Option(
        help="Minimum detectable relative effect, e.g. 0.05.")] = None,
    start_at: Annotated[str | None, typer.Option(
        help="When it starts (UTC, ISO 8601) [default: now].")] = None,
    data_dir: DataDir = None,
) -> None:
    """Declare an experiment in the experiments file, starting now or at --start-at (the whole
    file is checked before it is written; a running service applies it at its next reload
    check)."""
    import yaml

    from features.experiments import load_plan, plan_path

    path = plan_path(settings_with(data_dir))
    names = [v.strip() for v in variants.split(",") if v.strip()]
    weight_list = [float(w) for w in weights.split(",")] if weights else [1.0] * len(names)
    versions = recommenders.split(",") if recommenders is not None else [""] * len(names)
    if len(weight_list) != len(names) or len(versions) != len(names):
        raise ValueError(f"--variants names {len(names)} variants, but --weights gives "
                         f"{len(weight_list)} and --recommenders {len(versions)}; give one each")
    entry: dict = {"name": name, "kind": kind, "layer": layer, "traffic": traffic,
                   "primary_metric": primary_metric,
                   "variants": [{"name": n, "weight": w, **({"recommender": r.strip()}
                                                             if r.strip() else {})}
                                for n, w, r in zip(names, weight_list, versions, strict=True)]}
    if secondary_metrics is not None:
        entry["secondary_metrics"] = [m.strip() for m in secondary_metrics.split(",")
                                      if m.strip()]
    if mde is not None:
        entry["minimum_detectable_effect"] = mde
    begins = parse_time(start_at, "--start-at").to_pydatetime() if start_at else _now()
    entry["start"] = begins.isoformat(timespec="seconds")
    data = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
    if any(e.get("name") == name for e in data.get("experiments") or []):
        raise ValueError(f"{path} already has an experiment {name!r}; choose another name")
    data.setdefault("experiments", []).append(entry)
    candidate = path.with_name(f".{path.name}.new")
    candidate.parent.mkdir(parents=True, exist_ok=True)
    candidate.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        load_plan(candidate)  # the whole file must hold, or nothing is written
    except ValueError as error:
        candidate.unlink()
        raise ValueError(str(error).replace(str(candidate), str(path))) from None
    candidate.replace(path)
    console.print(f"experiment {name!r} added to {path}, starting {entry['start']}")

"""``nextbest train ...`` and ``nextbest models ...``: training jobs and the model registry."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from mlflow import MlflowClient
from rich.table import Table

from features.cli import console, friendly_errors
from features.settings import Settings, get_settings
from training import registry
from training.recommenders import RECOMMENDERS
from training.tracking import configure

train_app = typer.Typer(help="Train, evaluate and register models.", no_args_is_help=True)
models_app = typer.Typer(help="List, promote and roll back registered models.",
                         no_args_is_help=True)
scores_app = typer.Typer(help="Export propensity scores for campaigns.", no_args_is_help=True)

DataDir = Annotated[Path | None, typer.Option(help="Warehouse directory [default: .nextbest].")]
TrackingUri = Annotated[str | None, typer.Option(
    help="MLflow tracking URI [default: $NEXTBEST_TRACKING_URI or sqlite under the data dir].")]
ModelName = Annotated[str | None, typer.Option(
    "--name", help="Registered model [default: $NEXTBEST_RECOMMENDER_NAME or recommender].")]


def settings_for(data_dir: Path | None, tracking_uri: str | None) -> Settings:
    updates = {k: v for k, v in (("data_dir", data_dir), ("tracking_uri", tracking_uri)) if v}
    return get_settings().model_copy(update=updates)


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


@train_app.command("recommender")
@friendly_errors
def train_recommender_command(
    model: Annotated[str, typer.Option(
        help=f"Which recommender: {', '.join(RECOMMENDERS)}.")] = "als",
    param: Annotated[list[str] | None, typer.Option(
        help="Hyperparameter name=value, repeatable, e.g. --param factors=128.")] = None,
    cutoff: Annotated[str | None, typer.Option(
        help="Holdout starts here (UTC, ISO 8601) [default: the last test_days of data].")] = None,
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
    """Train a recommender on the warehouse, evaluate it on a time holdout, log it to MLflow,
    register it as challenger and promote it to champion if it beats the current one."""
    from training.recommender_job import train_recommender

    settings = settings_for(data_dir, tracking_uri)
    moment = None
    if cutoff:
        moment = pd.Timestamp(cutoff)
        moment = moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")
    weights = {k: float(v) for k, v in parse_pairs(weight, "--weight").items()} or None
    with console.status(f"training {model}..."):
        outcome = train_recommender(settings, model, parse_pairs(param, "--param"), moment,
                                    search_budget, register, weights, half_life)
    table = Table(title=f"{model}: holdout metrics (run {outcome.run_id[:8]})")
    table.add_column("metric")
    table.add_column("new items", justify="right")
    table.add_column("all items", justify="right")
    for name in ("precision@10", "recall@10", "ndcg@10", "map@10", "hit_rate@10", "coverage@10",
                 "popularity_bias@10"):
        table.add_row(name, f"{outcome.metrics[name]:.4f}",
                      f"{outcome.metrics['all_items/' + name]:.4f}")
    console.print(table)
    if outcome.search_trials:
        console.print(f"search: {outcome.search_trials} trials, chose {outcome.params}")
    if outcome.decision is not None:
        console.print(f"registered {settings.recommender_name} version {outcome.version}: "
                      f"{outcome.decision.reason}")


def _registry(name: str | None, data_dir: Path | None,
              tracking_uri: str | None) -> tuple[MlflowClient, str]:
    """A client on the configured store, and the registered model name to act on."""
    settings = settings_for(data_dir, tracking_uri)
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
    client, name = _registry(name, data_dir, tracking_uri)
    table = Table(title=f"registered model '{name}'")
    for column in ("version", "aliases", "model", "metric", "score", "created", "gate"):
        table.add_column(column, overflow="fold")
    for row in registry.list_versions(client, name):
        table.add_row(*(row[c] for c in ("version", "aliases", "model", "metric", "score",
                                         "created", "gate")))
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
    client, name = _registry(name, data_dir, tracking_uri)
    current, previous = registry.rollback(client, name)
    console.print(f"{name}: champion rolled back from version {current} to version {previous}")


@train_app.command("propensity")
@friendly_errors
def train_propensity_command(
    kind: Annotated[str, typer.Option(help="purchase, category or offer.")] = "purchase",
    horizon: Annotated[float | None, typer.Option(
        help="Buy within this many days [default: $NEXTBEST_HORIZON_DAYS or 30; offers 7].")] = None,
    snapshots: Annotated[int, typer.Option(help="Training snapshots (rolling cutoffs).")] = 4,
    param: Annotated[list[str] | None, typer.Option(
        help="LightGBM/calibration parameter name=value, e.g. --param num_leaves=63.")] = None,
    register: Annotated[bool, typer.Option(help="Register the model and run the gate.")] = True,
    data_dir: DataDir = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Train a calibrated propensity model on rolling snapshots, compare it with the recency
    and RFM baselines on a later snapshot, log it, register it and run the gate."""
    from training.propensity_job import train_propensity

    if horizon is not None and horizon <= 0:
        raise ValueError(f"--horizon must be a positive number of days, got {horizon}")
    settings = settings_for(data_dir, tracking_uri)
    with console.status(f"training {kind} propensity..."):
        outcome = train_propensity(settings, kind, parse_pairs(param, "--param"), horizon,
                                   snapshots, register=register)
    table = Table(title=f"{kind} propensity on the test snapshot (run {outcome.run_id[:8]})")
    for column in ("metric", "nextbest", "uncalibrated", "recency", "rfm_logistic"):
        table.add_column(column, justify="right")
    for name in ("roc_auc", "pr_auc", "brier", "log_loss", "ece", "lift_top_decile"):
        m = outcome.metrics
        table.add_row(name, *(f"{m[key]:.4f}" for key in (
            name, f"uncalibrated/{name}", f"recency/{name}", f"rfm_logistic/{name}")))
    console.print(table)
    if outcome.decision is not None:
        console.print(f"registered version {outcome.version}: {outcome.decision.reason}")


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
    file_format: Annotated[ScoreFormat, typer.Option("--format", help="csv or parquet.")
                           ] = ScoreFormat.csv,
    data_dir: DataDir = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Export champion propensity scores: customer, score, decile, segment, top 3 reasons,
    model version, scored-at."""
    from rich.progress import Progress

    from training.propensity.export import export_scores

    settings = settings_for(data_dir, tracking_uri)
    if model != settings.propensity_name:
        raise ValueError(f"cannot export model {model!r}: exports are per customer, from "
                         f"'{settings.propensity_name}' (purchase propensity); category and offer "
                         "propensities score (customer, category) and (customer, offer) pairs")
    with Progress(console=console) as progress:
        task = progress.add_task("scoring customers", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        table = export_scores(settings, model, out, file_format.value, segment, min_score, top,
                              on_progress=advance)
    console.print(f"wrote {len(table):,} customers to {out}")

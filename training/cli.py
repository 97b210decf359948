"""``nextbest train ...`` and ``nextbest models ...``: training jobs and the model registry."""

from __future__ import annotations

import json
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

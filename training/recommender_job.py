"""The recommender training job: split, fit, evaluate, log, register, gate.

One call (``nextbest train recommender``) does what a data scientist would otherwise do by
hand, the same way every time:

1. read events and items from the warehouse and cut them at a time (``time_split``);
2. optionally search hyperparameters within a time budget on a validation split *inside* the
   training period;
3. fit on the training period and evaluate on the holdout (new-items and all-items views);
4. refit the same configuration on all the data — the model a shop should serve — and log it,
   with parameters, metrics, plots, data fingerprint and code version, to MLflow;
5. register it (alias ``challenger``) and let the gate decide whether it becomes ``champion``.

The gate compares like with like: the champion's configuration is refitted on the same
training period and scored on the same holdout as the challenger, and so is the popularity
baseline, which every other model must beat too. Comparing the champion's old artifact instead
would be unfair whenever it was trained on days that are now in the holdout.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient

from features.event_time import TimeWindow
from features.settings import Settings
from features.warehouse import Warehouse
from training import registry
from training.evaluate import (
    PROTOCOLS,
    Evaluation,
    Split,
    evaluate,
    leave_last_out,
    stratified_split,
    time_split,
)
from training.interactions import InteractionConfig, Interactions, build_interactions
from training.plots import plot_evaluation
from training.progress import JobProgress
from training.recommenders import make_recommender
from training.recommenders.base import Recommender
from training.search import random_search
from training.tracking import code_version, configure, log_recommender, params_json

K = 10
"""Default length of the evaluated lists."""
BASELINE = "popularity"
"""The model every recommender must beat on the same holdout before it is promoted."""
MIN_EVALUATED = 100
"""Below this many evaluated customers a holdout metric is mostly noise; the CLI says so."""


@dataclass
class TrainingOutcome:
    """What one training run produced, for the CLI and for tests."""

    run_id: str
    model: str
    params: dict[str, Any]
    metrics: dict[str, float]
    k: int = K
    version: str | None = None
    decision: registry.GateDecision | None = None
    search_trials: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def customers_evaluated(self) -> int:
        return int(self.metrics[f"customers_evaluated@{self.k}"])


def metric_key(name: str) -> str:
    """MLflow metric names may not contain '@': ndcg@10 -> ndcg_at_10."""
    return name.replace("@", "_at_")


def interaction_config(model: str, params: dict[str, Any], weights: dict[str, float] | None,
                       half_life_days: float | None) -> InteractionConfig:
    """Event weights and decay for a model; a trending model brings its own half-life."""
    config = InteractionConfig() if weights is None else InteractionConfig(weights=weights)
    model_half_life = params.get("half_life_days") if model == "trending" else None
    decay = model_half_life or half_life_days
    if model == "trending" and decay is None:
        decay = make_recommender("trending").config.half_life_days
    return config.model_copy(update={"half_life_days": decay})


def fit_model(model: Recommender, interactions: Interactions, items: pd.DataFrame) -> Recommender:
    """Fit, handing text models the catalog rows aligned with the matrix columns."""
    item_info = None
    if model.needs_item_info:
        item_info = items.set_index("item_id").reindex(interactions.item_ids).reset_index()
    return model.fit(interactions.matrix, item_info)


def fit_on(model: Recommender, events: pd.DataFrame, items: pd.DataFrame,
           config: InteractionConfig) -> tuple[Recommender, Interactions]:
    interactions = build_interactions(events, config, items)
    return fit_model(model, interactions, items), interactions


def evaluated_ks(k: int, metric: str) -> tuple[int, ...]:
    """The list lengths to evaluate: the one asked for, and the one the gate's metric names."""
    _, at, gate_k = metric.partition("@")
    extra = {int(gate_k.split("/")[0])} if at and gate_k.split("/")[0].isdigit() else set()
    return tuple(sorted({k} | extra))


def holdout_metrics(model: Recommender, train: Interactions, test: pd.DataFrame,
                    ks: tuple[int, ...] = (K,)) -> tuple[dict[str, float], Evaluation]:
    """Both views of the holdout at each list length: new items (``ndcg@10``...) and all items
    (``all_items/...``); the evaluation at the first length, for the plots."""
    metrics: dict[str, float] = {}
    first = None
    for k in ks:
        new_items = evaluate(model, train, test, k=k, exclude_seen=True)
        all_items = evaluate(model, train, test, k=k, exclude_seen=False)
        metrics |= {name.replace("customers_evaluated", f"customers_evaluated@{k}"): value
                    for name, value in new_items.metrics.items()}
        metrics |= {f"all_items/{name}": value for name, value in all_items.metrics.items()
                    if name != "customers_evaluated"}
        first = first or new_items
    return metrics, first


@dataclass
class ProtocolEvaluation:
    """``nextbest evaluate``'s answer: per view (``new_items``, ``all_items``) and k, the
    metrics, with how the split was made and how many customers each view evaluated."""

    model: str
    params: dict[str, Any]
    split: dict[str, object]
    metrics: dict[str, dict[int, dict[str, float]]]
    missing: dict[str, str] = field(default_factory=dict)
    """Views nobody could be evaluated in, and why."""


def evaluate_protocol(settings: Settings, model: str, params: dict[str, Any] | None = None,
                      protocol: str = "time", ks: tuple[int, ...] = (K,),
                      views: tuple[str, ...] = ("new_items", "all_items"),
                      cutoff: pd.Timestamp | None = None, ratio: float = 0.75, seed: int = 42,
                      leave_out: int = 1, warehouse: Warehouse | None = None,
                      progress: JobProgress | None = None) -> ProtocolEvaluation:
    """Fit ``model`` on a split of the warehouse made by ``protocol`` (``time``: the last
    ``settings.test_days``; ``stratified``: ``ratio`` of each customer's events, shuffled with
    ``seed``; ``leave_last_out``: each customer's last ``leave_out`` purchases) and evaluate it
    at each k in each view. Nothing is logged or registered: this is for exploring."""
    progress = progress or JobProgress()
    params = dict(params or {})
    make_recommender(model, **params)
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of: {', '.join(PROTOCOLS)}")
    wrong = [v for v in views if v not in ("new_items", "all_items")]
    if wrong or not views:
        raise ValueError(f"views must be new_items and/or all_items, got {', '.join(views)}")
    if not ks or min(ks) < 1:
        raise ValueError(f"every k must be at least 1, got {', '.join(map(str, ks))}")
    warehouse = warehouse or Warehouse(settings.data_dir / "warehouse")
    progress.stage("reading the warehouse")
    events = warehouse.events_within(TimeWindow.current(settings), progress.warn)
    if events.empty:
        raise ValueError(f"the warehouse at {warehouse.root} has no events; run 'nextbest data "
                         "generate' or import data first")
    split = (time_split(events, cutoff, settings.test_days) if protocol == "time" else
             stratified_split(events, ratio, seed) if protocol == "stratified" else
             leave_last_out(events, leave_out))
    progress.stage(f"fitting {model} on the {protocol} split's training part")
    config = interaction_config(model, params, None, None)
    recommender, train = fit_on(make_recommender(model, **params), split.train,
                                warehouse.items(), config)
    progress.stage("evaluating")
    metrics: dict[str, dict[int, dict[str, float]]] = {}
    missing: dict[str, str] = {}
    for view in views:
        try:
            metrics[view] = {k: evaluate(recommender, train, split.test, k=k,
                                         exclude_seen=view == "new_items").metrics
                             for k in sorted(set(ks))}
        except ValueError as error:  # nobody to evaluate in this view: say so, show the other
            missing[view] = str(error)
    if not metrics:
        raise ValueError(next(iter(missing.values())))
    return ProtocolEvaluation(model, params, split.description, metrics, missing)


def train_recommender(
    settings: Settings,
    model: str = "als",
    params: dict[str, Any] | None = None,
    cutoff: pd.Timestamp | None = None,
    search_budget_seconds: float | None = None,
    register: bool = True,
    weights: dict[str, float] | None = None,
    half_life_days: float | None = None,
    warehouse: Warehouse | None = None,
    k: int = K,
    progress: JobProgress | None = None,
) -> TrainingOutcome:
    """Run the whole job (see the module docstring) and return what it produced. The holdout
    is ``settings.test_days`` long; metrics are at ``k`` (and at the gate metric's length)."""
    progress = progress or JobProgress()
    params = dict(params or {})
    make_recommender(model, **params)  # fail fast on a bad name or parameter
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    ks = evaluated_ks(k, settings.promotion_metric)
    warehouse = warehouse or Warehouse(settings.data_dir / "warehouse")
    progress.stage("reading the warehouse")
    events = warehouse.events_within(TimeWindow.current(settings), progress.warn)
    items = warehouse.items()
    if events.empty:
        raise ValueError(f"the warehouse at {warehouse.root} has no events; run 'nextbest data "
                         "generate' or import data first")
    split = time_split(events, cutoff, settings.test_days)
    config = interaction_config(model, params, weights, half_life_days)
    configure(settings, "recommender")
    client = MlflowClient()
    with mlflow.start_run(run_name=f"{model}") as run:
        trials = 0
        if search_budget_seconds:
            progress.stage(f"searching {model} hyperparameters ({search_budget_seconds:g} s)")
            inner = time_split(split.train, None, settings.test_days)

            def validation_score(candidate: Recommender) -> float:
                fitted, inner_train = fit_on(candidate, inner.train, items, config)
                return evaluate(fitted, inner_train, inner.test, k=K).metrics[f"ndcg@{K}"]

            params, best, trials = random_search(model, params, validation_score,
                                                 search_budget_seconds, progress=progress)
            mlflow.log_metric("search_best_validation_ndcg_at_10", best)
        progress.stage(f"fitting {model} on the training period")
        recommender, train = fit_on(make_recommender(model, **params), split.train, items, config)
        progress.stage("evaluating on the holdout")
        metrics, evaluation = holdout_metrics(recommender, train, split.test, ks)
        if model != BASELINE:
            progress.stage(f"evaluating the {BASELINE} baseline on the same holdout")
            baseline, baseline_train = fit_on(make_recommender(BASELINE), split.train, items,
                                              interaction_config(BASELINE, {}, weights,
                                                                 half_life_days))
            metrics |= {f"{BASELINE}/{name}": value for name, value in
                        holdout_metrics(baseline, baseline_train, split.test, ks)[0].items()}
        _log_run(model, params, config, split, warehouse, metrics, evaluation, trials)
        progress.stage(f"refitting {model} on all the data")
        final, full = fit_on(make_recommender(model, **params), events, items, config)
        progress.stage("logging the model to MLflow")
        info = log_recommender(final, full)
        outcome = TrainingOutcome(run.info.run_id, model, params, metrics, k,
                                  search_trials=trials)
        if register:
            progress.stage("registering and running the gate")
            outcome.version, outcome.decision = _register_and_gate(
                client, settings, info.model_uri, model, params, metrics, split, items, config,
                ks)
    return outcome


def _log_run(model: str, params: dict[str, Any], config: InteractionConfig, split: Split,
             warehouse: Warehouse, metrics: dict[str, float], evaluation: Evaluation, trials: int) -> None:
    mlflow.log_params({f"model.{k}": v for k, v in params.items()} | {"model": model})
    mlflow.log_params({"interactions.weights": json.dumps(config.weights),
                       "interactions.half_life_days": config.half_life_days,
                       **{f"split.{k}": v for k, v in split.description.items()},
                       "data.fingerprint": warehouse.fingerprint(),
                       "data.train_events": len(split.train), "data.test_events": len(split.test),
                       "search.trials": trials})
    mlflow.set_tags({"nextbest.code_version": code_version(),
                     "mlflow.source.git.commit": code_version(),
                     "nextbest.model": model})
    mlflow.log_metrics({metric_key(k): v for k, v in metrics.items()})
    with tempfile.TemporaryDirectory() as tmp:
        path = plot_evaluation(evaluation, f"{model} on the holdout ({split.description})",
                               Path(tmp) / "evaluation.png")
        mlflow.log_artifact(str(path), artifact_path="plots")
        evaluation.per_user.to_csv(Path(tmp) / "per_customer.csv", index=False)
        mlflow.log_artifact(str(Path(tmp) / "per_customer.csv"), artifact_path="evaluation")


def _register_and_gate(client: MlflowClient, settings: Settings, model_uri: str, model: str,
                       params: dict[str, Any], metrics: dict[str, float], split: Split,
                       items: pd.DataFrame, config: InteractionConfig, ks: tuple[int, ...]
                       ) -> tuple[str, registry.GateDecision]:
    name, metric = settings.recommender_name, settings.promotion_metric
    if metric not in metrics:
        raise ValueError(f"promotion_metric '{metric}' is not a metric this job computes; "
                         f"choose one of: {', '.join(sorted(m for m in metrics if '/' not in m))}")
    score = metrics[metric]
    version = mlflow.register_model(model_uri, name, tags={
        "nextbest.model": model, "nextbest.params": params_json(make_recommender(model, **params)),
        "nextbest.metric": metric, "nextbest.score": f"{score:.6f}",
        "nextbest.cutoff": str(split.description.get("cutoff", "")),
    }).version
    before = registry.champion_version(client, name)
    champion_score = None
    if before is not None:
        champion = json.loads(client.get_model_version(name, before).tags["nextbest.params"])
        refit = make_recommender(champion["model"], **champion["params"])
        champion_config = interaction_config(champion["model"], champion["params"],
                                             config.weights, config.half_life_days)
        fitted, train = fit_on(refit, split.train, items, champion_config)
        champion_score = holdout_metrics(fitted, train, split.test, ks)[0][metric]
    baselines = {BASELINE: metrics[f"{BASELINE}/{metric}"]} if model != BASELINE else {}
    decision = registry.decide(version, metric, score, before, champion_score, baselines,
                               settings.promotion_margin)
    registry.apply_decision(client, name, decision)
    return str(version), decision

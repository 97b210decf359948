"""The propensity training job: snapshots, fit, calibrate, evaluate, log, register, gate.

``nextbest train propensity --kind purchase|category|offer`` builds labeled snapshots at past
cutoffs (features before each cutoff, labels in the horizon after it), fits each candidate
family (free LightGBM, small-data LightGBM, logistic on transformed RFM, a blend; see
``training.propensity.selection``) on the earlier ones, calibrates them on the next and keeps
the one that ranks that validation snapshot best, then evaluates it on the latest complete one —
a cutoff later than every training label, never used for the choice. It compares against the
recency and logistic-RFM baselines, logs everything with calibration and gain plots to MLflow,
registers the model (``propensity``, ``propensity-category``, ``propensity-offer``) and runs
the same challenger/champion gate as the recommender: the champion's configuration is refitted
on the same snapshots, and the model must beat it and both baselines. Features are computed with
the settings' options (``FeatureOptions``), which the saved model carries for whoever scores it.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.models import infer_signature

from features.event_time import TimeWindow
from features.point_in_time import FeatureOptions
from features.settings import Settings
from features.warehouse import Warehouse
from training import registry
from training.artifacts import PROPENSITY_FILE, requirements
from training.progress import JobProgress
from training.propensity.baselines import BASELINES, FeatureLogistic
from training.propensity.datasets import SNAPSHOTS, CutoffPlan, model_inputs, plan_cutoffs
from training.propensity.evaluate import classification_metrics, lift_table, plot_propensity
from training.propensity.model import PropensityModel
from training.propensity.selection import Choice, candidates, choose
from training.tracking import code_version, configure

KINDS = tuple(SNAPSHOTS)
OFFER_WINDOW_DAYS = 7.0
"""Offer response: a showing counts as answered if the offer is redeemed within a week."""


def registered_name(settings: Settings, kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown propensity kind '{kind}'; expected one of: {', '.join(KINDS)}")
    return settings.propensity_name if kind == "purchase" else f"{settings.propensity_name}-{kind}"


@dataclass
class Snapshots:
    plan: CutoffPlan
    train: pd.DataFrame
    calibration: pd.DataFrame
    test: pd.DataFrame
    options: FeatureOptions = field(default_factory=FeatureOptions)
    """How the features were computed (the settings'); saved with the model."""


@dataclass
class PropensityOutcome:
    run_id: str
    kind: str
    params: dict[str, Any]
    metrics: dict[str, float]
    version: str | None = None
    decision: registry.GateDecision | None = None
    chosen: str = "lightgbm"
    """The family that validated best (``training.propensity.selection``)."""


def max_snapshots(events: pd.DataFrame, horizon_days: float, step_days: float) -> int:
    """How many training snapshots fit before the calibration and test snapshots."""
    span = (events["timestamp"].max() - events["timestamp"].min()) / pd.Timedelta(days=1)
    return max(1, int((span - 2 * horizon_days) // step_days) - 2)


def build_snapshots(events: pd.DataFrame, items: pd.DataFrame, kind: str, horizon_days: float,
                    n_snapshots: int, step_days: float = 14.0,
                    options: FeatureOptions | None = None) -> Snapshots:
    options = options or FeatureOptions()
    plan = plan_cutoffs(events["timestamp"].min(), events["timestamp"].max(), horizon_days,
                        n_snapshots, step_days)
    build = SNAPSHOTS[kind]
    train = pd.concat([build(events, items, c, plan.horizon, options) for c in plan.train])
    calibration = build(events, items, plan.calibration, plan.horizon, options)
    test = build(events, items, plan.test, plan.horizon, options)
    for name, frame in (("training", train), ("calibration", calibration), ("test", test)):
        if frame.empty or frame["label"].nunique() < 2:
            raise ValueError(f"the {name} snapshot(s) for '{kind}' propensity have "
                             f"{len(frame)} rows and {int(frame['label'].sum()) if len(frame) else 0} "
                             "positives; a model needs both outcomes — use more data, a longer "
                             "horizon or fewer snapshots")
    return Snapshots(plan, train, calibration, test, options)


def fit_and_score(params: dict[str, Any], snapshots: Snapshots
                  ) -> tuple[PropensityModel, dict[str, float], np.ndarray]:
    X, y = model_inputs(snapshots.train)
    X_cal, y_cal = model_inputs(snapshots.calibration)
    X_test, y_test = model_inputs(snapshots.test)
    model = PropensityModel(**params).fit(X, y, X_cal, y_cal, snapshots.options)
    scores = model.predict_proba(X_test)[:, 1]
    return model, classification_metrics(y_test, scores), scores


def fit_candidates(params: dict[str, Any], snapshots: Snapshots,
                   progress: JobProgress | None = None) -> Choice:
    """Every candidate family fitted on the training snapshots and calibrated on the validation
    snapshot; the one that ranks it best."""
    progress = progress or JobProgress()
    X, y = model_inputs(snapshots.train)
    X_validation, y_validation = model_inputs(snapshots.calibration)
    fitted = {}
    for name, family_params in candidates(params).items():
        progress.stage(f"fitting {name} and calibrating it")
        fitted[name] = (family_params, PropensityModel(**family_params).fit(
            X, y, X_validation, y_validation, snapshots.options))
    return choose(fitted, X_validation, y_validation)


def train_propensity(settings: Settings, kind: str = "purchase", params: dict[str, Any] | None = None,
                     horizon_days: float | None = None, n_snapshots: int = 4,
                     step_days: float = 14.0, register: bool = True,
                     warehouse: Warehouse | None = None,
                     progress: JobProgress | None = None) -> PropensityOutcome:
    progress = progress or JobProgress()
    params = dict(params or {})
    PropensityModel(**params)  # fail fast on a bad parameter
    name = registered_name(settings, kind)
    warehouse = warehouse or Warehouse(settings.data_dir / "warehouse")
    progress.stage("reading the warehouse")
    events = warehouse.events_within(TimeWindow.current(settings), progress.warn)
    items = warehouse.items()
    if events.empty:
        raise ValueError(f"the warehouse at {warehouse.root} has no events; generate or import "
                         "data first")
    horizon = horizon_days if horizon_days is not None else settings.horizon_days
    if kind == "offer":
        # Showings are sparse and offers come and go: use every week of history instead.
        horizon = horizon_days if horizon_days is not None else OFFER_WINDOW_DAYS
        step_days = horizon
        n_snapshots = max_snapshots(events, horizon, step_days)
    progress.stage(f"building {n_snapshots + 2} labelled snapshots")
    snapshots = build_snapshots(events, items, kind, horizon, n_snapshots, step_days,
                                FeatureOptions.from_settings(settings))
    choice = fit_candidates(params, snapshots, progress)
    model, params = choice.model, choice.params
    X_test, y_test = model_inputs(snapshots.test)
    scores = model.predict_proba(X_test)[:, 1]
    metrics = classification_metrics(y_test, scores)
    metrics |= {f"validation/{name}/roc_auc": auc for name, auc in choice.validation.items()}
    X, y = model_inputs(pd.concat([snapshots.train, snapshots.calibration]))
    uncalibrated = 1 / (1 + np.exp(-model.raw_score(X_test)))
    metrics |= {f"uncalibrated/{k}": v for k, v in classification_metrics(y_test, uncalibrated).items()}
    curves = {"nextbest (calibrated)": scores}
    progress.stage(f"fitting the baselines ({', '.join(BASELINES)}) on the same snapshots")
    for baseline, features in BASELINES.items():
        p = FeatureLogistic(features).fit(X, y).predict_proba(X_test)[:, 1]
        metrics |= {f"{baseline}/{k}": v for k, v in classification_metrics(y_test, p).items()}
        curves[baseline] = p
    configure(settings, "propensity")
    progress.stage("logging the run and the model to MLflow")
    with mlflow.start_run(run_name=f"propensity {kind}") as run:
        mlflow.log_params({f"model.{k}": v for k, v in params.items()} | {
            "kind": kind, "model.chosen": choice.name,
            "model.candidates": ",".join(choice.validation), "data.fingerprint": warehouse.fingerprint(),
            "data.train_rows": len(snapshots.train), "data.test_rows": len(snapshots.test),
            "model.best_iteration": model.best_iteration_,
            "model.calibration": model.calibration_method_, **snapshots.plan.describe(),
            **{f"features.{k}": v for k, v in snapshots.options.as_dict().items()}})
        mlflow.set_tags({"nextbest.code_version": code_version(), "nextbest.model": f"propensity-{kind}"})
        mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in metrics.items()})
        with tempfile.TemporaryDirectory() as tmp:
            plot = plot_propensity(y_test, curves, f"{kind} propensity, test cutoff "
                                   f"{snapshots.plan.test:%Y-%m-%d}", Path(tmp) / "propensity.png")
            mlflow.log_artifact(str(plot), artifact_path="plots")
            lift_table(y_test, scores).to_csv(Path(tmp) / "lift.csv")
            mlflow.log_artifact(str(Path(tmp) / "lift.csv"), artifact_path="evaluation")
            path = model.save(Path(tmp) / PROPENSITY_FILE)
            info = mlflow.pyfunc.log_model(
                name="model", python_model=PropensityPyfunc(), artifacts={"model": str(path)},
                signature=infer_signature(X_test.head(5), pd.DataFrame({"score": scores[:5]})),
                input_example=X_test.head(2),
                pip_requirements=requirements("mlflow", "lightgbm", "scikit-learn", "numpy",
                                              "pandas", "pydantic"),
                code_paths=[str(Path(__file__).resolve().parent)])
        outcome = PropensityOutcome(run.info.run_id, kind, params, metrics, chosen=choice.name)
        if register:
            progress.stage("registering and running the gate")
            outcome.version, outcome.decision = _register_and_gate(
                settings, name, info.model_uri, kind, params, metrics, snapshots)
    return outcome


def _register_and_gate(settings: Settings, name: str, model_uri: str, kind: str,
                       params: dict[str, Any], metrics: dict[str, float], snapshots: Snapshots
                       ) -> tuple[str, registry.GateDecision]:
    metric = settings.propensity_metric
    if metric not in metrics:
        raise ValueError(f"propensity_metric '{metric}' is not computed; choose one of: "
                         f"{', '.join(sorted(k for k in metrics if '/' not in k))}")
    version = str(mlflow.register_model(model_uri, name, tags={
        "nextbest.model": f"propensity-{kind}", "nextbest.params": json.dumps(params),
        "nextbest.metric": metric, "nextbest.score": f"{metrics[metric]:.6f}",
        "nextbest.test_cutoff": f"{snapshots.plan.test:%Y-%m-%d}"}).version)
    client = MlflowClient()
    before = registry.champion_version(client, name)
    champion_score = None
    if before is not None:
        champion_params = json.loads(client.get_model_version(name, before).tags["nextbest.params"])
        champion_score = fit_and_score(champion_params, snapshots)[1][metric]
    baselines = {baseline: metrics[f"{baseline}/{metric}"] for baseline in BASELINES}
    decision = registry.decide(version, metric, metrics[metric], before, champion_score,
                               baselines, settings.promotion_margin)
    registry.apply_decision(client, name, decision)
    return version, decision


class PropensityPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc: customer features in (the model's feature columns), calibrated ``score`` out."""

    def load_context(self, context) -> None:
        self.model = PropensityModel.load(context.artifacts["model"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return pd.DataFrame({"score": self.model.predict_proba(model_input)[:, 1]},
                            index=model_input.index)

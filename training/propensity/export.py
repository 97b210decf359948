"""Score every customer with the champion propensity model, for marketers' campaigns.

Features are computed as of the scoring time (``--as-of``; default: just after the newest
event, but never after now) with the same point-in-time code and options the model was trained
on, and ``scored_at`` in the file is that time; customers are scored in chunks (with progress),
ranked into deciles over everyone, and then filtered by segment, minimum score and top N.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from features.event_time import TimeWindow
from features.experiments import ExperimentPlan, assign, labels_text, load_plan, plan_path
from features.settings import Settings
from features.warehouse import Warehouse
from training import registry
from training.artifacts import PROPENSITY_FILE
from training.propensity.model import PropensityModel
from training.propensity.scoring import ScoredCustomers, checked_as_of
from training.tracking import configure

CHUNK = 50_000
log = logging.getLogger("nextbest.training")


def load_version(settings: Settings, name: str, version: str | None = None
                 ) -> tuple[PropensityModel, str]:
    """A version's model arrays (default: the champion's), read without going through pyfunc."""
    configure(settings)
    if version is None:
        version = registry.champion_version(MlflowClient(), name)
        if version is None:
            raise ValueError(f"registered model '{name}' has no champion; train one with "
                             "'nextbest train propensity' (a version the gate refused can be "
                             "exported with --version)")
    try:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}"))
    except MlflowException as error:
        raise ValueError(f"cannot load '{name}' version {version}: {error.message}") from None
    return PropensityModel.load(local / "artifacts" / PROPENSITY_FILE), str(version)


def with_experiments(table: pd.DataFrame, plan: ExperimentPlan) -> pd.DataFrame:
    """The customers a campaign may contact, each with the experiments they are in: the global
    holdout, and variants that turn messages off, are left out (they get no messages from any
    channel nextbest feeds), as the triggers leave them out."""
    if not plan.experiments and not plan.holdout.share:
        return table.assign(experiments=None)
    placed = [assign(plan, customer) for customer in table["customer_id"]]
    table = table.assign(experiments=[labels_text(p.labels()) for p in placed])
    return table[[p.messages for p in placed]]


def export_scores(
    settings: Settings,
    name: str,
    out: Path,
    file_format: Literal["csv", "parquet"] = "csv",
    segment: str | None = None,
    min_score: float | None = None,
    top: int | None = None,
    at: pd.Timestamp | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    version: str | None = None,
    warn: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Write the scores file of ``version`` (default: the champion) and return what was
    written."""
    if min_score is not None and not 0 <= min_score <= 1:
        raise ValueError(f"--min-score must be between 0 and 1, got {min_score}")
    if top is not None and top < 1:
        raise ValueError(f"--top must be a positive number of customers, got {top}")
    if file_format not in ("csv", "parquet"):
        raise ValueError(f"--format must be csv or parquet, got {file_format!r}")
    if at is not None:
        checked_as_of(at)
    warehouse = Warehouse(settings.data_dir / "warehouse")
    customers = warehouse.customers()
    if segment is not None and segment not in set(customers["segment"]):
        known = ", ".join(sorted(customers["segment"].dropna().unique())) or "none"
        raise ValueError(f"no customer is in segment {segment!r}; segments are: {known}")
    model, version = load_version(settings, name, version)
    events = warehouse.events_within(TimeWindow.current(settings), warn or log.warning)
    scored = ScoredCustomers.score(model, version, events, warehouse.items(), at)
    segments = customers.set_index("customer_id")["segment"]
    table = pd.DataFrame({"customer_id": scored.scores.index.astype(str),
                          "score": scored.scores.to_numpy(), "decile": scored.deciles.to_numpy(),
                          "segment": segments.reindex(scored.scores.index).fillna("unknown")
                          .to_numpy()})
    table = table.sort_values("score", ascending=False, kind="stable")
    table = with_experiments(table, load_plan(plan_path(settings)))
    if segment is not None:
        table = table[table["segment"] == segment]
    if min_score is not None:
        table = table[table["score"] >= min_score]
    if top is not None:
        table = table.head(top)
    # Reasons are the costly part (per-row SHAP values): only for the rows written, in chunks.
    ids = table["customer_id"].tolist()
    parts = [pd.DataFrame(columns=["reason_1", "reason_2", "reason_3"])]
    for start in range(0, len(ids), CHUNK):
        parts.append(scored.reasons(ids[start:start + CHUNK]))
        if on_progress:
            on_progress(min(start + CHUNK, len(ids)), len(ids))
    reasons = pd.concat(parts)
    table = pd.concat([table.reset_index(drop=True), reasons.reset_index(drop=True)], axis=1)
    table["model_version"], table["scored_at"] = version, scored.as_of
    out.parent.mkdir(parents=True, exist_ok=True)
    if file_format == "csv":
        table.to_csv(out, index=False)
    else:
        table.to_parquet(out, index=False)
    return table

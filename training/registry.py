"""Model versions and their aliases: challenger, champion, and the way back.

A newly registered version gets the alias ``challenger``. It becomes ``champion`` only if it
beats, by the configured margin, the current champion (refitted and scored on the same holdout)
and every baseline logged in the same run (popularity for a recommender; recency and logistic
RFM for a propensity model): a model that loses to a baseline is not worth serving, and a tie
is not a win.
Every promotion records, on the new champion's version, which version it replaced
(``nextbest.previous_champion``), so ``rollback`` can restore it. Stages are deprecated in MLflow;
aliases are the supported way to name the version a service should load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "nextbest.previous_champion"


LOWER_IS_BETTER = ("brier", "log_loss", "ece", "popularity_bias")
"""Metrics (by name before any ``@k``) where a smaller value is the better one."""


def higher_is_better(metric: str) -> bool:
    return metric.split("@")[0].split("/")[-1] not in LOWER_IS_BETTER


def beats(score: float, reference: float, metric: str, margin: float) -> bool:
    """Whether ``score`` is better than ``reference`` by more than the relative ``margin``. A
    tie is not a win, whatever the margin."""
    if higher_is_better(metric):
        return score > reference and score >= reference * (1 + margin)
    return score < reference and score <= reference * (1 - margin)


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided, and why, in words a person can read in the registry.

    A challenger is promoted only if it beats the current champion (when there is one) and
    every baseline logged in the same run, each by the margin; ``failed`` names the comparisons
    it lost."""

    promoted: bool
    version: str
    metric: str
    margin: float
    challenger_score: float
    champion_before: str | None
    champion_score: float | None
    baselines: dict[str, float] = field(default_factory=dict)
    failed: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        needs = f", by the margin of {self.margin:.1%}" if self.margin else ""
        if not self.promoted:
            return (f"version {self.version} is not promoted: on {self.metric} it does not beat "
                    f"{'; '.join(self.failed)}{needs}")
        wins = [f"baseline {name} ({score:.4f})" for name, score in self.baselines.items()]
        if self.champion_before is None:
            head = f"no champion yet: version {self.version} becomes champion"
            if not wins:
                return head
            return (f"{head}; on {self.metric} its {self.challenger_score:.4f} beats "
                    f"{' and '.join(wins)}{needs}")
        wins.insert(0, f"champion {self.champion_before} ({self.champion_score:.4f})")
        return (f"version {self.version} beats {' and '.join(wins)} on {self.metric} with "
                f"{self.challenger_score:.4f}{needs}")


def champion_version(client: MlflowClient, name: str) -> str | None:
    """The version the champion alias points at, or None."""
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def decide(version: str, metric: str, challenger_score: float, champion_before: str | None,
           champion_score: float | None, baselines: dict[str, float] | None = None,
           margin: float = 0.0) -> GateDecision:
    """The promotion rule alone (no I/O), so it can be tested exhaustively."""
    baselines = dict(baselines or {})
    failed = [f"baseline {name} ({score:.4f} against its {challenger_score:.4f})"
              for name, score in baselines.items()
              if not beats(challenger_score, score, metric, margin)]
    if champion_before is not None and (
            champion_score is None or not beats(challenger_score, champion_score, metric, margin)):
        shown = "unknown" if champion_score is None else f"{champion_score:.4f}"
        failed.insert(0, f"champion {champion_before} ({shown} against its "
                         f"{challenger_score:.4f})")
    return GateDecision(not failed, str(version), metric, margin, challenger_score,
                        champion_before, champion_score, baselines, tuple(failed))


def apply_decision(client: MlflowClient, name: str, decision: GateDecision) -> None:
    """Move the aliases and write the decision onto the version."""
    version = decision.version
    client.set_registered_model_alias(name, CHALLENGER, version)
    client.set_model_version_tag(name, version, "nextbest.gate", decision.reason)
    if decision.promoted:
        promote(client, name, version, reason=decision.reason)


def promote(client: MlflowClient, name: str, version: str, reason: str = "promoted by hand") -> None:
    """Make ``version`` the champion, remembering the one it replaces."""
    _require_version(client, name, version)
    before = champion_version(client, name)
    if before == str(version):
        return
    client.set_model_version_tag(name, version, PREVIOUS, before or "")
    client.set_model_version_tag(name, version, "nextbest.promoted_at",
                                 datetime.now(UTC).isoformat(timespec="seconds"))
    client.set_model_version_tag(name, version, "nextbest.promotion_reason", reason)
    client.set_registered_model_alias(name, CHAMPION, version)


def rollback(client: MlflowClient, name: str) -> tuple[str, str]:
    """Point champion back at the version the current champion replaced; returns (from, to)."""
    current = champion_version(client, name)
    if current is None:
        raise ValueError(f"registered model '{name}' has no champion to roll back")
    previous = client.get_model_version(name, current).tags.get(PREVIOUS, "")
    if not previous:
        raise ValueError(f"champion version {current} of '{name}' replaced no earlier champion; "
                         "there is nothing to roll back to")
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_model_version_tag(name, current, "nextbest.rolled_back_at",
                                 datetime.now(UTC).isoformat(timespec="seconds"))
    return current, previous


def list_versions(client: MlflowClient, name: str) -> list[dict[str, str]]:
    """Every version, newest first, with its aliases, model, holdout score and gate decision."""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as error:
        raise ValueError(f"cannot list registered model '{name}': {error.message}") from None
    if not versions:
        raise ValueError(f"no registered model named '{name}'; train one with "
                         "'nextbest train recommender'")
    # search_model_versions leaves aliases out of what it returns; the registered model has them
    by_version: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    rows = []
    for v in sorted(versions, key=lambda v: int(v.version), reverse=True):
        rows.append({
            "version": str(v.version),
            "aliases": ", ".join(sorted(by_version.get(str(v.version), []))),
            "model": v.tags.get("nextbest.model", ""),
            "score": v.tags.get("nextbest.score", ""),
            "metric": v.tags.get("nextbest.metric", ""),
            "created": datetime.fromtimestamp(v.creation_timestamp / 1000, UTC).strftime(
                "%Y-%m-%d %H:%M"),
            "gate": v.tags.get("nextbest.gate", ""),
        })
    return rows


def _require_version(client: MlflowClient, name: str, version: str) -> None:
    try:
        client.get_model_version(name, str(version))
    except MlflowException:
        raise ValueError(f"registered model '{name}' has no version {version!r}") from None

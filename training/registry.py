"""Model versions and their aliases: challenger, champion, and the way back.

A newly registered version gets the alias ``challenger``. It becomes ``champion`` only if there
is no champion yet, or if it beats the champion on the same holdout by the configured margin.
Every promotion records, on the new champion's version, which version it replaced
(``nextbest.previous_champion``), so ``rollback`` can restore it. Stages are deprecated in MLflow;
aliases are the supported way to name the version a service should load.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "nextbest.previous_champion"


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided, and why, in words a person can read in the registry."""

    promoted: bool
    version: str
    champion_before: str | None
    challenger_score: float
    champion_score: float | None
    metric: str
    margin: float

    @property
    def reason(self) -> str:
        if self.champion_before is None:
            return f"no champion yet: version {self.version} becomes champion"
        verdict = "beats" if self.promoted else "does not beat"
        return (f"version {self.version} {verdict} champion {self.champion_before} on {self.metric}: "
                f"{self.challenger_score:.4f} vs {self.champion_score:.4f} "
                f"(needs >= champion x {1 + self.margin:g})")


def champion_version(client: MlflowClient, name: str) -> str | None:
    """The version the champion alias points at, or None."""
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def decide(version: str, challenger_score: float, champion_before: str | None,
           champion_score: float | None, metric: str, margin: float) -> GateDecision:
    """The promotion rule alone (no I/O), so it can be tested exhaustively."""
    promoted = champion_before is None or (
        champion_score is not None and challenger_score >= champion_score * (1 + margin))
    return GateDecision(promoted, str(version), champion_before, challenger_score, champion_score,
                        metric, margin)


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
    rows = []
    for v in sorted(versions, key=lambda v: int(v.version), reverse=True):
        rows.append({
            "version": str(v.version),
            "aliases": ", ".join(sorted(v.aliases)),
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

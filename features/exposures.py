"""Exposures: what nextbest put in front of a customer, as the online log and the warehouse
hold it.

The service records one exposure per ``recommend`` answer and per message decision, nested (its
items in a list) because that is cheap to write on the answer path; the warehouse stores it
flat, one row per item (``features.contracts.EXPOSURES``), because that is what attribution joins
and KPIs count. This module is the one place that turns the first into the second.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TypedDict

import orjson
import pyarrow as pa

from features.contracts import EXPOSURES, arrow_schema
from features.experiments import labels_text


class Exposure(TypedDict):
    """One answer or message as the service records it."""

    exposure_id: str
    exposure_type: str
    customer_id: str
    at: float
    """Epoch seconds."""
    channel: str
    placement: str
    status: str
    rule: str | None
    model_versions: dict[str, str]
    items: list[tuple]
    """(kind, item_id, source[, team]) in the order shown; positions count from 1 within each
    kind; team only in an interleaving experiment."""
    context: dict | None
    variants: dict[str, str]
    """experiment -> variant (``features.experiments.Assignment.labels``)."""
    latency_ms: float | None
    """Ranking time of a recommend answer."""


def versions_text(versions: dict[str, str]) -> str | None:
    """'name=version|...' sorted by name, as the ``model_versions`` column holds them."""
    return "|".join(f"{name}={version}" for name, version in sorted(versions.items())) or None


def exposure_rows(batches: Iterable[tuple[int, list[Exposure]]]) -> pa.Table:
    """Flat warehouse rows (plus ``_position``: the log position each came from) of logged
    batches of exposures."""
    columns: dict[str, list] = {name: [] for name in [*EXPOSURES.column_names, "_position"]}
    for position, exposures in batches:
        for exposure in exposures:
            context = exposure.get("context")
            shared = {  # what every row of this exposure repeats, computed once
                "exposure_id": exposure["exposure_id"],
                "exposure_type": exposure["exposure_type"],
                "customer_id": exposure["customer_id"],
                "timestamp": datetime.fromtimestamp(exposure["at"], UTC),
                "channel": exposure["channel"], "placement": exposure["placement"],
                "status": exposure["status"], "rule": exposure.get("rule"),
                "model_versions": versions_text(exposure.get("model_versions") or {}),
                "variants": labels_text(exposure.get("variants") or {}),
                "latency_ms": exposure.get("latency_ms"),
                "context": orjson.dumps(context).decode() if context else None,
                "_position": position}
            ranks: dict[str, int] = {}
            for kind, item_id, source, *team in exposure["items"] or [(None, None, None)]:
                if kind is not None:
                    ranks[kind] = ranks.get(kind, 0) + 1
                for name, value in shared.items():
                    columns[name].append(value)
                columns["item_kind"].append(kind)
                columns["item_id"].append(item_id)
                columns["position"].append(ranks.get(kind))
                columns["source"].append(source)
                columns["team"].append(team[0] if team else None)
    schema = arrow_schema(EXPOSURES).append(pa.field("_position", pa.int64()))
    return pa.table(columns, schema=schema)

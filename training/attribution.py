"""Attribution: which exposure earned each click, add-to-cart, purchase and redemption.

The rule, in the order it is applied (docs/analytics.md says the same for marketers):

1. **Direct**: an outcome event that carries a ``recommendation_id`` (or a ``decision_id``)
   naming an exposure of the same customer is that exposure's, whatever the item and however
   long after (the storefront said so). An id of another customer's exposure is not trusted
   and the event falls to the window rule.
2. **Window**: otherwise, the exposures that showed that item to that customer before the event,
   within the click window (clicks, default 24 h) or the purchase window (add-to-cart,
   purchase and offer redemption, default 7 days); the latest of them (``last_touch``, the
   default) or the earliest (``first_touch``) gets it, with its channel, placement, position and
   source.
3. **Returns**: a ``return`` event takes back the revenue of the customer's latest purchase of
   that item before it, with that purchase's attribution (unattributed purchase: nothing to take
   back); its revenue is minus quantity x price (the purchase's price if the return has none).

Revenue of a purchase is quantity x price (the catalog price if the event has none). Everything
runs as DuckDB SQL over the warehouse's files, in one connection, so a report over millions of
exposures reads each file once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import duckdb

from features.contracts import EventType, ExposureStatus
from features.settings import Settings

OUTCOMES = (EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE, EventType.OFFER_REDEEMED)
"""Events attributed to exposures; returns follow their purchase."""


@dataclass(frozen=True)
class AttributionRule:
    click_window: timedelta = timedelta(hours=24)
    purchase_window: timedelta = timedelta(days=7)
    touch: Literal["last_touch", "first_touch"] = "last_touch"

    @classmethod
    def from_settings(cls, settings: Settings) -> AttributionRule:
        return cls(timedelta(hours=settings.click_window_hours),
                   timedelta(days=settings.purchase_window_days), settings.attribution_rule)


def attribute(connection: duckdb.DuckDBPyConnection, start: datetime, end: datetime,
              rule: AttributionRule) -> None:
    """Create the temporary table ``attributed`` on ``connection`` (views ``events``,
    ``exposures``, ``items`` from ``Warehouse.connect``): one row per outcome event attributed to
    an exposure made in ``[start, end)``, with the exposure's dimensions and the signed revenue.

    Outcomes are read up to the longest window after ``end``, so exposures late in the period
    keep the outcomes they earned; exposures up to that window before ``start`` are read too,
    so an outcome that belongs to one of them (by id or as its last touch) is not credited to an
    exposure of the period instead."""
    longest = max(rule.click_window, rule.purchase_window)
    window_end, lookback = end + longest, start - longest
    outcome_types = ", ".join(f"'{t.value}'" for t in (*OUTCOMES, EventType.RETURN))
    click, purchase = (f"INTERVAL {int(w.total_seconds())} SECOND"
                       for w in (rule.click_window, rule.purchase_window))
    # ``shown`` is a view, not a table: each query that reads it scans the Parquet files with
    # its own filters and columns, which costs less than materializing every exposure row once
    # (docs/benchmarks.md, experiments). A view takes no parameters, so its bounds are literals
    # (datetimes, formatted here, never text from a request).
    run(connection, f"""
        CREATE OR REPLACE TEMP VIEW shown AS
        SELECT exposure_id, exposure_type, customer_id, timestamp AS exposed_at, channel,
               placement, model_versions, variants, item_kind, item_id, position, source, team
        FROM exposures
        WHERE timestamp >= {_literal(lookback)} AND timestamp < {_literal(end)}
          AND status IN ('{ExposureStatus.SHOWN.value}', '{ExposureStatus.SENT.value}');

        CREATE OR REPLACE TEMP TABLE outcomes AS
        SELECT e.event_id, e.event_type, e.customer_id, e.item_id, e.timestamp, e.session_id,
               e.quantity, coalesce(e.recommendation_id, e.decision_id) AS claimed,
               coalesce(e.price, i.price, 0) AS price, e.price AS paid
        FROM events e LEFT JOIN items i USING (item_id)
        WHERE e.timestamp >= $start AND e.timestamp < $window_end
          AND e.event_type IN ({outcome_types});
    """, {"start": start, "end": end, "window_end": window_end})
    touch = "max" if rule.touch == "last_touch" else "min"
    # A touch is the whole exposure row as a struct, so that choosing one (arg_max) brings its
    # dimensions along and nothing joins the exposures a second time.
    fields = ("exposure_id", "exposure_type", "exposed_at", "channel", "placement",
              "model_versions", "variants", "item_kind", "position", "source", "team")
    row = "struct_pack(" + ", ".join(f"{f} := s.{f}" for f in fields) + ")"
    at_item = "struct_pack(" + ", ".join(
        f"{f} := s.{f}" if f not in ("item_kind", "position", "source", "team")
        else f"{f} := CASE WHEN s.item_id = o.item_id THEN s.{f} END" for f in fields) + ")"
    run(connection, f"""
        CREATE OR REPLACE TEMP TABLE direct AS  -- the row of the item, if the answer had it
        SELECT o.event_id, arg_max({at_item}, (s.item_id = o.item_id)::INTEGER) AS touch,
               'direct' AS how
        FROM outcomes o JOIN shown s
          ON o.claimed = s.exposure_id AND o.customer_id = s.customer_id
        WHERE o.event_type <> '{EventType.RETURN.value}'
        GROUP BY o.event_id;

        CREATE OR REPLACE TEMP TABLE windowed AS
        SELECT o.event_id, arg_{touch}({row}, s.exposed_at) AS touch, 'window' AS how
        FROM outcomes o JOIN shown s
          ON o.customer_id = s.customer_id AND o.item_id = s.item_id
         AND s.exposed_at <= o.timestamp
         AND o.timestamp - s.exposed_at <= CASE WHEN o.event_type = '{EventType.CLICK.value}'
                                                THEN {click} ELSE {purchase} END
        WHERE o.event_type IN ({", ".join(f"'{t.value}'" for t in OUTCOMES)})
          AND o.event_id NOT IN (SELECT event_id FROM direct)
        GROUP BY o.event_id;

        CREATE OR REPLACE TEMP TABLE credited_outcomes AS
        SELECT o.*, c.touch, c.how,
               CASE WHEN o.event_type = '{EventType.PURCHASE.value}'
                    THEN o.quantity * o.price ELSE 0 END AS revenue
        FROM outcomes o JOIN (SELECT * FROM direct UNION ALL SELECT * FROM windowed) c
          USING (event_id);

        CREATE OR REPLACE TEMP TABLE reversals AS  -- a return follows its latest purchase
        SELECT r.event_id, r.event_type, r.customer_id, r.item_id, r.timestamp, r.session_id,
               r.quantity, r.claimed, coalesce(r.paid, p.price) AS price, r.paid,
               p.touch, p.how, -r.quantity * coalesce(r.paid, p.price) AS revenue
        FROM (SELECT * FROM outcomes WHERE event_type = '{EventType.RETURN.value}') r
        ASOF JOIN (SELECT * FROM credited_outcomes
                   WHERE event_type = '{EventType.PURCHASE.value}') p
          ON r.customer_id = p.customer_id AND r.item_id = p.item_id
         AND r.timestamp >= p.timestamp;
    """)
    run(connection, f"""
        CREATE OR REPLACE TEMP TABLE attributed AS
        SELECT c.* EXCLUDE (touch),
               {", ".join(f"c.touch.{f} AS {f}" for f in fields if f != "item_kind")},
               coalesce(c.touch.item_kind, i.kind) AS item_kind
        FROM (SELECT * FROM credited_outcomes UNION ALL SELECT * FROM reversals) c
        LEFT JOIN items i ON i.item_id = c.item_id
        WHERE c.touch.exposed_at >= $start
    """, {"start": start})


def _literal(moment: datetime) -> str:
    """A timezone-aware datetime as a DuckDB TIMESTAMPTZ literal."""
    if moment.tzinfo is None:
        raise ValueError(f"{moment!r} has no time zone; attribution works in UTC")
    return f"TIMESTAMPTZ '{moment.isoformat()}'"


def run(connection: duckdb.DuckDBPyConnection, script: str, params: dict | None = None) -> None:
    """Each statement of ``script`` in turn, with the ``params`` it names (DuckDB prepares one
    statement at a time)."""
    for statement in filter(str.strip, script.split(";")):
        connection.execute(statement, named(params or {}, statement) or None)


def named(params: dict, sql: str) -> dict:
    """The ``params`` that ``sql`` names as ``$name``: DuckDB refuses any other."""
    return {k: v for k, v in params.items() if f"${k}" in sql}

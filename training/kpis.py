"""KPIs of what nextbest showed and sent: reach, click-through, conversion, attributed revenue,
coverage, popularity bias, the funnel, and what became of messages.

Every number is computed in DuckDB over the warehouse's ``exposures`` and ``events`` (after
``training.attribution`` has credited outcomes to exposures) and returned as DataFrames; the
command line (``nextbest report kpis``), the HTML report and notebooks all read these frames.
Outcomes count in the period of the exposure that earned them (a cohort view: what Monday's
recommendations earned, even if bought on Tuesday); the definition of each KPI is in
``KPI_DEFINITIONS`` and docs/analytics.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import numpy as np
import pandas as pd

from features.contracts import EventType, ExposureStatus, ExposureType, ItemKind
from features.warehouse import Warehouse
from training.attribution import AttributionRule, attribute, named, run

Period = Literal["day", "week", "all"]
PERIODS: tuple[str, ...] = ("day", "week", "all")
DIMENSIONS: dict[str, str] = {
    "channel": "channel", "placement": "placement", "kind": "item_kind",
    "model_version": "model_versions", "segment": "segment", "source": "source",
    "exposure_type": "exposure_type"}
"""What a report can break KPIs down by -> the column that holds it."""
KPI_DEFINITIONS: dict[str, str] = {
    "impressions": "items shown or sent (one per item per answer or message)",
    "exposures": "answers and messages that showed or sent at least one item",
    "customers_reached": "distinct customers with at least one impression",
    "clicks": "clicks attributed to these impressions",
    "add_to_carts": "add-to-cart events attributed to them",
    "purchases": "purchased lines attributed to them",
    "ctr": "clicks / impressions",
    "add_to_cart_rate": "add_to_carts / impressions",
    "conversion_rate": "customers with an attributed purchase / customers_reached",
    "attributed_revenue": "quantity x price of attributed purchases, minus their returns",
    "revenue_share": "attributed_revenue / all purchase revenue (net of returns) in the period",
    "revenue_per_customer": "attributed_revenue / customers_reached",
    "average_order_value": "attributed_revenue / orders (an order: a customer's session, or a "
                           "purchase event without one)",
    "offer_redemption_rate": "attributed offer redemptions / offer impressions",
    "catalog_coverage": "distinct items shown / items in the catalog of the kinds shown",
    "popularity_bias": "mean popularity percentile of the items shown (0.5: as popular as the "
                       "average catalog item; 1: only the most popular)",
}


@dataclass(frozen=True)
class KpiReport:
    start: datetime
    end: datetime
    by: tuple[str, ...]
    period: str
    kpis: pd.DataFrame
    """One row per period and group: every KPI in ``KPI_DEFINITIONS``."""
    funnel: pd.DataFrame
    """stage, count, rate from the previous stage, rate from impressions."""
    messages: pd.DataFrame
    """Per period, channel and trigger: decided, sent, suppressed, converted, conversion_rate."""
    suppressions: pd.DataFrame
    """Suppressed messages per contact-policy rule."""


def kpis(warehouse: Warehouse, start: datetime, end: datetime, by: Sequence[str] = (),
         period: Period = "day", rule: AttributionRule | None = None) -> pd.DataFrame:
    """The KPI table of ``kpi_report`` (for notebooks)."""
    return kpi_report(warehouse, start, end, by, period, rule).kpis


def kpi_report(warehouse: Warehouse, start: datetime, end: datetime, by: Sequence[str] = (),
               period: Period = "day", rule: AttributionRule | None = None) -> KpiReport:
    """KPIs of the exposures made in ``[start, end)``, per ``period`` and broken down ``by``
    any of ``DIMENSIONS``."""
    by = check_request(start, end, by, period)
    rule = rule or AttributionRule()
    segments = ("LEFT JOIN customers c USING (customer_id)", "c.segment") if "segment" in by \
        else ("", "NULL AS segment")

    def compute(connection) -> KpiReport:
        attribute(connection, start, end, rule)
        _popularity(connection, end)
        params = {"start": start, "end": end}
        bucket = _bucket(period)
        keys = ["period", *by]
        dims = "".join(f", {DIMENSIONS[d]} AS {d}" for d in by)
        # Two passes over the impressions, each a plain GROUP BY that runs on every core (one
        # pass with three count(DISTINCT)s took twice as long): per item, for the item counts
        # and popularity, and per exposure, for exposures and customers reached.
        shown = (f"SELECT {bucket.format(t='s.exposed_at')} AS period{dims}, s.* "
                 f"FROM (SELECT s.*, {segments[1]} FROM shown s {segments[0]}) s "
                 "WHERE s.item_id IS NOT NULL AND s.exposed_at >= $start")
        group = ", ".join(keys)
        by_item = _query(connection, f"""
            SELECT {group}, sum(n) AS impressions, count(*) AS distinct_items,
                   list(DISTINCT item_kind) AS kinds,
                   sum(n) FILTER (item_kind = '{ItemKind.OFFER.value}') AS offer_impressions,
                   sum(n * coalesce(p.percentile, 0)) / sum(n) AS popularity_bias
            FROM (SELECT {group}, item_id, any_value(item_kind) AS item_kind, count(*) AS n
                  FROM ({shown}) GROUP BY ALL) i
            LEFT JOIN popularity p USING (item_id)
            GROUP BY ALL""", params)
        by_exposure = _query(connection, f"""
            SELECT {group}, count(*) AS exposures,
                   count(DISTINCT customer_id) AS customers_reached
            FROM (SELECT {group}, exposure_id, any_value(customer_id) AS customer_id
                  FROM ({shown}) GROUP BY ALL)
            GROUP BY ALL""", params)
        seen = by_item.merge(by_exposure, on=keys)
        seen["offer_impressions"] = seen["offer_impressions"].fillna(0)
        earned = _query(connection, f"""
            SELECT {bucket.format(t="a.exposed_at")} AS period{dims},
                   count_if(event_type = '{EventType.CLICK.value}') AS clicks,
                   count_if(event_type = '{EventType.ADD_TO_CART.value}') AS add_to_carts,
                   count_if(event_type = '{EventType.PURCHASE.value}') AS purchases,
                   count_if(event_type = '{EventType.OFFER_REDEEMED.value}') AS redemptions,
                   count(DISTINCT CASE WHEN event_type = '{EventType.PURCHASE.value}'
                         THEN customer_id END) AS converted_customers,
                   count(DISTINCT CASE WHEN event_type = '{EventType.PURCHASE.value}'
                         THEN customer_id || '/' || coalesce(session_id, event_id) END) AS orders,
                   coalesce(sum(revenue), 0) AS attributed_revenue
            FROM (SELECT a.*, {segments[1]} FROM attributed a {segments[0]}) a
            GROUP BY ALL""", params)
        total = _query(connection, f"""
            SELECT {bucket.format(t="e.timestamp")} AS period,
                   sum(CASE WHEN event_type = '{EventType.RETURN.value}' THEN -1 ELSE 1 END
                       * quantity * coalesce(e.price, i.price, 0)) AS all_revenue
            FROM events e LEFT JOIN items i USING (item_id)
            WHERE e.timestamp >= $start AND e.timestamp < $end
              AND event_type IN ('{EventType.PURCHASE.value}', '{EventType.RETURN.value}')
            GROUP BY ALL""", params)
        catalog = dict(connection.execute(
            "SELECT kind, count(*) FROM items GROUP BY kind").fetchall())
        funnel = _funnel(seen, earned)
        messages, suppressions = _messages(connection, bucket, params, rule)
        table = _kpi_table(seen, earned, total, catalog, keys)
        return KpiReport(start, end, tuple(by), period, table, funnel, messages, suppressions)

    return warehouse.analyse(compute)


def check_request(start: datetime, end: datetime, by: Sequence[str], period: str
                  ) -> tuple[str, ...]:
    """The breakdown as a tuple, or an error that names what is wrong and what would do."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("from and to need a time zone (e.g. 2024-05-01T00:00:00Z)")
    if start >= end:
        raise ValueError(f"the period is empty: from {start.isoformat()} is not before to "
                         f"{end.isoformat()}")
    if period not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}, got {period!r}")
    unknown = [d for d in by if d not in DIMENSIONS]
    if unknown:
        raise ValueError(f"cannot break KPIs down by {', '.join(map(repr, unknown))}: expected "
                         f"any of {', '.join(DIMENSIONS)}")
    if len(set(by)) != len(by):
        raise ValueError(f"by names a dimension twice: {', '.join(by)}")
    return tuple(by)


def _bucket(period: str) -> str:
    """SQL of the start of the period a time ``{t}`` falls in, in UTC: days, weeks from Monday
    (1970-01-05 was one), or the report's start. Arithmetic on epoch seconds: date_trunc with a
    time zone cost three times as much over ten million rows."""
    if period == "all":
        return "$start::TIMESTAMPTZ"
    length, offset = {"day": (86400, 0), "week": (7 * 86400, 4 * 86400)}[period]
    return f"to_timestamp(floor((epoch({{t}}) - {offset}) / {length}) * {length} + {offset})"


def _dates(moments: pd.Series) -> pd.Series:
    """Period starts as UTC dates, whatever time zone DuckDB handed them in."""
    return pd.to_datetime(moments, utc=True).dt.date


def _query(connection, sql: str, params: dict) -> pd.DataFrame:
    """``sql``'s result, given the ``params`` it names."""
    return connection.execute(sql, named(params, sql)).df()


def _popularity(connection, end: datetime) -> None:
    """Each catalog item's popularity percentile within its kind, from the events before
    ``end`` (items no one touched rank lowest)."""
    kinds = ", ".join(f"'{t.value}'" for t in (EventType.VIEW, EventType.CLICK,
                                              EventType.ADD_TO_CART, EventType.PURCHASE))
    run(connection, f"""
        CREATE OR REPLACE TEMP TABLE popularity AS
        SELECT i.item_id,
               percent_rank() OVER (PARTITION BY i.kind ORDER BY coalesce(n.events, 0))
                   AS percentile
        FROM items i LEFT JOIN (SELECT item_id, count(*) AS events FROM events
                                WHERE timestamp < $end AND event_type IN ({kinds})
                                GROUP BY item_id) n USING (item_id)
    """, {"end": end})


def _kpi_table(seen: pd.DataFrame, earned: pd.DataFrame, total: pd.DataFrame,
               catalog: dict[str, int], keys: list[str]) -> pd.DataFrame:
    counts = ["clicks", "add_to_carts", "purchases", "redemptions", "converted_customers",
              "orders", "attributed_revenue"]
    table = seen.merge(earned, on=keys, how="left")
    table[counts] = table[counts].fillna(0)
    table = table.merge(total, on="period", how="left")

    def ratio(numerator: str, denominator: str) -> pd.Series:
        bottom = table[denominator].astype(float)
        return (table[numerator] / bottom).where(bottom > 0)

    table["ctr"] = ratio("clicks", "impressions")
    table["add_to_cart_rate"] = ratio("add_to_carts", "impressions")
    table["conversion_rate"] = ratio("converted_customers", "customers_reached")
    table["revenue_share"] = ratio("attributed_revenue", "all_revenue")
    table["revenue_per_customer"] = ratio("attributed_revenue", "customers_reached")
    table["average_order_value"] = ratio("attributed_revenue", "orders")
    table["offer_redemption_rate"] = ratio("redemptions", "offer_impressions")
    size = table["kinds"].map(lambda kinds: sum(catalog.get(k, 0) for k in kinds if k))
    table["catalog_coverage"] = (table["distinct_items"] / size).where(size > 0)
    table = table.sort_values(keys).reset_index(drop=True)
    table["period"] = _dates(table["period"])
    for column in ("impressions", "exposures", "customers_reached", "clicks", "add_to_carts",
                   "purchases"):
        table[column] = table[column].astype(np.int64)
    return table[[*keys, *KPI_DEFINITIONS]]


def _funnel(seen: pd.DataFrame, earned: pd.DataFrame) -> pd.DataFrame:
    stages = [("impression", seen["impressions"].sum()), ("click", earned["clicks"].sum()),
              ("add_to_cart", earned["add_to_carts"].sum()),
              ("purchase", earned["purchases"].sum())]
    funnel = pd.DataFrame(stages, columns=["stage", "count"])
    funnel["count"] = funnel["count"].astype(np.int64)
    first = funnel["count"].iloc[0]
    funnel["rate_from_previous"] = (funnel["count"] / funnel["count"].shift()).where(
        funnel["count"].shift() > 0)
    funnel["rate_from_impressions"] = funnel["count"] / first if first else np.nan
    return funnel


def _messages(connection, bucket: str, params: dict, rule: AttributionRule
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    window = f"INTERVAL {int(rule.purchase_window.total_seconds())} SECOND"
    messages = _query(connection, f"""
        WITH decided AS (
            SELECT exposure_id, any_value(customer_id) AS customer_id,
                   min(timestamp) AS decided_at, any_value(channel) AS channel,
                   any_value(placement) AS trigger, any_value(status) AS status
            FROM exposures
            WHERE exposure_type = '{ExposureType.MESSAGE.value}'
              AND timestamp >= $start AND timestamp < $end
            GROUP BY exposure_id),
        converted AS (
            SELECT DISTINCT d.exposure_id FROM decided d JOIN events e
              ON e.customer_id = d.customer_id AND e.event_type = '{EventType.PURCHASE.value}'
             AND e.timestamp >= d.decided_at AND e.timestamp <= d.decided_at + {window}
            WHERE d.status = '{ExposureStatus.SENT.value}')
        SELECT {bucket.format(t="decided_at")} AS period, channel, trigger,
               count(*) AS decided,
               count_if(status = '{ExposureStatus.SENT.value}') AS sent,
               count_if(status = '{ExposureStatus.SUPPRESSED.value}') AS suppressed,
               count(c.exposure_id) AS converted
        FROM decided LEFT JOIN converted c USING (exposure_id)
        GROUP BY ALL ORDER BY ALL""", params)
    messages["conversion_rate"] = (messages["converted"] / messages["sent"]).where(
        messages["sent"] > 0)
    if len(messages):
        messages["period"] = _dates(messages["period"])
    suppressions = _query(connection, f"""
        SELECT rule, count(DISTINCT exposure_id) AS suppressed FROM exposures
        WHERE status = '{ExposureStatus.SUPPRESSED.value}'
          AND timestamp >= $start AND timestamp < $end
        GROUP BY rule ORDER BY suppressed DESC, rule""", params)
    return messages, suppressions

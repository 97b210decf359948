"""A KPI report as people read it: CSV for spreadsheets, and one HTML page with its charts
(trend per KPI, the funnel, breakdown bars) embedded as PNG, so it opens without internet.

Drawn on figures of their own, not through pyplot (as ``training.plots``): library code never
chooses a matplotlib backend.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from training.kpis import KPI_DEFINITIONS, KpiReport
from training.plots import png_base64

TREND_KPIS = ("impressions", "ctr", "conversion_rate", "attributed_revenue", "revenue_share",
              "catalog_coverage")
RATES = {"ctr", "add_to_cart_rate", "conversion_rate", "revenue_share", "offer_redemption_rate",
         "catalog_coverage", "popularity_bias"}


def write_csv(report: KpiReport, path: Path) -> Path:
    report.kpis.to_csv(path, index=False)
    return path


def write_html(report: KpiReport, path: Path) -> Path:
    """One self-contained page: headline numbers, charts, the tables, the definitions."""
    title = (f"nextbest KPIs {report.start:%Y-%m-%d} to {report.end:%Y-%m-%d}"
             + (f" by {', '.join(report.by)}" if report.by else "") + f", per {report.period}")
    charts = [_trend(report), _funnel(report)]
    if report.by:
        charts.append(_breakdown(report))
    sections = "".join(f'<img alt="chart" src="data:image/png;base64,{c}">' for c in charts)
    definitions = "".join(f"<tr><td>{k}</td><td>{html.escape(v)}</td></tr>"
                          for k, v in KPI_DEFINITIONS.items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse;
margin:1em 0}} td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
img{{max-width:100%;display:block;margin:1em 0}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Outcomes count in the period of the exposure that earned them; attribution as
docs/analytics.md describes (direct ids, then the click and purchase windows).</p>
{sections}
<h2>KPIs</h2>{_table(report.kpis)}
<h2>Funnel</h2>{_table(report.funnel)}
<h2>Messages</h2>{_table(report.messages)}
<h2>Suppressed messages by rule</h2>{_table(report.suppressions)}
<h2>Definitions</h2><table>{definitions}</table></body></html>"""
    path.write_text(page)
    return path


def _table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p>none in this period</p>"
    return frame.to_html(index=False, float_format=lambda x: f"{x:,.4g}", na_rep="")


def _trend(report: KpiReport) -> str:
    figure = Figure(figsize=(12, 6))
    axes = figure.subplots(2, 3).ravel()
    table = report.kpis
    for axis, kpi in zip(axes, TREND_KPIS, strict=True):
        if report.by:
            for name, group in table.groupby(list(report.by)):
                label = " / ".join(map(str, name if isinstance(name, tuple) else (name,)))
                axis.plot(group["period"].astype(str), group[kpi], marker="o", label=label)
        else:
            axis.plot(table["period"].astype(str), table[kpi], marker="o")
        axis.set_title(kpi)
        axis.tick_params(axis="x", labelrotation=45, labelsize=7)
        axis.grid(alpha=0.3)
    if report.by and len(table):
        axes[0].legend(fontsize=7)
    figure.suptitle("trend per KPI")
    return png_base64(figure)


def _funnel(report: KpiReport) -> str:
    figure = Figure(figsize=(7, 3.5))
    axis = figure.subplots()
    funnel = report.funnel
    bars = axis.barh(funnel["stage"][::-1], funnel["count"][::-1], color="#4c72b0")
    for bar, rate in zip(bars, funnel["rate_from_previous"][::-1], strict=True):
        if pd.notna(rate):
            axis.annotate(f"{rate:.1%} of previous", (bar.get_width(), bar.get_y() + 0.4),
                          fontsize=8, va="center")
    axis.set_xscale("symlog")
    axis.set_title("funnel: impression -> click -> add to cart -> purchase")
    return png_base64(figure)


def _breakdown(report: KpiReport) -> str:
    table = report.kpis.groupby(list(report.by)).agg(
        impressions=("impressions", "sum"), clicks=("clicks", "sum"),
        attributed_revenue=("attributed_revenue", "sum"))
    table["ctr"] = table["clicks"] / table["impressions"].where(table["impressions"] > 0)
    labels = [" / ".join(map(str, k if isinstance(k, tuple) else (k,))) for k in table.index]
    figure = Figure(figsize=(12, 3.5))
    for axis, kpi in zip(figure.subplots(1, 3), ("impressions", "ctr", "attributed_revenue"),
                         strict=True):
        axis.bar(labels, table[kpi], color="#55a868")
        axis.set_title(f"{kpi} by {', '.join(report.by)}")
        axis.tick_params(axis="x", labelrotation=45, labelsize=7)
    return png_base64(figure)

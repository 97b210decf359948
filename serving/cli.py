"""The ``nextbest`` command: every sub-command of every layer, assembled in one place."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import mlflow
import pandas as pd
import typer
from mlflow import MlflowClient

from features.cli import (
    console,
    data_app,
    features_app,
    friendly_errors,
    summary_tables,
    warehouse_at,
)
from features.contracts import CONTRACTS
from features.point_in_time import build_feature_table
from features.settings import get_settings
from features.synthetic import ShopConfig, generate_shop, store_shop
from features.validation import validate_table
from training.cli import models_app, scores_app, train_app
from training.propensity.export import export_scores
from training.propensity_job import train_propensity
from training.recommender_job import train_recommender

app = typer.Typer(
    help="nextbest: next best products, content and offers for every retail customer.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
app.add_typer(train_app, name="train")
app.add_typer(models_app, name="models")
app.add_typer(scores_app, name="scores")


@app.command()
@friendly_errors
def demo(
    events: Annotated[int, typer.Option(min=100, help="Size of the built-in synthetic shop.")] = 200_000,
    seed: Annotated[int, typer.Option(help="Random seed of the synthetic shop.")] = 42,
    data_dir: Annotated[Path | None, typer.Option(help="Warehouse directory.")] = None,
) -> None:
    """The main job on built-in data: generate a shop, validate it, build features, then train,
    evaluate and register recommenders and answer for one customer with the champion, and
    train a purchase-propensity model and export the top customers with their reasons."""
    warehouse = warehouse_at(data_dir)
    console.rule("1. synthetic shop")
    shop = generate_shop(ShopConfig.for_events(events, seed=seed))
    for name, frame in (("events", shop.events), ("items", shop.items),
                        ("customers", shop.customers)):
        _, report = validate_table(frame, CONTRACTS[name], f"generated {name}")
        console.print(report.describe(), highlight=False)
    store_shop(warehouse, shop)
    console.rule("2. warehouse")
    for table in summary_tables(warehouse, warehouse.counts()):
        console.print(table)
    console.rule("3. point-in-time features")
    last = shop.events["timestamp"].max().ceil("D")
    cutoffs = [last - pd.Timedelta(days=30 * i) for i in (2, 1, 0)]
    table = build_feature_table(lambda m: warehouse.events(end=m), cutoffs, warehouse.items())
    console.print(f"{len(table):,} rows (customer x cutoff) x {table.shape[1] - 2} features; "
                  f"cutoffs {', '.join(f'{c:%Y-%m-%d}' for c in cutoffs)}")
    console.print(table.groupby("cutoff")[["purchases_30d", "revenue_30d", "abandoned_carts_90d"]]
                  .mean().round(2).to_string())

    console.rule("4. recommender: train, evaluate, register, gate")
    settings = get_settings().model_copy(update={"data_dir": data_dir} if data_dir else {})
    for model in ("popularity", "ease"):
        with console.status(f"training {model}"):
            outcome = train_recommender(settings, model, warehouse=warehouse)
        console.print(f"{model:<10} nDCG@10 {outcome.metrics['ndcg@10']:.4f}  "
                      f"recall@10 {outcome.metrics['recall@10']:.4f}  -> version {outcome.version}: "
                      f"{outcome.decision.reason}")
    client = MlflowClient()
    champion = client.get_model_version_by_alias(settings.recommender_name, "champion")
    model = mlflow.pyfunc.load_model(f"models:/{settings.recommender_name}@champion")
    customer = shop.events["customer_id"].iloc[-1]
    answer = model.predict(pd.DataFrame({"customer_id": [customer], "n": [5]}))
    console.print(f"champion is version {champion.version}; its top 5 for {customer}:")
    titles = shop.items.set_index("item_id")["title"]
    for row in answer.itertuples():
        console.print(f"  {row.rank}. {row.item_id}  {titles.get(row.item_id, '')}  "
                      f"(score {row.score:.3f})")

    console.rule("5. purchase propensity: train, calibrate, register, export")
    with console.status("training purchase propensity"):
        propensity = train_propensity(settings, "purchase", warehouse=warehouse)
    m = propensity.metrics
    console.print(f"ROC-AUC {m['roc_auc']:.3f} (recency {m['recency/roc_auc']:.3f}, RFM "
                  f"{m['rfm_logistic/roc_auc']:.3f}), Brier {m['brier']:.4f}, ECE {m['ece']:.4f} "
                  f"-> version {propensity.version}: {propensity.decision.reason}")
    out = (data_dir or settings.data_dir) / "exports" / "top_customers.csv"
    top = export_scores(settings, settings.propensity_name, out, top=3)
    for row in top.itertuples():
        console.print(f"  {row.customer_id} ({row.segment}) score {row.score:.2f}: {row.reason_1}")
    console.print(f"top customers exported to {out}")
    console.print(f"MLflow store: {settings.resolved_tracking_uri()}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""The ``nextbest`` command: every sub-command of every layer, assembled in one place."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
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
from serving.realtime_cli import events_app, policy_app, triggers_app
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
app.add_typer(policy_app, name="policy")
app.add_typer(events_app, name="events")
app.add_typer(triggers_app, name="triggers")


@app.command()
@friendly_errors
def demo(
    events: Annotated[int, typer.Option(min=100, help="Size of the built-in synthetic shop.")] = 200_000,
    seed: Annotated[int, typer.Option(help="Random seed of the synthetic shop.")] = 42,
    data_dir: Annotated[Path | None, typer.Option(help="Warehouse directory.")] = None,
    serve: Annotated[bool, typer.Option(help="End by serving on --port until Ctrl+C.")] = True,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the service.")] = 3000,
) -> None:
    """The main job on built-in data: generate a shop, validate it, build features, then train,
    evaluate and register recommenders and answer for one customer with the champion, and
    train a purchase-propensity model and export the top customers with their reasons, then
    serve it all on port 3000 after printing one example request and its answer."""
    warehouse = warehouse_at(data_dir)
    console.rule("1. synthetic shop")
    # Dated to end today, so that offers valid now exist when the service answers.
    config = ShopConfig.for_events(events, seed=seed)
    today = pd.Timestamp.now(tz="UTC").normalize()
    shop = generate_shop(config.model_copy(
        update={"start": (today - pd.Timedelta(days=config.days)).to_pydatetime()}))
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
    if serve:
        console.rule("6. the service, on built-in data")
        example = {"customer_id": str(shop.events["customer_id"].iloc[-1]), "channel": "web",
                   "n": {"product": 3, "content": 1, "offer": 1}}
        run_service(data_dir or settings.data_dir, port, example)


def run_service(data_dir: Path, port: int, example: dict | None = None) -> None:
    """Start `bentoml serve` on the models of ``data_dir``, print one example request and
    its answer, then keep serving until interrupted."""
    env = {**os.environ, "NEXTBEST_DATA_DIR": str(Path(data_dir).resolve())}
    process = subprocess.Popen([sys.executable, "-m", "bentoml", "serve",
                                "serving.service:NextBest", "--port", str(port)],
                               cwd=Path(__file__).resolve().parents[1], env=env)
    url = f"http://localhost:{port}"
    # A SIGTERM (from a supervisor, or `timeout`) must also stop the server we started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        deadline = time.monotonic() + 180
        while not _ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise ValueError(f"the service did not become ready on {url}")
            time.sleep(0.5)
        if example is not None:
            console.print(f"POST {url}/recommend {json.dumps(example)}")
            request = urllib.request.Request(f"{url}/recommend", data=json.dumps(example).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                console.print_json(response.read().decode())
        console.print(f"nextbest is serving on {url} (OpenAPI docs at {url}/docs); Ctrl+C stops it")
        process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        process.terminate()
        process.wait(timeout=30)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@app.command()
@friendly_errors
def serve(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 3000,
    data_dir: Annotated[Path | None, typer.Option(help="Warehouse and model cache directory.")] = None,
) -> None:
    """Serve recommendations with the registered champion models (bentoml serve)."""
    run_service(data_dir or get_settings().data_dir, port)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

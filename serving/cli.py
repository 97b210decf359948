"""The ``nextbest`` command: every sub-command of every layer, assembled in one place.

It is also the command line's entry point, and the one place that chooses how charts are drawn
(``MPLBACKEND=Agg``, to files): library code never does, so a notebook keeps its inline charts.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Annotated

import typer

from features.cli import (
    DataDir,
    console,
    data_app,
    errors,
    features_app,
    friendly_errors,
    progress,
    settings_with,
    warehouse_at,
)
from serving.engagement.cli import journeys_app, policy_app
from serving.launch import version
from serving.realtime_cli import events_app
from training.cli import (
    evaluate_command,
    experiments_app,
    models_app,
    report_app,
    scores_app,
    train_app,
)

app = typer.Typer(
    help="nextbest: next best products, content and offers for every retail customer.",
    no_args_is_help=True, rich_markup_mode=None,
)
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
app.add_typer(train_app, name="train")
app.add_typer(models_app, name="models")
app.add_typer(scores_app, name="scores")
app.add_typer(policy_app, name="policy")
app.add_typer(events_app, name="events")
app.add_typer(journeys_app, name="journeys")
app.add_typer(report_app, name="report")
app.add_typer(experiments_app, name="experiments")
app.command("evaluate")(friendly_errors(evaluate_command))

Port = Annotated[int, typer.Option(min=1, max=65535, help="Port of the service.")]
Host = Annotated[str | None, typer.Option(
    help="Interface to listen on [default: $NEXTBEST_HOST or 127.0.0.1, this machine only; "
         "0.0.0.0 for every interface].")]


def _show_version(value: bool) -> None:
    if value:
        console.print(f"nextbest {version()}")
        raise typer.Exit()


@app.callback()
def main_options(
    show_version: Annotated[bool, typer.Option(
        "--version", callback=_show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """nextbest: next best products, content and offers for every retail customer."""


@app.command()
@friendly_errors
def demo(
    events: Annotated[int, typer.Option(min=100, help="Size of the built-in synthetic shop.")] = 200_000,
    seed: Annotated[int, typer.Option(help="Random seed of the synthetic shop.")] = 42,
    data_dir: DataDir = None,
    serve: Annotated[bool, typer.Option(help="End by serving on --port until Ctrl+C.")] = True,
    port: Port = 3000,
    host: Host = None,
) -> None:
    """The main job on built-in data: generate a shop, validate it, build features, then train,
    evaluate and register recommenders and answer for one customer with the champion, and
    train a purchase-propensity model and export the top customers with their reasons, then
    serve it all on port 3000 after printing one example request and its answer."""
    host = host or settings_with(data_dir).host
    if serve:
        require_free_port(port, host)  # before minutes of training, not after
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    from features.cli import summary_tables
    from features.contracts import CONTRACTS
    from features.point_in_time import FeatureOptions, build_feature_table
    from features.synthetic import ShopConfig, generate_shop, store_shop
    from features.validation import validate_table
    from training import registry
    from training.propensity.export import export_scores
    from training.propensity_job import train_propensity
    from training.recommender_job import train_recommender

    settings = settings_with(data_dir)
    warehouse = warehouse_at(data_dir)
    console.rule("1. synthetic shop")
    # Dated to end a week ago, so that offers valid now exist when the service answers, and the
    # last week is left to the simulated visits (step 6), whose outcomes then mix with no history.
    config = ShopConfig.for_events(events, seed=seed)
    history_end = pd.Timestamp.now(tz="UTC").normalize() - pd.Timedelta(days=DEMO_DAYS)
    shop = generate_shop(config.model_copy(
        update={"start": (history_end - pd.Timedelta(days=config.days)).to_pydatetime()}))
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
    table = build_feature_table(lambda m: warehouse.events(end=m), cutoffs, warehouse.items(),
                                FeatureOptions.from_settings(settings))
    console.print(f"{len(table):,} rows (customer x cutoff) x {table.shape[1] - 2} features; "
                  f"cutoffs {', '.join(f'{c:%Y-%m-%d}' for c in cutoffs)}")
    console.print(table.groupby("cutoff")[["purchases_30d", "revenue_30d", "abandoned_carts_90d"]]
                  .mean().round(2).to_string())

    console.rule("4. recommender: train, evaluate, register, gate")
    for model in ("popularity", "ease"):
        with console.status(f"training {model}"):
            outcome = train_recommender(settings, model, warehouse=warehouse)
        console.print(f"{model:<10} nDCG@10 {outcome.metrics['ndcg@10']:.4f}  "
                      f"recall@10 {outcome.metrics['recall@10']:.4f}  -> version {outcome.version}: "
                      f"{outcome.decision.reason}", highlight=False)
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
                  f"-> version {propensity.version}: {propensity.decision.reason}", highlight=False)
    if registry.champion_version(client, settings.propensity_name) is None:
        console.print("no propensity model is champion, so no scores are exported and the "
                      "service's propensity endpoint answers 503 until one beats the baselines")
    else:
        out = settings.data_dir / "exports" / "top_customers.csv"
        top = export_scores(settings, settings.propensity_name, out, top=3)
        for row in top.itertuples():
            console.print(f"  {row.customer_id} ({row.segment}) score {row.score:.2f}: "
                          f"{row.reason_1}")
        console.print(f"top customers exported to {out}")
    console.print(f"MLflow store: {settings.resolved_tracking_uri()}")
    console.rule("6. a simulated week, with an experiment running")
    from serving.simulator import SimulationConfig

    experiment = start_demo_experiment(settings)
    simulated = _simulate_with_progress(settings, SimulationConfig(
        days=DEMO_DAYS, visits_per_day=DEMO_VISITS, seed=seed))
    _print_simulation(simulated)
    if experiment is not None:
        _print_experiment(settings, experiment)
    _print_journeys(settings, simulated.start, simulated.end)
    if serve:
        console.rule("7. the service, on built-in data")
        example = {"customer_id": str(shop.events["customer_id"].iloc[-1]), "channel": "web",
                   "n": {"product": 3, "content": 1, "offer": 1}}
        run_service(settings.data_dir, port, example, host)


DEMO_DAYS, DEMO_VISITS = 7, 300
DEMO_EXPERIMENT = "personalization"


def start_demo_experiment(settings) -> str | None:
    """Write an experiments file with one experiment that started a week ago: half the
    customers answered by the recommender, half by best sellers. A file already there is left
    as it is (and its experiments run instead)."""
    from datetime import UTC, datetime, timedelta

    import yaml

    from features.experiments import load_plan, plan_path

    path = plan_path(settings)
    if path.exists():
        console.print(f"{path} exists: its experiments run during the simulated week")
        return None
    started = datetime.now(UTC) - timedelta(days=DEMO_DAYS)
    path.write_text(yaml.safe_dump({"experiments": [{
        "name": DEMO_EXPERIMENT, "traffic": 1.0, "primary_metric": "ctr",
        "minimum_detectable_effect": 0.1, "start": started.isoformat(timespec="seconds"),
        "variants": [{"name": "best_sellers", "weight": 1, "personalized": False},
                     {"name": "personal", "weight": 1}]}]}, sort_keys=False))
    load_plan(path)  # valid, as the service will read it
    console.print(f"experiment '{DEMO_EXPERIMENT}' in {path}: half the customers get best "
                  "sellers, half the recommender's answers (it keeps running when the service "
                  "starts; 'nextbest experiments stop personalization' ends it)")
    return DEMO_EXPERIMENT


def _print_experiment(settings, name: str) -> None:
    from datetime import UTC, datetime

    from features.experiments import load_plan, plan_path
    from features.warehouse import Warehouse
    from training.experiment_report import experiment_report

    experiment = load_plan(plan_path(settings)).experiment(name)
    report = experiment_report(Warehouse(settings.data_dir / "warehouse"), experiment,
                               datetime.now(UTC))
    console.print(f"experiment '{name}', {sum(report.ratio.counts.values()):,} customers: "
                  f"{report.verdict}", highlight=False)
    console.print(f"see it with: nextbest experiments report {name}")


def _print_journeys(settings, start, end) -> None:
    """What each journey did in the simulated week, one line each."""
    from datetime import timedelta

    from features.warehouse import Warehouse
    from serving.engagement.journeys import journeys_in_force
    from training.journey_report import journey_report

    warehouse = Warehouse(settings.data_dir / "warehouse")
    for journey in journeys_in_force(settings).journeys:
        report = journey_report(warehouse, journey.outline(), start, end + timedelta(minutes=1),
                                settings.purchase_window_days)
        entered = int(report.runs["entered"].sum())
        if entered:
            console.print(f"journey {journey.name}: {entered:,} runs, "
                          f"{int(report.steps['sent'].sum()):,} messages sent, "
                          f"{int(report.steps['suppressed'].sum()):,} suppressed", highlight=False)
    console.print("see one with: nextbest journeys report cart_recovery")


def require_free_port(port: int, host: str) -> None:
    """Refuse to start when something already listens on the port: a readiness check would
    then reach that program, and report its answers as ours."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            why = "is in use by another program" if error.errno == errno.EADDRINUSE else \
                f"cannot be listened on ({error.strerror})"
            raise ValueError(f"port {port} {why}; stop it, or choose another port with --port "
                             f"(make demo PORT=...)") from None


def run_service(data_dir: Path, port: int, example: dict | None = None,
                host: str = "127.0.0.1") -> None:
    """Start `bentoml serve` on the models of ``data_dir``, listening on ``host``, and the
    background worker beside it (unless NEXTBEST_BACKGROUND_WORKER=false), print one example
    request and its answer, then keep serving until interrupted. Exits non-zero if the service
    stops."""
    require_free_port(port, host)
    env = {**os.environ, "NEXTBEST_DATA_DIR": str(Path(data_dir).resolve())}
    root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen([sys.executable, "-m", "bentoml", "serve",
                                "serving.service:NextBest", "--port", str(port), "--host", host],
                               cwd=root, env=env)
    background = (subprocess.Popen([sys.executable, "-m", "serving.cli", "worker"],
                                   cwd=root, env=env)
                  if settings_with(data_dir).background_worker else None)
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::", "localhost") else host
    url = f"http://{shown}:{port}"
    # A SIGTERM (from a supervisor, or `timeout`) must also stop the server we started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        deadline = time.monotonic() + 180
        while not _ready(url):
            if process.poll() is not None:
                raise ValueError(f"the service stopped (exit code {process.returncode}) before "
                                 f"it was ready on {url}; its log is above")
            if time.monotonic() > deadline:
                raise ValueError(f"the service did not become ready on {url} within 3 minutes")
            time.sleep(0.5)
        if example is not None:
            console.print(f"POST {url}/recommend {json.dumps(example)}")
            request = urllib.request.Request(f"{url}/recommend", data=json.dumps(example).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                console.print_json(response.read().decode())
        where = "every interface" if host in ("0.0.0.0", "::") else f"{host} only"
        console.print(f"nextbest is serving on {url}, listening on {where} (OpenAPI docs at "
                      f"{url}/docs); Ctrl+C stops it")
        code = process.wait()
        if code != 0:
            errors.print(f"the service stopped with exit code {code}")
            raise typer.Exit(code=1)
    except KeyboardInterrupt:
        pass
    finally:
        for started in (process, background):
            if started is not None:
                started.terminate()
                started.wait(timeout=30)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@app.command()
@friendly_errors
def simulate(
    days: Annotated[float, typer.Option(help="Simulated days, ending now.")] = 1.0,
    customers: Annotated[int, typer.Option(min=1, help="Customer visits per simulated day.")
                         ] = 300,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed draws the same visits "
                                      "and choices.")] = 7,
    tagged_share: Annotated[float, typer.Option(
        min=0, max=1, help="Share of clicks, carts and purchases that carry the "
                           "recommendation_id or decision_id they respond to.")] = 0.5,
    ranker: Annotated[str, typer.Option(
        help="pipeline (the service's ranking) or popularity (best sellers, the baseline).")
    ] = "pipeline",
    url: Annotated[str | None, typer.Option(
        help="Ask the service running here (e.g. http://localhost:3000) instead of ranking in "
             "this process; it records exposures and its scheduler runs the journeys, on its clock.")
    ] = None,
    token: Annotated[str | None, typer.Option(
        help="Bearer token for --url, when the service needs one.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Replay the built-in shop's customers through the real ranking: they are shown the
    answers, click, buy and redeem as their known tastes say, and their events (and the
    exposures) are recorded, so that KPIs and experiments have real numbers to read."""
    from serving.simulator import SimulationConfig

    if ranker not in ("pipeline", "popularity"):
        raise ValueError(f"--ranker must be pipeline or popularity, got {ranker!r}")
    settings = settings_with(data_dir)
    config = SimulationConfig(days=days, visits_per_day=customers, seed=seed,
                              tagged_share=tagged_share, ranker=ranker)
    result = _simulate_with_progress(settings, config, url, token)
    _print_simulation(result)


def _simulate_with_progress(settings, config, url: str | None = None, token: str | None = None):
    from serving.simulator import simulate as run_simulation

    with progress() as bar:
        task = bar.add_task("simulated visits", total=None)
        result = run_simulation(settings, config, url, token,
                                lambda done, total: bar.update(task, completed=done, total=total))
    return result


def _print_simulation(result) -> None:
    truth = result.frame()
    counts = truth["event_type"].value_counts()
    console.print(
        f"simulated {result.start:%Y-%m-%d %H:%M} to {result.end:%Y-%m-%d %H:%M} UTC: "
        f"{result.exposures:,} answers and messages ({result.messages:,} messages), "
        f"{sum(result.impressions.values()):,} items shown; {counts.get('click', 0):,} clicks, "
        f"{counts.get('purchase', 0):,} purchases, {counts.get('offer_redeemed', 0):,} offers "
        f"redeemed; product click-through {result.ctr():.2%}; revenue earned by what was shown "
        f"{result.attributable_revenue:,.2f}", highlight=False)
    console.print("see the KPIs with: nextbest report kpis --by channel,kind")


@app.command()
@friendly_errors
def serve(port: Port = 3000, host: Host = None, data_dir: DataDir = None) -> None:
    """Serve recommendations with the registered champion models (bentoml serve)."""
    settings = settings_with(data_dir)
    run_service(settings.data_dir, port, host=host or settings.host)


def _stop_as_interrupted(*_) -> None:
    """SIGTERM (Kubernetes stopping a pod) ends a loop the way Ctrl+C does, through its cleanup."""
    raise KeyboardInterrupt


@app.command()
@friendly_errors
def worker(
    once: Annotated[bool, typer.Option("--once", help="One pass over what is due, then exit.")
                    ] = False,
    interval: Annotated[float | None, typer.Option(
        min=0.05, help="Seconds between passes of the journey scheduler [default: "
                       "NEXTBEST_JOURNEY_INTERVAL_SECONDS, 0.2].")] = None,
    data_dir: DataDir = None,
) -> None:
    """The background worker, one per deployment beside the API workers: the journey scheduler
    (journeys and trigger rules) every --interval seconds, the warehouse flush every
    NEXTBEST_FLUSH_INTERVAL_SECONDS; it reads changed journeys, policy and experiments files
    again and follows the serving alias. Ctrl+C (or SIGTERM) stops it after a last flush."""
    from serving.background import BackgroundWorker

    settings = settings_with(data_dir)
    signal.signal(signal.SIGTERM, _stop_as_interrupted)
    background = BackgroundWorker(settings, interval)
    if background.waiting_for is not None:
        if once:
            raise ValueError(f"no models to run the journeys with: {background.waiting_for}")
        console.print(f"no models yet, journeys wait (flushing goes on): {background.waiting_for}",
                      highlight=False)
    plan = background.engine.plan
    flush = (f"flushing every {settings.flush_interval_seconds:g} s"
             if settings.flush_interval_seconds > 0 else "not flushing (interval 0)")
    console.print(f"background worker: journeys {', '.join(j.name for j in plan.journeys) or 'none'}"
                  f" every {background.interval:g} s; {flush}"
                  + ("" if once else "; Ctrl+C stops"), highlight=False)

    def show(report) -> None:
        if report.outcomes or once:
            console.print(f"{time.strftime('%H:%M:%S')} {sum(report.outcomes.values())} "
                          f"outcome(s) in {report.seconds:.2f} s: "
                          + (", ".join(f"{k} {v}" for k, v in sorted(report.outcomes.items()))
                             or "nothing due"), highlight=False)
        if report.moved_events or report.moved_exposures:
            console.print(f"moved {report.moved_events:,} event(s) and "
                          f"{report.moved_exposures:,} exposure row(s) to the warehouse")
        for note in report.notes:
            console.print(note, highlight=False)

    totals = background.run(once, show)
    console.print(f"done: {', '.join(f'{k} {v}' for k, v in sorted(totals.items())) or 'nothing'}",
                  highlight=False)


def main() -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")  # charts go to files from the command line
    app()


if __name__ == "__main__":
    main()

"""Training job, MLflow logging and the champion/challenger registry, against real stores:
an embedded SQLite store by default, and an MLflow server on the local PostgreSQL."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlflow import MlflowClient
from typer.testing import CliRunner

from features.settings import Settings
from features.synthetic import ShopConfig, generate_shop, store_shop
from features.warehouse import Warehouse
from serving.cli import app
from tests.conftest import tracking_server_on_postgresql
from training import registry
from training.recommender_job import train_recommender

SHOP = ShopConfig(n_customers=400, n_products=120, days=75, seed=11)
"""A shop where item-kNN clearly beats popularity on new items (0.15 against 0.10 nDCG@10):
the gate's tests need a model that deserves promotion. Most of a fortnight's purchases are
restocks, which the new-items view leaves out, so a smaller shop evaluates too few customers
to tell the two apart."""


@pytest.fixture(scope="module")
def shop():
    return generate_shop(SHOP)


@pytest.fixture
def settings(tmp_path: Path, shop) -> Settings:
    store_shop(Warehouse(tmp_path / "warehouse"), shop)
    return Settings(data_dir=tmp_path, test_days=14)


def aliases(settings: Settings) -> dict[str, str]:
    client = MlflowClient(settings.resolved_tracking_uri())
    found = {}
    for alias in (registry.CHAMPION, registry.CHALLENGER):
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            found[alias] = str(client.get_model_version_by_alias("recommender", alias).version)
    return found


scores = st.floats(0, 1)


@given(challenger=scores, champion=scores, baselines=st.dictionaries(
    st.sampled_from(["recency", "rfm_logistic"]), scores), margin=st.floats(0, 0.5))
def test_the_gate_promotes_exactly_when_the_challenger_beats_champion_and_every_baseline(
        challenger, champion, baselines, margin):
    decision = registry.decide("2", "roc_auc", challenger, "1", champion, baselines, margin)
    references = [champion, *baselines.values()]
    assert decision.promoted == all(challenger > r and challenger >= r * (1 + margin)
                                    for r in references)


@given(challenger=scores, champion=scores, baseline=scores)
def test_for_a_loss_metric_lower_is_better(challenger, champion, baseline):
    decision = registry.decide("2", "brier", challenger, "1", champion, {"rfm_logistic": baseline})
    assert decision.promoted == (challenger < champion and challenger < baseline)


def test_a_tie_is_not_a_win():
    decision = registry.decide("2", "ndcg@10", 0.082, "1", 0.082)
    assert not decision.promoted
    assert decision.reason == ("version 2 is not promoted: on ndcg@10 it does not beat "
                               "champion 1 (0.0820 against its 0.0820)")


def test_a_first_version_that_loses_to_a_baseline_is_not_champion_and_the_reason_says_why():
    decision = registry.decide("1", "roc_auc", 0.801, None, None,
                               {"recency": 0.791, "rfm_logistic": 0.806})
    assert not decision.promoted
    assert decision.reason == ("version 1 is not promoted: on roc_auc it does not beat baseline "
                               "rfm_logistic (0.8060 against its 0.8010)")


def test_a_promotion_names_every_comparison_it_won():
    decision = registry.decide("3", "ndcg@10", 0.07, "2", 0.05, {"popularity": 0.03})
    assert decision.promoted
    assert decision.reason == ("version 3 beats champion 2 (0.0500) and baseline popularity "
                               "(0.0300) on ndcg@10 with 0.0700")


def test_the_first_version_becomes_champion(settings):
    outcome = train_recommender(settings, "popularity")
    assert outcome.version == "1" and outcome.decision.promoted
    assert aliases(settings) == {"champion": "1", "challenger": "1"}


def test_a_model_that_loses_to_the_popularity_baseline_is_never_champion(settings):
    outcome = train_recommender(settings, "content")
    assert outcome.metrics["ndcg@10"] <= outcome.metrics["popularity/ndcg@10"]
    assert not outcome.decision.promoted
    assert aliases(settings) == {"challenger": "1"}
    assert "does not beat baseline popularity" in outcome.decision.reason


def test_an_event_stored_with_a_date_no_shop_has_is_left_out_and_reported(settings, shop):
    """Stored before such events were refused: training leaves it out instead of failing."""
    future = shop.events.iloc[[0]].assign(event_id="from-9999",
                                          timestamp=pd.Timestamp("9999-12-31", tz="UTC"))
    Warehouse(settings.data_dir / "warehouse").append_events(future)
    result = CliRunner().invoke(app, ["train", "recommender", "--model", "popularity",
                                      "--no-register", "--data-dir", str(settings.data_dir)])
    assert result.exit_code == 0, result.output
    assert "warning: 1 stored event(s) are dated outside the accepted times" in " ".join(
        result.output.split())
    outcome = train_recommender(settings, "popularity", register=False)
    cutoff = MlflowClient(settings.resolved_tracking_uri()).get_run(outcome.run_id).data.params[
        "split.cutoff"]
    assert pd.Timestamp(cutoff) == shop.events["timestamp"].max() - pd.Timedelta(days=14)


def test_a_run_logs_params_metrics_plots_data_and_code(settings):
    outcome = train_recommender(settings, "itemknn", {"neighbors": 30}, register=False)
    client = MlflowClient(settings.resolved_tracking_uri())
    run = client.get_run(outcome.run_id)
    assert run.data.params["model.neighbors"] == "30"
    assert run.data.params["split.split"] == "time"
    assert run.data.params["data.fingerprint"] == Warehouse(settings.data_dir / "warehouse").fingerprint()
    assert 0 < run.data.metrics["ndcg_at_10"] <= 1
    assert "all_items/ndcg_at_10" in run.data.metrics
    assert "ndcg_at_10/heavy" in run.data.metrics or "ndcg_at_10/warm" in run.data.metrics
    assert run.data.tags["nextbest.code_version"]
    artifacts = {a.path for a in client.list_artifacts(outcome.run_id, "plots")}
    assert artifacts == {"plots/evaluation.png"}


def test_a_worse_challenger_is_refused(settings):
    train_recommender(settings, "itemknn")
    outcome = train_recommender(settings, "popularity")
    assert not outcome.decision.promoted
    assert aliases(settings) == {"champion": "1", "challenger": "2"}
    gate = MlflowClient(settings.resolved_tracking_uri()).get_model_version("recommender", "2").tags[
        "nextbest.gate"]
    assert gate.startswith("version 2 is not promoted: on ndcg@10 it does not beat champion 1")


def test_the_baseline_is_logged_in_the_same_run(settings):
    outcome = train_recommender(settings, "itemknn", register=False)
    run = MlflowClient(settings.resolved_tracking_uri()).get_run(outcome.run_id)
    assert run.data.metrics["popularity/ndcg_at_10"] == pytest.approx(
        outcome.metrics["popularity/ndcg@10"])


def test_recommender_and_propensity_runs_go_to_experiments_of_their_own(settings):
    outcome = train_recommender(settings, "popularity", register=False)
    client = MlflowClient(settings.resolved_tracking_uri())
    experiment = client.get_experiment(client.get_run(outcome.run_id).info.experiment_id)
    assert experiment.name == "nextbest-recommender"


def test_models_list_shows_the_aliases(settings):
    train_recommender(settings, "itemknn")
    train_recommender(settings, "popularity")
    client = MlflowClient(settings.resolved_tracking_uri())
    listed = {row["version"]: row["aliases"] for row in registry.list_versions(client,
                                                                                "recommender")}
    assert listed == {"2": "challenger", "1": "champion"}


def test_a_better_challenger_is_promoted_and_rollback_restores_the_old_champion(settings):
    train_recommender(settings, "popularity")
    outcome = train_recommender(settings, "itemknn")
    assert outcome.decision.promoted
    assert outcome.decision.champion_score < outcome.decision.challenger_score
    assert outcome.decision.baselines == {"popularity": outcome.decision.champion_score}
    assert aliases(settings)["champion"] == "2"
    client = MlflowClient(settings.resolved_tracking_uri())
    assert registry.rollback(client, "recommender") == ("2", "1")
    assert aliases(settings)["champion"] == "1"
    with pytest.raises(ValueError, match="replaced no earlier champion"):
        registry.rollback(client, "recommender")


def test_a_margin_keeps_a_barely_better_challenger_out(settings):
    train_recommender(settings, "popularity")
    strict = settings.model_copy(update={"promotion_margin": 100.0})
    assert not train_recommender(strict, "itemknn").decision.promoted


def test_the_champion_loads_as_a_pyfunc_for_known_and_unknown_customers(settings, shop):
    train_recommender(settings, "itemknn")
    model = mlflow.pyfunc.load_model("models:/recommender@champion")
    known = shop.events["customer_id"].iloc[0]
    answer = model.predict(pd.DataFrame({"customer_id": [known, "never-seen"], "n": [3, 2]}))
    assert answer.groupby("customer_id")["source"].first().to_dict() == {
        known: "model", "never-seen": "popular"}
    assert answer.groupby("customer_id").size().to_dict() == {known: 3, "never-seen": 2}


def test_search_runs_nested_trials_and_keeps_the_holdout_out_of_it(settings):
    outcome = train_recommender(settings, "itemknn", search_budget_seconds=2, register=False)
    client = MlflowClient(settings.resolved_tracking_uri())
    children = client.search_runs(
        [client.get_run(outcome.run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{outcome.run_id}'")
    assert len(children) == outcome.search_trials >= 1
    assert all("validation_score" in c.data.metrics for c in children)


def test_a_bad_parameter_fails_before_anything_is_logged(settings):
    with pytest.raises(ValueError, match="has no parameter 'factor'"):
        train_recommender(settings, "als", {"factor": 3})
    assert not (settings.data_dir / "mlflow.db").exists()


def test_the_cli_lists_promotes_and_rolls_back(settings):
    train_recommender(settings, "itemknn")
    train_recommender(settings, "popularity")
    runner = CliRunner()
    base = ["--data-dir", str(settings.data_dir)]
    listing = runner.invoke(app, ["models", "list", *base])
    assert listing.exit_code == 0 and "champion" in listing.output
    promoted = runner.invoke(app, ["models", "promote", "2", *base])
    assert "champion is now version 2" in promoted.output
    rolled = runner.invoke(app, ["models", "rollback", *base])
    assert "rolled back from version 2 to version 1" in rolled.output
    missing = runner.invoke(app, ["models", "promote", "9", *base])
    assert missing.exit_code == 2 and "has no version '9'" in missing.output


def test_the_cli_trains_with_params_and_reports_the_gate(settings):
    result = CliRunner().invoke(app, ["train", "recommender", "--model", "ease", "--param", "l2=50",
                                      "--data-dir", str(settings.data_dir)])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "registered recommender version 1: no champion yet" in output
    assert "beats baseline popularity" in output
    assert "✓ evaluating on the holdout" in output  # the stages, as they finish


def test_the_cli_evaluates_at_k_on_a_holdout_of_the_days_asked_and_says_on_how_many(settings):
    result = CliRunner().invoke(app, ["train", "recommender", "--model", "popularity",
                                      "--test-days", "3", "--k", "5", "--no-register",
                                      "--data-dir", str(settings.data_dir)])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "ndcg@5" in output and "holdout metrics @5" in output
    evaluated = int(output.split("evaluated on ")[1].split(" customers")[0])
    assert 0 < evaluated < 100 and "in the 3-day holdout" in output
    assert f"warning: only {evaluated} customers were evaluated" in output


def test_the_models_list_command_shows_the_aliases(settings):
    train_recommender(settings, "itemknn")
    result = CliRunner().invoke(app, ["models", "list", "--data-dir", str(settings.data_dir)])
    assert result.exit_code == 0
    assert "challenger" in result.output  # only the aliases column names it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_tracking_server(tmp_path):
    with tracking_server_on_postgresql(tmp_path) as url:
        yield url


@pytest.mark.services
@pytest.mark.slow
def test_the_same_job_runs_against_a_tracking_server_on_postgresql(settings,
                                                                    postgres_tracking_server):
    remote = settings.model_copy(update={"tracking_uri": postgres_tracking_server})
    assert train_recommender(remote, "popularity").decision.promoted
    better = train_recommender(remote, "itemknn")
    assert better.decision.promoted and better.version == "2"
    client = MlflowClient(postgres_tracking_server)
    assert str(client.get_model_version_by_alias("recommender", "champion").version) == "2"
    assert registry.rollback(client, "recommender") == ("2", "1")
    model = mlflow.pyfunc.load_model("models:/recommender@champion")
    assert len(model.predict(pd.DataFrame({"customer_id": ["anyone"]}))) == 10

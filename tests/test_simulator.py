"""The closed-loop shop: the real ranking answers the synthetic shop's customers, who respond
as their known tastes say; attribution and KPIs are checked against what really happened."""

from __future__ import annotations

import math
import shutil
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from features.settings import Settings
from features.shop_response import CART_RETURN_CLICK, ResponseModel, TruthMissing
from features.synthetic import ShopConfig, generate_shop, store_shop
from features.warehouse import Warehouse
from serving.simulator import SimulationConfig, simulate
from tests.conftest import promote_by_hand
from tests.test_cli import run
from training.kpis import kpi_report


def a_shop(root: Path, customers: int) -> Path:
    """A shop whose history ends two days ago (the simulated days mix with no history) and an
    EASE recommender as champion."""
    from training.recommender_job import train_recommender

    config = ShopConfig(n_customers=customers, n_products=150, days=75, seed=21)
    start = pd.Timestamp.now(tz="UTC").floor("D") - pd.Timedelta(days=77)
    store_shop(Warehouse(root / "warehouse"),
               generate_shop(config.model_copy(update={"start": start.to_pydatetime()})))
    settings = Settings(data_dir=root)
    outcome = train_recommender(settings, "ease")
    if not outcome.decision.promoted:  # the gate's business; here a champion is needed
        promote_by_hand(settings, settings.recommender_name, outcome.version)
    return root


@pytest.fixture(scope="module")
def shop_dir(tmp_path_factory) -> Path:
    return a_shop(tmp_path_factory.mktemp("simulated"), 400)


def simulated(shop_dir: Path, tmp_path: Path, name: str, **options):
    data = tmp_path / name
    shutil.copytree(shop_dir, data)
    settings = Settings(data_dir=data)
    config = SimulationConfig(**{"days": 1, "visits_per_day": 300, "seed": 3, **options})
    return data, simulate(settings, config)


@pytest.fixture(scope="module")
def one_day(shop_dir, tmp_path_factory):
    return simulated(shop_dir, tmp_path_factory.mktemp("day"), "pipeline")


def test_attributed_revenue_equals_the_simulators_ground_truth(one_day):
    data, result = one_day
    report = kpi_report(Warehouse(data / "warehouse"), result.start - timedelta(seconds=1),
                        result.end, period="all")
    assert result.attributable_revenue > 0
    assert report.kpis["attributed_revenue"].sum() == pytest.approx(result.attributable_revenue)
    truth = result.frame()
    assert report.funnel.set_index("stage").loc["click", "count"] == (
        (truth["event_type"] == "click") & truth["exposure_id"].notna()).sum()


def test_every_answer_and_message_is_in_the_warehouse(one_day):
    data, result = one_day
    exposures = Warehouse(data / "warehouse").exposures()
    assert exposures["exposure_id"].nunique() >= result.exposures
    assert (exposures["exposure_type"] == "message").any() == (result.messages > 0)


def test_the_recommender_earns_clearly_more_clicks_than_best_sellers(shop_dir, tmp_path, one_day):
    _, personal = one_day
    _, popular = simulated(shop_dir, tmp_path, "popularity", ranker="popularity")
    assert personal.ctr() >= 1.3 * popular.ctr(), (personal.ctr(), popular.ctr())


def test_the_same_seed_draws_the_same_visits_and_choices(shop_dir, tmp_path, one_day):
    _, first = one_day
    _, again = simulated(shop_dir, tmp_path, "again", end=first.end)
    columns = ["event_type", "customer_id", "item_id", "revenue"]
    pd.testing.assert_frame_equal(first.frame()[columns], again.frame()[columns])


def test_a_shop_without_synthetic_truth_is_refused_with_the_reason(tmp_path):
    with pytest.raises(TruthMissing, match="needs a data directory made by 'nextbest demo'"):
        ResponseModel.load(tmp_path, pd.DataFrame({"item_id": []}))


def test_a_customer_recognises_their_own_cart_when_it_is_shown_again():
    shop = generate_shop(ShopConfig(n_customers=30, n_products=40, days=10, seed=5))
    model = ResponseModel.of(shop)
    customer = model.tastes.index[0]
    items = list(model.items.index[model.items["kind"] == "product"][:3])
    plain = model.click_probability(customer, items)
    carted = model.click_probability(customer, items, carted={items[1]})
    assert carted[1] == pytest.approx(CART_RETURN_CLICK / math.log2(3))
    assert carted[1] > plain[1] and list(carted[[0, 2]]) == list(plain[[0, 2]])


def test_report_kpis_prints_csv_and_html(one_day, tmp_path):
    data, _ = one_day
    table = run("report", "kpis", "--by", "channel,kind", "--data-dir", str(data))
    assert table.exit_code == 0, table.output
    assert "funnel: impression" in table.output and "web" in table.output
    csv = tmp_path / "k.csv"
    assert run("report", "kpis", "--format", "csv", "--out", str(csv), "--data-dir",
               str(data)).exit_code == 0
    assert {"ctr", "attributed_revenue", "catalog_coverage"} <= set(pd.read_csv(csv).columns)
    page = tmp_path / "k.html"
    assert run("report", "kpis", "--by", "channel", "--format", "html", "--out", str(page),
               "--data-dir", str(data)).exit_code == 0
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 3 and "http" not in text.split("<body>")[1]


def test_report_kpis_names_a_wrong_dimension(one_day):
    data, _ = one_day
    result = run("report", "kpis", "--by", "colour", "--data-dir", str(data))
    assert result.exit_code == 2
    assert "cannot break KPIs down by 'colour'" in result.output


def with_experiments(shop_dir: Path, tmp_path: Path, name: str, plan: dict) -> Path:
    import yaml

    data = tmp_path / name
    shutil.copytree(shop_dir, data)
    (data / "experiments.yaml").write_text(yaml.safe_dump(plan))
    return data


PERSONAL_VS_BEST_SELLERS = {"experiments": [{
    "name": "personal", "traffic": 1.0,
    "variants": [{"name": "best_sellers", "weight": 1, "personalized": False},
                 {"name": "personal", "weight": 1}]}]}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Four simulated days of the recommender against best sellers, half the customers each,
    in a shop of 2,000 customers."""
    shop = a_shop(tmp_path_factory.mktemp("big"), 2000)
    data = with_experiments(shop, tmp_path_factory.mktemp("planted"), "data",
                            PERSONAL_VS_BEST_SELLERS)
    settings = Settings(data_dir=data)
    result = simulate(settings, SimulationConfig(days=4, visits_per_day=700, seed=11))
    return data, result


def report_of(data: Path, experiment=None):
    from datetime import UTC, datetime

    from features.experiments import load_plan
    from training.experiment_report import experiment_report

    experiment = experiment or load_plan(data / "experiments.yaml").experiments[0]
    return experiment_report(Warehouse(data / "warehouse"), experiment, datetime.now(UTC))


def test_a_planted_difference_is_detected_with_the_always_valid_test(planted):
    data, _ = planted
    report = report_of(data)
    assert not report.ratio.mismatch and report.excluded == 0
    ctr = report.comparisons["ctr"][0]
    assert ctr.effect.relative > 0.3 and ctr.adjusted_p < 0.05, ctr


def test_answers_and_exposures_name_the_variant(planted):
    data, _ = planted
    exposures = Warehouse(data / "warehouse").exposures()
    shown = exposures[exposures["exposure_type"] == "recommendation"]
    assert set(shown["variants"]) == {"personal=best_sellers", "personal=personal"}
    baseline = shown[(shown["variants"] == "personal=best_sellers")
                     & (shown["item_kind"] == "product")]
    assert not baseline["source"].isin(["for_you", "similar"]).any()  # nothing personal


def test_the_latency_guardrail_is_read_per_variant_and_a_breach_blocks_shipping(planted):
    from training.experiment_report import _latency_guardrail

    data, _ = planted
    report = report_of(data)
    assert [g for g in report.guardrails if g.startswith("latency: personal p99 ")]
    slow = pd.DataFrame({"p99": [20.0, 30.0]}, index=["best_sellers", "personal"])
    report.guardrails.clear()
    _latency_guardrail(report, slow, ["best_sellers", "personal"])
    assert report.breached and "BREACHED" in report.guardrails[0]


def test_a_sample_ratio_mismatch_blocks_the_verdict(planted):
    from features.experiments import Experiment

    data, _ = planted
    skewed = Experiment.model_validate({**PERSONAL_VS_BEST_SELLERS["experiments"][0],
                                        "variants": [
                                            {"name": "best_sellers", "weight": 3,
                                             "personalized": False},
                                            {"name": "personal", "weight": 1}]})
    report = report_of(data, skewed)
    assert report.ratio.mismatch
    assert report.verdict.startswith("sample-ratio mismatch")


def test_the_holdout_gets_no_personalization_and_no_messages(shop_dir, tmp_path):
    data = with_experiments(shop_dir, tmp_path, "holdout", {"holdout": {"share": 0.5}})
    simulate(Settings(data_dir=data), SimulationConfig(days=1, visits_per_day=300, seed=2))
    exposures = Warehouse(data / "warehouse").exposures()
    held = exposures[exposures["variants"] == "holdout=holdout"]
    assert held["customer_id"].nunique() > 50
    products = held[(held["exposure_type"] == "recommendation")
                    & (held["item_kind"] == "product")]
    assert not products["source"].isin(["for_you", "similar"]).any()
    messages = held[held["exposure_type"] == "message"]
    assert (messages["status"] == "suppressed").all() and (messages["rule"] == "holdout").all()


def test_experiments_report_prints_a_verdict_and_writes_csv_and_html(planted, tmp_path):
    data, _ = planted
    table = run("experiments", "report", "personal", "--data-dir", str(data))
    assert table.exit_code == 0, table.output
    assert "verdict: " in table.output and "sample ratio p =" in table.output
    page = tmp_path / "e.html"
    assert run("experiments", "report", "personal", "--format", "html", "--out", str(page),
               "--data-dir", str(data)).exit_code == 0
    assert "data:image/png;base64," in page.read_text()
    csv = tmp_path / "e.csv"
    assert run("experiments", "report", "personal", "--format", "csv", "--out", str(csv),
               "--data-dir", str(data)).exit_code == 0
    assert set(pd.read_csv(csv)["variant"]) == {"best_sellers", "personal"}


def test_experiments_report_names_an_unknown_experiment(planted):
    data, _ = planted
    result = run("experiments", "report", "nope", "--data-dir", str(data))
    assert result.exit_code == 2 and "no experiment 'nope'" in result.output


@pytest.fixture(scope="module")
def two_versions(shop_dir, tmp_path_factory):
    """The shop with a second recommender version (popularity), not champion, and an
    experiment that answers half the customers with it."""
    from training.recommender_job import train_recommender

    data = with_experiments(shop_dir, tmp_path_factory.mktemp("versions"), "data", {
        "experiments": [{"name": "ranker", "traffic": 1.0, "primary_metric": "ctr",
                         "variants": [{"name": "champion", "weight": 1},
                                      {"name": "popularity", "weight": 1,
                                       "recommender": "2"}]}]})
    settings = Settings(data_dir=data)
    assert train_recommender(settings, "popularity").version == "2"
    promote_by_hand(settings, settings.recommender_name, "1")  # whatever the gate said
    simulate(settings, SimulationConfig(days=1, visits_per_day=300, seed=4))
    return data


def test_a_variant_naming_a_version_is_answered_by_it_beside_the_champion(two_versions):
    exposures = Warehouse(two_versions / "warehouse").exposures()
    shown = exposures[exposures["exposure_type"] == "recommendation"]
    by_variant = shown.groupby("variants")["model_versions"].unique().to_dict()
    assert list(by_variant["ranker=champion"]) == ["recommender=1"]
    assert list(by_variant["ranker=popularity"]) == ["recommender=2"]


def test_ship_moves_the_champion_to_the_variants_version_and_stops_the_experiment(two_versions):
    from mlflow import MlflowClient

    from features.experiments import load_plan
    from training import registry
    from training.tracking import configure

    refused = run("experiments", "ship", "ranker", "--variant", "popularity", "--data-dir",
                  str(two_versions))
    assert refused.exit_code == 2 and "does not say 'popularity' won" in refused.output
    shipped = run("experiments", "ship", "ranker", "--variant", "popularity", "--force",
                  "--data-dir", str(two_versions))
    assert shipped.exit_code == 0, shipped.output
    configure(Settings(data_dir=two_versions))
    client = MlflowClient()
    assert registry.champion_version(client, "recommender") == "2"
    reason = client.get_model_version("recommender", "2").tags["nextbest.promotion_reason"]
    assert reason.startswith("experiment ranker: popularity shipped")
    assert load_plan(two_versions / "experiments.yaml").experiments[0].stop is not None
    assert run("models", "rollback", "--data-dir", str(two_versions)).exit_code == 0
    assert registry.champion_version(client, "recommender") == "1"


def test_team_draft_alternates_fairly_and_never_repeats_an_item():
    from serving.interleaving import team_draft

    a = [{"item_id": f"p{i}"} for i in range(10)]
    b = [{"item_id": f"p{i}"} for i in (3, 11, 12, 0, 13, 14, 15, 16, 17, 18)]
    merged = team_draft(a, b, 10, seed="r1")
    ids = [m["item_id"] for m in merged]
    assert len(ids) == 10 == len(set(ids))
    teams = [m["team"] for m in merged]
    assert abs(teams.count("A") - teams.count("B")) <= 1
    assert merged == team_draft(a, b, 10, seed="r1")  # the coin is the answer's id


def test_interleaving_finds_the_ranker_customers_prefer(two_versions, tmp_path):
    import yaml

    data = tmp_path / "interleaved"
    shutil.copytree(two_versions, data)
    (data / "experiments.yaml").write_text(yaml.safe_dump({"experiments": [{
        "name": "duel", "kind": "interleaving", "traffic": 1.0,
        "variants": [{"name": "ease", "weight": 1},
                     {"name": "popularity", "weight": 1, "recommender": "2"}]}]}))
    (data / "online.db").unlink()  # a new day of visits, not the A/B test's state
    simulate(Settings(data_dir=data),
             SimulationConfig(days=1, visits_per_day=300, seed=9))
    shown = Warehouse(data / "warehouse").exposures()
    duel = shown[(shown["variants"] == "duel=interleaved")
                 & (shown["exposure_type"] == "recommendation")]  # messages are not interleaved
    assert set(duel.loc[duel["item_kind"] == "product", "team"]) == {"A", "B"}
    result = run("experiments", "report", "duel", "--data-dir", str(data))
    assert result.exit_code == 0, result.output
    assert "customers prefer ease to popularity" in result.output


def test_with_a_planned_stop_the_verdict_is_group_sequential(planted):
    from datetime import UTC, datetime, timedelta

    from features.experiments import Experiment

    data, result = planted
    planned = Experiment.model_validate({
        **PERSONAL_VS_BEST_SELLERS["experiments"][0], "primary_metric": "ctr",
        "start": result.start.isoformat(),
        "stop": (datetime.now(UTC) + timedelta(days=1)).isoformat()})
    report = report_of(data, planned)
    assert report.planned is not None and 0.5 < report.planned.fraction < 1
    assert "group-sequential, planned to stop" in report.verdict
    assert report.planned.crossed_on is not None  # the planted difference crosses


def test_the_error_guardrail_breaches_on_a_significantly_higher_failure_rate(planted):
    from training.experiment_report import _error_guardrail

    data, _ = planted
    report = report_of(data)
    assert any(g.startswith("errors: personal 0.00% of") and g.endswith("fine")
               for g in report.guardrails)
    report.guardrails.clear()
    failures = pd.DataFrame({"failed": [2, 80], "requests": [10_000, 10_000]},
                            index=["best_sellers", "personal"])
    _error_guardrail(report, failures, ["best_sellers", "personal"])
    assert report.breached and "BREACHED" in report.guardrails[0]
    report.guardrails.clear()
    report.breached = False
    close = pd.DataFrame({"failed": [2, 4], "requests": [10_000, 10_000]},
                         index=["best_sellers", "personal"])
    _error_guardrail(report, close, ["best_sellers", "personal"])
    assert not report.breached

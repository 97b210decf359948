"""The closed-loop shop: the real ranking answers the synthetic shop's customers, who respond
as their known tastes say; attribution and KPIs are checked against what really happened."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from features.settings import Settings
from features.shop_response import ResponseModel, TruthMissing
from features.synthetic import ShopConfig, generate_shop, store_shop
from features.warehouse import Warehouse
from serving.simulator import SimulationConfig, simulate
from tests.conftest import promote_by_hand
from tests.test_cli import run
from training.kpis import kpi_report


@pytest.fixture(scope="module")
def shop_dir(tmp_path_factory) -> Path:
    """A shop whose history ends two days ago (the simulated day mixes with no history) and an
    EASE recommender as champion."""
    from training.recommender_job import train_recommender

    root = tmp_path_factory.mktemp("simulated")
    config = ShopConfig(n_customers=400, n_products=150, days=75, seed=21)
    start = pd.Timestamp.now(tz="UTC").floor("D") - pd.Timedelta(days=77)
    store_shop(Warehouse(root / "warehouse"),
               generate_shop(config.model_copy(update={"start": start.to_pydatetime()})))
    settings = Settings(data_dir=root)
    outcome = train_recommender(settings, "ease")
    if not outcome.decision.promoted:  # the gate's business; here a champion is needed
        promote_by_hand(settings, settings.recommender_name, outcome.version)
    return root


def simulated(shop_dir: Path, tmp_path: Path, name: str, **options):
    data = tmp_path / name
    shutil.copytree(shop_dir, data)
    settings = Settings(data_dir=data, trigger_interval_seconds=0)
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

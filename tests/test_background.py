"""The background worker: journeys and the warehouse flush, once per deployment."""

from __future__ import annotations

import shutil
import uuid
from datetime import UTC, datetime

import pytest

from features.ingest import parse_events
from features.online.embedded import EmbeddedStore
from features.settings import Settings
from features.warehouse import Warehouse
from serving.background import BackgroundWorker
from tests.conftest import copy_of_served, with_welcome_journey


@pytest.fixture
def data(serving_dir, tmp_path):
    return with_welcome_journey(copy_of_served(serving_dir, tmp_path / "data"))


def carts(store: EmbeddedStore, data, customers: list[str]) -> None:
    items = Warehouse(data / "warehouse").items()
    item = items.loc[items["kind"] == "product", "item_id"].iloc[0]
    now = datetime.now(UTC)
    for customer in customers:
        store.record_consent(customer, "email", True, now.timestamp() - 60)
    store.ingest(parse_events([{"event_id": uuid.uuid4().hex, "customer_id": c, "item_id": item,
                                "event_type": "add_to_cart", "timestamp": now.isoformat(),
                                "channel": "web"} for c in customers]).events)


def test_a_pass_sends_the_due_journey_steps_and_the_stop_moves_events_to_the_warehouse(data):
    store = EmbeddedStore(data / "online.db")
    carts(store, data, ["b1", "b2", "b3"])
    worker = BackgroundWorker(Settings(data_dir=data, flush_interval_seconds=60))

    outcomes = worker.run(once=True)

    assert sorted(d["customer_id"] for _, d in store.outbox()) == ["b1", "b2", "b3"]
    assert outcomes["sent"] == 3
    stored = Warehouse(data / "warehouse").events()
    assert set(stored.loc[stored["event_type"] == "add_to_cart", "customer_id"]) >= {"b1", "b2",
                                                                                    "b3"}
    assert store.flush_to(Warehouse(data / "warehouse")) == 0, "nothing was left to move"


def test_a_flush_interval_of_zero_leaves_the_events_in_the_online_store(data):
    store = EmbeddedStore(data / "online.db")
    carts(store, data, ["z1"])

    BackgroundWorker(Settings(data_dir=data, flush_interval_seconds=0)).run(once=True)

    assert store.flush_to(Warehouse(data / "warehouse")) == 1


def test_the_flush_runs_on_its_interval_between_passes(data):
    store = EmbeddedStore(data / "online.db")
    worker = BackgroundWorker(Settings(data_dir=data, flush_interval_seconds=60))
    carts(store, data, ["f1", "f2"])
    assert worker.turn().moved_events == 0, "the interval has not passed since it started"
    worker._flushed -= 61  # a minute later

    report = worker.turn()

    assert report.moved_events == 2


def test_the_liveness_check_passes_after_a_pass_and_fails_when_it_is_stale(data, monkeypatch,
                                                                         tmp_path):
    from serving import background

    monkeypatch.setattr(background, "HEARTBEAT", tmp_path / "heartbeat")
    assert background.main(["--max-age", "60"]) == 1, "no pass yet"
    BackgroundWorker(Settings(data_dir=data, flush_interval_seconds=0)).turn()

    assert background.main(["--max-age", "60"]) == 0
    assert background.main(["--max-age", "0"]) == 1


def test_without_models_it_waits_flushing_and_loads_them_once_registered(data):
    from mlflow import MlflowClient

    settings = Settings(data_dir=data, flush_interval_seconds=60, serving_alias="launch")
    shutil.rmtree(data / "serving-cache", ignore_errors=True)  # nothing served before either
    store = EmbeddedStore(data / "online.db")
    carts(store, data, ["w1"])
    worker = BackgroundWorker(settings)
    assert worker.state is None and "has no 'launch' version" in worker.waiting_for
    worker._flushed -= 61

    waiting = worker.turn()

    assert waiting.moved_events == 1 and not waiting.outcomes, "flushed; no journey ran"
    MlflowClient(settings.resolved_tracking_uri()).set_registered_model_alias(
        settings.recommender_name, "launch", "1")
    assert worker.reload() == ["models loaded: {'recommender': '1'}"]
    carts(store, data, ["w2"])
    assert worker.turn().outcomes["sent"] >= 1


def test_a_single_pass_without_models_says_why(data, monkeypatch):
    from features.settings import get_settings
    from tests.test_cli import run

    shutil.rmtree(data / "serving-cache", ignore_errors=True)
    monkeypatch.setenv("NEXTBEST_SERVING_ALIAS", "launch")
    get_settings.cache_clear()

    result = run("worker", "--once", "--data-dir", str(data))
    get_settings.cache_clear()

    assert result.exit_code == 2
    assert "no models to run the journeys with" in " ".join(result.output.split())

"""The exposure log: every answer and message is recorded, without holding the answer up, and
what a crash can lose is bounded."""

from __future__ import annotations

import http.client
import signal
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest

from features.exposures import exposure_rows
from features.online.embedded import EmbeddedStore
from features.online.redis_store import RedisStore
from features.settings import get_settings
from features.warehouse import Warehouse
from serving.exposure_log import ExposureLog
from serving.schemas import RecommendRequest
from tests.conftest import copy_of_served, require_service
from tests.test_service import post, start_server, stop


def logged(store) -> dict[str, dict]:
    return {e["exposure_id"]: e for _, batch in store.pending_exposures(10**6) for e in batch}


def an_exposure(number: int) -> dict:
    return {"exposure_id": f"r{number}", "exposure_type": "recommendation", "customer_id": "c1",
            "at": time.time(), "channel": "web", "placement": "home", "status": "shown",
            "rule": None, "model_versions": {"recommender": "1"},
            "items": [("product", "p1", "for_you")], "context": None}


@pytest.fixture
def service(serving_dir, tmp_path, monkeypatch):
    from serving.service import NextBest

    data = tmp_path / "data"
    copy_of_served(serving_dir, data)
    for name, value in (("DATA_DIR", str(data)), ("RELOAD_INTERVAL_SECONDS", "0"),
                        ("FLUSH_INTERVAL_SECONDS", "0")):
        monkeypatch.setenv(f"NEXTBEST_{name}", value)
    get_settings.cache_clear()
    service = NextBest()
    yield service
    service.exposures.close()
    get_settings.cache_clear()


def test_every_answer_is_an_exposure_known_cold_start_and_degraded(service):
    known = service.answer(RecommendRequest(customer_id="c0000001", placement="home_hero"))
    cold = service.answer(RecommendRequest(customer_id="never-seen", channel="app",
                                           context={"page_type": "cart"}))
    degraded = service.answer(RecommendRequest(customer_id="c0000002"),
                              (None, "redis at ... is unreachable"))
    service.exposures.write()
    exposures = logged(service.online)
    assert set(exposures) == {a["recommendation_id"] for a in (known, cold, degraded)}
    first = exposures[known["recommendation_id"]]
    assert (first["placement"], first["channel"], first["model_versions"]) == (
        "home_hero", "web", known["model_versions"])
    assert [i[1] for i in first["items"] if i[0] == "product"] == [
        p["item_id"] for p in known["products"]]
    assert exposures[cold["recommendation_id"]]["placement"] == "cart"  # its page type
    assert exposures[degraded["recommendation_id"]]["context"] == {
        "degraded_reason": "redis at ... is unreachable"}


def test_exposures_reach_the_warehouse_once_however_often_they_are_moved(tmp_path):
    store = EmbeddedStore(tmp_path / "online.db")
    warehouse = Warehouse(tmp_path / "warehouse")
    store.log_exposures([an_exposure(1), an_exposure(2)])
    positions = [p for p, _ in store.pending_exposures(10)]
    assert store.flush_exposures_to(warehouse) == 2
    again = exposure_rows([(positions[0], [an_exposure(1), an_exposure(2)])])
    assert warehouse.append_exposures(again, store.log_id, positions[0]) == 0  # a crash before
    # forgetting the log moves the same batch again: nothing is stored twice
    store.log_exposures([an_exposure(3)])
    assert store.flush_exposures_to(warehouse) == 1
    assert sorted(warehouse.exposures()["exposure_id"]) == ["r1", "r2", "r3"]


def test_a_full_buffer_drops_and_counts_but_never_blocks(tmp_path):
    log = ExposureLog(EmbeddedStore(tmp_path / "online.db"), capacity=100)
    started = time.perf_counter()
    for number in range(150):
        log.record(an_exposure(number))
    assert time.perf_counter() - started < 0.05
    assert (log.counters["recorded"], log.counters["dropped"]) == (100, 50)
    assert log.write() == 100 and log.counters["pending"] == 0


def test_while_the_store_is_down_exposures_wait_in_memory_and_are_written_later(tmp_path):
    require_service("Redis", "127.0.0.1", 6379)
    down = RedisStore("redis://127.0.0.1:1/0", timeout_seconds=0.2)
    log = ExposureLog(down, capacity=100)
    log.record(an_exposure(1))
    assert log.write() == 0 and log.counters["write_errors"] == 1 and log.counters["pending"] == 1
    up = RedisStore("redis://127.0.0.1:6379/0", prefix=f"exposures-{uuid.uuid4().hex[:6]}:")
    try:
        log.store = up
        assert log.write() == 1
        assert set(logged(up)) == {"r1"}
    finally:
        up.clear()


@pytest.mark.slow
def test_kill_9_loses_at_most_the_last_flush_interval_of_exposures(serving_dir, tmp_path):
    """Requests answered one after another; the service is killed (every process, SIGKILL).
    Every answer older than the flush interval (plus the time one write takes) is in the log."""
    data = tmp_path / "data"
    copy_of_served(serving_dir, data)
    interval = 0.2
    server, url = start_server(data, tmp_path, NEXTBEST_FLUSH_INTERVAL_SECONDS="0",
                               NEXTBEST_EXPOSURE_FLUSH_MS=str(int(interval * 1000)))
    answered: list[tuple[str, float]] = []
    stopping = threading.Event()

    def storefront() -> None:
        number = 0
        while not stopping.is_set():
            try:
                status, body = post(f"{url}/recommend", {"customer_id": f"c{number % 300:07d}"})
            except (OSError, http.client.HTTPException):  # the kill cut the answer off
                return
            if status == 200:
                answered.append((body["recommendation_id"], time.monotonic()))
            number += 1

    thread = threading.Thread(target=storefront)
    thread.start()
    time.sleep(3)
    killed_at = time.monotonic()
    stop(server, signal.SIGKILL)
    stopping.set()
    thread.join(timeout=30)
    stored = logged(EmbeddedStore(data / "online.db"))
    assert len(answered) >= 50, "too few answers before the kill"
    old_enough = [rid for rid, at in answered if killed_at - at > interval + 0.3]
    missing = [rid for rid in old_enough if rid not in stored]
    assert not missing, f"{len(missing)} exposures older than the bound were lost"
    assert len(stored) >= len(old_enough)


def test_a_failed_ranking_is_logged_as_a_failed_exposure_with_its_variant(service, monkeypatch):
    import serving.service as module
    from features.experiments import ExperimentPlan

    service.plan = ExperimentPlan.model_validate({"experiments": [{
        "name": "ranker", "traffic": 1, "variants": [{"name": "A", "weight": 1},
                                                     {"name": "B", "weight": 1}]}]})

    def broken(*args, **kwargs):
        raise RuntimeError("index out of range in the kernel")

    monkeypatch.setattr(module, "recommend", broken)
    with pytest.raises(RuntimeError):
        service.answer(RecommendRequest(customer_id="c0000003"))
    service.exposures.write()
    [failed] = logged(service.online).values()
    assert failed["status"] == "failed" and failed["items"] == []
    assert failed["variants"]["ranker"] in ("A", "B")
    assert "index out of range" in failed["context"]["error"]


def test_a_consent_withdrawn_is_logged_once_and_an_older_one_not_at_all(service):
    from serving.schemas import ConsentRequest

    now = time.time()
    service._consent(ConsentRequest(customer_id="c0000003", channel="email", granted=False))
    service._consent(ConsentRequest(  # older than the one recorded: ignored, not logged
        customer_id="c0000003", channel="email", granted=True,
        timestamp=datetime.fromtimestamp(now - 3600, UTC)))
    service.exposures.write()
    [consent] = logged(service.online).values()
    assert (consent["exposure_type"], consent["status"], consent["channel"]) == (
        "consent", "withdrawn", "email")
    assert consent["customer_id"] == "c0000003" and consent["items"] == []

"""The service at three levels: the ranking pipeline without a server, the HTTP app in process,
and a real `bentoml serve` process; plus start-up with the registry down, and hot swap under
concurrent requests."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
from bentoml.exceptions import ServiceUnavailable
from mlflow import MlflowClient
from starlette.testclient import TestClient

from features.settings import Settings, get_settings
from features.synthetic import ShopConfig, generate_shop, store_shop
from features.warehouse import Warehouse
from serving.pipeline import (
    ContentIndex,
    RecommendRequest,
    ServingState,
    offer_is_eligible,
    recommend,
    similar_products,
)
from serving.service import NextBest, build_state
from serving.shop import Item
from training import registry
from training.propensity_job import train_propensity
from training.recommender_job import train_recommender

TOKEN = "test-token"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serving")
    shop = generate_shop(ShopConfig(n_customers=300, n_products=120, days=75, seed=21))
    store_shop(Warehouse(root / "warehouse"), shop)
    train_recommender(Settings(data_dir=root), "itemknn")
    train_propensity(Settings(data_dir=root), "purchase", {"n_estimators": 100},
                     horizon_days=14, n_snapshots=2)
    return root


@pytest.fixture
def env(data_dir, monkeypatch):
    monkeypatch.setenv("NEXTBEST_DATA_DIR", str(data_dir))
    monkeypatch.setenv("NEXTBEST_RELOAD_INTERVAL_SECONDS", "0")
    monkeypatch.setenv("NEXTBEST_ADMIN_TOKEN", TOKEN)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def state(data_dir) -> ServingState:
    return build_state(Settings(data_dir=data_dir))


def buyer_of_durables(state: ServingState) -> str:
    for customer, behaviour in state.shop.behaviour.items():
        if any(not state.shop.items[i].repeatable for i in behaviour.purchased
               if i in state.shop.items):
            return customer
    raise AssertionError("the test shop has no durable buyer")


def ids(answer: dict, kind: str = "products") -> list[str]:
    return [entry["item_id"] for entry in answer[kind]]


# ---------------------------------------------------------------------------- pipeline
def test_a_known_customer_gets_each_kind_with_reasons_and_versions(state):
    customer = buyer_of_durables(state)
    answer = recommend(state, RecommendRequest(customer_id=customer), state.shop.as_of)
    assert answer["known_customer"] and len(answer["products"]) == 10
    assert all(entry["reason"] for entry in answer["products"] + answer["content"])
    assert answer["model_versions"] == {"recommender": "1", "propensity": "1"}
    assert len(answer["recommendation_id"]) == 32


def test_a_purchased_durable_never_comes_back(state):
    customer = buyer_of_durables(state)
    durables = {i for i in state.shop.customer(customer).purchased
                if not state.shop.items[i].repeatable}
    answer = recommend(state, RecommendRequest(customer_id=customer, n={"product": 50}),
                       state.shop.as_of)
    assert not durables & set(ids(answer))


def test_an_out_of_stock_product_never_shows(state):
    customer = buyer_of_durables(state)
    request = RecommendRequest(customer_id=customer)
    first = ids(recommend(state, request, state.shop.as_of))[0]
    items = dict(state.shop.items)
    items[first] = dataclasses.replace(items[first], in_stock=False)
    emptied = dataclasses.replace(state, shop=dataclasses.replace(state.shop, items=items))
    assert first not in ids(recommend(emptied, request, state.shop.as_of))


def test_an_expired_offer_never_shows(state):
    long_after = max(i.valid_to for i in state.shop.items.values() if i.valid_to is not None)
    answer = recommend(state, RecommendRequest(customer_id="anyone", n={"offer": 5}),
                       long_after + pd.Timedelta(days=1))
    assert answer["offers"] == []


OFFER = Item("o1", "offer", "10 off", "offers", "offers", None, True, False, None,
             offer_value=10, valid_from=pd.Timestamp("2024-01-01", tz="UTC"),
             valid_to=pd.Timestamp("2024-02-01", tz="UTC"), segments=frozenset({"loyal"}),
             channels=frozenset({"web"}), min_basket=25, redemption_limit=1)
NOW = pd.Timestamp("2024-01-15", tz="UTC")


@pytest.mark.parametrize("change, eligible", [
    ({}, True),
    ({"segment": "casual"}, False),
    ({"channel": "app"}, False),
    ({"cart_value": 10.0}, False),
    ({"redeemed": 1}, False),
    ({"now": pd.Timestamp("2024-03-01", tz="UTC")}, False),
    ({"now": pd.Timestamp("2023-12-01", tz="UTC")}, False),
])
def test_offer_eligibility_rules(change, eligible):
    args = {"segment": "loyal", "channel": "web", "cart_value": 30.0, "redeemed": 0, "now": NOW}
    assert offer_is_eligible(OFFER, **{**args, **change}) is eligible


def test_offers_are_ranked_by_expected_value(state):
    answer = recommend(state, RecommendRequest(customer_id="anyone", n={"offer": 10},
                                               context={"cart_items": []}),
                       state.shop.as_of - pd.Timedelta(days=20))
    scores = [entry["score"] for entry in answer["offers"]]
    assert scores == sorted(scores, reverse=True)


def test_an_unknown_customer_gets_popular_items_not_an_error(state):
    answer = recommend(state, RecommendRequest(customer_id="never-seen"), state.shop.as_of)
    assert not answer["known_customer"]
    assert len(answer["products"]) == 10 and answer["content"]
    assert all(entry["reason"].startswith("popular in") for entry in answer["products"])


def test_filters_and_exclusions_are_honoured(state):
    customer = buyer_of_durables(state)
    plain = ids(recommend(state, RecommendRequest(customer_id=customer), state.shop.as_of))
    request = RecommendRequest(customer_id=customer, exclude=plain[:3],
                               filters={"category": "home", "max_price": 80})
    answer = recommend(state, request, state.shop.as_of)
    assert not set(plain[:3]) & set(ids(answer))
    for item_id in ids(answer):
        item = state.shop.items[item_id]
        assert item.category.startswith("home") and item.price <= 80


def test_no_category_takes_more_than_its_share_when_there_are_alternatives(state):
    customer = buyer_of_durables(state)
    answer = recommend(state, RecommendRequest(customer_id=customer, n={"product": 10}),
                       state.shop.as_of, max_category_share=0.3)
    tops = pd.Series([state.shop.items[i].top for i in ids(answer)]).value_counts()
    assert tops.max() <= 3


def test_a_new_item_with_no_history_is_reachable_by_its_text(state):
    template = next(i for i in state.shop.items.values() if i.kind == "product")
    new = dataclasses.replace(template, item_id="brand-new", title=template.title + " mk2")
    shop = dataclasses.replace(state.shop, items={**state.shop.items, "brand-new": new})
    with_new = dataclasses.replace(state, shop=shop, content=ContentIndex(shop))
    similar = [i for i, _ in similar_products(with_new, "brand-new")]
    assert template.item_id in similar[:5]


def test_an_absurd_n_is_refused(state):
    with pytest.raises(ValueError, match="n.product must be between 0 and 100, got 500"):
        recommend(state, RecommendRequest(customer_id="x", n={"product": 500}), state.shop.as_of)


# ---------------------------------------------------------------------------- HTTP
@pytest.fixture(scope="module")
def client(data_dir):
    """One ASGI app per process: BentoML registers its Prometheus metrics when it is built."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NEXTBEST_DATA_DIR", str(data_dir))
        patch.setenv("NEXTBEST_RELOAD_INTERVAL_SECONDS", "0")
        patch.setenv("NEXTBEST_ADMIN_TOKEN", TOKEN)
        get_settings.cache_clear()
        with TestClient(NextBest.to_asgi()) as client:
            yield client
    get_settings.cache_clear()


def test_the_http_app_answers_a_flat_json_request(client):
    response = client.post("/recommend", json={"customer_id": "c0000001", "channel": "app",
                                                "n": {"product": 4, "content": 1, "offer": 1}})
    assert response.status_code == 200
    body = response.json()
    assert len(body["products"]) == 4 and body["model_versions"]["recommender"] == "1"


@pytest.mark.parametrize("body, field", [
    ({"customer_id": "c1", "colour": "red"}, "colour"),
    ({"customer_id": "c1", "channel": "fax"}, "channel"),
    ({"n": {"product": 2}}, "customer_id"),
    ({"customer_id": "c1", "n": {"gadget": 2}}, "gadget"),
    ({"customer_id": "c1", "n": {"product": 1000}}, "n.product"),
    ({"customer_id": "c1", "filters": {"max_price": -5}}, "max_price"),
])
def test_bad_input_is_a_400_that_names_the_field(client, body, field):
    response = client.post("/recommend", json=body)
    assert response.status_code == 400
    assert field in response.text


def test_similar_items_over_http(client):
    ok = client.post("/similar_items", json={"item_id": "p000005", "n": 3})
    assert ok.status_code == 200 and len(ok.json()["items"]) == 3
    missing = client.post("/similar_items", json={"item_id": "nope"})
    assert missing.status_code == 400 and "'nope' is not in the catalog" in missing.text


def test_propensity_scores_known_customers_and_lists_unknown_ones(client):
    response = client.post("/propensity", json={"customer_ids": ["c0000001", "c0000002", "ghost"]})
    assert response.status_code == 200
    body = response.json()
    assert body["model_version"] == "1" and body["unknown"] == ["ghost"]
    assert [s["customer_id"] for s in body["scores"]] == ["c0000001", "c0000002"]
    for score in body["scores"]:
        assert 0 <= score["score"] <= 1 and 1 <= score["decile"] <= 10
        assert 1 <= len(score["reasons"]) <= 3


@pytest.mark.parametrize("body, field", [
    ({"customer_ids": []}, "customer_ids"),
    ({"customer_ids": [f"c{i}" for i in range(1001)]}, "customer_ids"),
    ({"customer_ids": ["c1"], "horizon": 7}, "horizon"),
])
def test_bad_propensity_input_is_a_400_that_names_the_field(client, body, field):
    response = client.post("/propensity", json=body)
    assert response.status_code == 400 and field in response.text


def test_propensity_without_a_registered_model_says_how_to_get_one(env):
    service = NextBest()
    service.state = dataclasses.replace(service.state, propensity=None)
    with pytest.raises(ServiceUnavailable, match="train one with 'nextbest train propensity'"):
        service.propensity(customer_ids=["c0000001"])


def test_health_endpoints(client):
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_admin_reload_needs_the_token(client):
    assert client.post("/admin_reload", json={"token": "wrong"}).status_code == 403
    answer = client.post("/admin_reload", json={"token": TOKEN})
    assert answer.status_code == 200 and answer.json()["swapped"] is False


# ---------------------------------------------------------------------------- lifecycle
def test_with_the_registry_down_it_starts_from_the_last_loaded_models(env, monkeypatch):
    NextBest()  # a normal start fills the cache
    monkeypatch.setenv("NEXTBEST_TRACKING_URI", "http://127.0.0.1:9")
    get_settings.cache_clear()
    service = NextBest()
    assert service.__is_ready__()
    assert service.state.models.source == "cache"
    assert "registry unreachable" in service.detail


def test_with_no_registry_and_no_cache_it_is_not_ready_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTBEST_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("NEXTBEST_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("NEXTBEST_RELOAD_INTERVAL_SECONDS", "0")
    get_settings.cache_clear()
    service = NextBest()
    assert not service.__is_ready__()
    assert "unreachable" in service.detail and "no cached models" in service.detail
    with pytest.raises(ServiceUnavailable, match="no models loaded yet"):  # HTTP 503
        service.recommend(customer_id="c1")
    get_settings.cache_clear()


def test_a_moved_alias_is_swapped_in_while_requests_keep_flowing(env, data_dir):
    service = NextBest()
    second = train_recommender(Settings(data_dir=data_dir), "popularity")
    client = MlflowClient()
    registry.promote(client, "recommender", second.version, reason="test hot swap")
    errors, seen = [], set()

    def ask(i: int) -> None:
        try:
            answer = service.recommend(customer_id=f"c{i % 300:07d}")
            seen.add(answer["model_versions"]["recommender"])
        except Exception as error:  # noqa: BLE001 - any failure fails the test below
            errors.append(error)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(ask, i) for i in range(200)]
        swapped = service.reload()
        for future in futures:
            future.result()
    assert swapped and not errors
    assert seen <= {"1", second.version}
    assert service.recommend(customer_id="c0000001")["model_versions"]["recommender"] == \
        second.version
    registry.rollback(client, "recommender")


# ---------------------------------------------------------------------------- real server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_real_bentoml_serve_process_answers(data_dir, tmp_path):
    port = _free_port()
    env = {**os.environ, "NEXTBEST_DATA_DIR": str(data_dir),
           "NEXTBEST_RELOAD_INTERVAL_SECONDS": "0", "BENTOML_HOME": str(tmp_path / "bentoml")}
    root = Path(__file__).resolve().parents[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "serving.service:NextBest", "--port", str(port),
         "--host", "127.0.0.1"], cwd=root, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2) as ready:
                    if ready.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"bentoml serve did not become ready: {server.stderr.read()[-2000:]}",
                                pytrace=False)
                time.sleep(0.5)
        request = urllib.request.Request(
            f"{url}/recommend", data=b'{"customer_id": "c0000001", "n": {"product": 3}}',
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.loads(response.read())
        assert len(body["products"]) == 3 and body["model_versions"]["recommender"] == "1"
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as metrics:
            assert "bentoml_service_request" in metrics.read().decode()
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_the_bento_builds_from_bentofile(tmp_path):
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "bentoml", "build", "--output", "tag"],
                            cwd=root, env={**os.environ, "BENTOML_HOME": str(tmp_path)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert list((tmp_path / "bentos" / "nextbest").glob("*/bento.yaml"))

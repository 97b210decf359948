"""The service at three levels: the ranking pipeline without a server, the HTTP app in process,
and a real `bentoml serve` process; plus start-up with the registry down, and hot swap under
concurrent requests."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import weakref
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import psutil
import pytest
from bentoml.exceptions import ServiceUnavailable
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from mlflow import MlflowClient
from starlette.testclient import TestClient

from features.contracts import ItemKind
from features.settings import Settings, get_settings
from serving.customers import Behaviour
from serving.offers import OfferScorer, offer_is_eligible
from serving.pipeline import CANDIDATES, rank_offers, recommend, similar_products
from serving.schemas import RecommendRequest
from serving.service import NextBest
from serving.shop import Item, ShopView
from serving.state import ContentIndex, ServingState, build_state
from serving.workarounds.huge_pages import WORKER_ENVS
from tests.conftest import copy_of_served, is_mapped, promote_by_hand, require_program
from training import registry
from training.propensity_job import train_propensity
from training.recommender_job import train_recommender

TOKEN = "test-token"


@pytest.fixture(scope="module")
def data_dir(serving_dir) -> Path:
    return serving_dir


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


def restocker(state: ServingState) -> str:
    """A customer with an item due again (bought on several days, the last a cycle ago)."""
    model = state.shop.buy_again
    for customer in model.history_.where:
        shelf = model.due_for(customer, state.shop.as_of, 3)
        if shelf and shelf[0][2].startswith("you buy this"):
            return customer
    raise AssertionError("the test shop has no customer with an item due again")


def test_the_buy_again_shelf_holds_the_customers_own_items_due_again_with_the_cycle(state):
    customer = restocker(state)
    answer = recommend(state, RecommendRequest(customer_id=customer, buy_again=3),
                       state.shop.as_of)
    shelf = answer["buy_again"]
    assert 1 <= len(shelf) <= 3 and {entry["source"] for entry in shelf} == {"buy_again"}
    assert {entry["item_id"] for entry in shelf} <= state.shop.behaviour[customer].purchased
    assert shelf[0]["reason"].startswith("you buy this about every")
    assert recommend(state, RecommendRequest(customer_id=customer),
                     state.shop.as_of)["buy_again"] == []  # only when asked for


def test_fitted_customers_are_answered_from_the_registered_top_items_as_if_scored(state):
    """The training job registers each customer's top items; answering from them is exact."""
    bundle = state.models.recommender
    assert bundle.top_items is not None
    assert bundle.top_items[0].shape[0] == len(bundle.interactions.user_ids)
    scored = dataclasses.replace(state, models=dataclasses.replace(
        state.models, recommender=dataclasses.replace(bundle, top_items=None)))
    for row, customer in enumerate(bundle.interactions.user_ids[:25]):
        assert bundle.precomputed(row, CANDIDATES) is not None
        request = RecommendRequest(customer_id=str(customer), n={"product": 20})
        from_table = recommend(state, request, state.shop.as_of)["products"]
        from_scores = recommend(scored, request, state.shop.as_of)["products"]
        assert [(e["item_id"], e["reason"]) for e in from_table] == \
            [(e["item_id"], e["reason"]) for e in from_scores]


def test_a_factor_models_table_is_scored_from_its_vectors_as_the_training_job_scored_it(
        state, tmp_path):
    """For a factor model only the table's columns are read; each fitted customer's scores
    are computed again from the factors, and are the numbers the training job wrote."""
    from training.artifacts import IDS_FILE, RECOMMENDER_FILE, TOP_SCORES_FILE
    from training.recommenders import make_recommender
    from training.tracking import load_bundle, save_bundle

    interactions = state.models.recommender.interactions
    als = make_recommender("als", factors=8, iterations=5).fit(interactions.matrix)
    save_bundle(als, interactions, tmp_path)
    loaded = load_bundle(tmp_path / RECOMMENDER_FILE, tmp_path / IDS_FILE, tmp_path)

    assert loaded.top_items[1] is None
    written = np.load(tmp_path / TOP_SCORES_FILE)
    for row in range(25):
        columns, scores = loaded.precomputed(row, CANDIDATES)
        np.testing.assert_allclose(scores, written[row, :len(columns)], rtol=1e-5, atol=1e-6)


def test_a_factor_models_fitted_customers_are_answered_from_its_table_as_if_scored(state):
    from training.recommenders import make_recommender
    from training.tracking import TOP_ITEMS

    bundle = state.models.recommender
    als = make_recommender("als", factors=8, iterations=5).fit(bundle.interactions.matrix)
    table = als.recommend_all(bundle.interactions.matrix, N=TOP_ITEMS)
    with_table, scored = (dataclasses.replace(state, models=dataclasses.replace(
        state.models, recommender=dataclasses.replace(bundle, model=als, top_items=top)))
        for top in (table, None))
    assert with_table.models.recommender.top_items[1] is None  # scored from the factors
    for customer in bundle.interactions.user_ids[:25]:
        request = RecommendRequest(customer_id=str(customer), n={"product": 20})
        from_table = recommend(with_table, request, state.shop.as_of)["products"]
        from_scores = recommend(scored, request, state.shop.as_of)["products"]
        assert [(e["item_id"], e["reason"], round(e["score"], 4)) for e in from_table] == \
            [(e["item_id"], e["reason"], round(e["score"], 4)) for e in from_scores]


def test_a_customer_with_events_newer_than_the_model_is_scored_not_looked_up(state):
    from features.online.state import CustomerState

    bundle = state.models.recommender
    only = int(np.flatnonzero(state.products.product)[0])  # one product column (its position)
    shape = bundle.top_items[0].shape  # each row: that column, then padding
    table = (np.full(shape, -1, dtype=np.int32), np.full(shape, -np.inf, dtype=np.float32))
    table[0][:, 0], table[1][:, 0] = only, 1.0
    marked = dataclasses.replace(state, models=dataclasses.replace(
        state.models, recommender=dataclasses.replace(bundle, top_items=table)))
    customer = str(bundle.interactions.user_ids[0])
    request = RecommendRequest(customer_id=customer, n={"product": 30})
    product = str(bundle.interactions.item_ids[only])

    def for_you(answer: dict) -> set[str]:
        return {e["item_id"] for e in answer["products"] if e["reason"] == "recommended for you"}

    assert for_you(recommend(marked, request, state.shop.as_of)) <= {product}
    viewed = [str(i) for i in bundle.interactions.item_ids[-5:]]
    live = CustomerState(customer, views=[(item, 1.0) for item in viewed], last_event=1.0)
    assert for_you(recommend(marked, request, state.shop.as_of, live=live)) - {product}


def test_every_kind_of_request_hands_the_compiled_call_the_same_types(state):
    """Known, unknown and fresh customers, an item on the page the model knows and one it
    does not: numba compiles the compiled call once per combination of argument types, so a
    new combination would compile, for seconds, on the first request to bring it."""
    from features.online.state import CustomerState
    from serving.pipeline import Blend, _liked_categories, product_candidates

    bundle = state.models.recommender
    customer = str(bundle.interactions.user_ids[0])
    known_item = str(bundle.interactions.item_ids[0])
    text_only = next(i for i in state.shop.items if bundle.interactions.item_column(i) < 0)
    viewed = [str(i) for i in bundle.interactions.item_ids[-3:]]
    fresh = CustomerState(customer, views=[(i, 1.0) for i in viewed], last_event=1.0)
    asks = [(customer, {}, None), ("nobody-we-know", {}, None), (customer, {}, fresh),
            (customer, {"current_item": known_item}, None),
            ("nobody-we-know", {"current_item": text_only}, None)]

    def types(blend: Blend) -> tuple:
        return tuple((a.dtype, a.ndim, a.flags.writeable) if isinstance(a, np.ndarray) else type(a)
                     for a in blend.sources())

    seen = set()
    for customer_id, context, live in asks:
        request = RecommendRequest(customer_id=customer_id, context=context)
        behaviour = state.shop.customer(customer_id)
        seen.add(types(product_candidates(state, request, behaviour,
                                          _liked_categories(state.shop, behaviour), live)))
    assert len(seen) == 1, seen


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
    ({"now": OFFER.valid_from}, True),  # the window includes both ends
    ({"now": OFFER.valid_to}, True),
    ({"now": OFFER.valid_to + pd.Timedelta(microseconds=1)}, False),
    ({"cart_value": 25.0}, True),  # the minimum basket is enough
])
def test_offer_eligibility_rules(change, eligible):
    args = {"segment": "loyal", "channel": "web", "cart_value": 30.0, "redeemed": 0, "now": NOW}
    assert offer_is_eligible(OFFER, **{**args, **change}) is eligible


@given(offset=st.integers(-40 * 86400 * 10**6, 40 * 86400 * 10**6))
def test_the_services_datetime_clock_and_a_pandas_timestamp_agree_on_eligibility(offset):
    """The service ranks at ``datetime.now(UTC)``; offers' windows are pandas timestamps."""
    moment = NOW + pd.Timedelta(microseconds=offset)
    args = {"segment": "loyal", "channel": "web", "cart_value": 30.0, "redeemed": 0}
    assert offer_is_eligible(OFFER, now=moment.to_pydatetime(), **args) is \
        offer_is_eligible(OFFER, now=moment, **args)


shelf_offers = st.lists(st.builds(
    lambda k, value, segments, channels, window, basket, limit: Item(
        f"o{k}", "offer", "an offer", "offers", "offers", None, True, False, None,
        offer_value=value, valid_from=None if window[0] is None else NOW + pd.Timedelta(days=window[0]),
        valid_to=None if window[1] is None else NOW + pd.Timedelta(days=window[1]),
        segments=frozenset(segments), channels=frozenset(channels), min_basket=basket,
        redemption_limit=limit),
    st.integers(0, 5), st.sampled_from([None, 5.0, 10.0, 20.0]),
    st.sets(st.sampled_from(["loyal", "casual"])), st.sets(st.sampled_from(["web", "app"])),
    st.tuples(st.sampled_from([None, -3, 0, 2]), st.sampled_from([None, -1, 0, 4])),
    st.sampled_from([0.0, 25.0]), st.sampled_from([None, 1, 2])),
    max_size=8, unique_by=lambda o: o.item_id)


@given(offers=shelf_offers, segment=st.sampled_from(["loyal", "casual", ""]),
       channel=st.sampled_from(["web", "app"]), cart=st.sampled_from([[], ["p1"]]),
       redeemed=st.dictionaries(st.sampled_from([f"o{k}" for k in range(6)]), st.integers(0, 2)),
       exclude=st.lists(st.sampled_from([f"o{k}" for k in range(6)]), max_size=2),
       rates=st.lists(st.sampled_from([0.05, 0.1, 0.2, 0.5]), min_size=6, max_size=6),
       n=st.integers(1, 4))
def test_offers_shown_are_the_eligible_ones_by_expected_value(offers, segment, channel, cart,
                                                              redeemed, exclude, rates, n):
    """Whatever the offers' audiences, windows, minimums and limits: the offers shown are
    exactly those ``offer_is_eligible`` allows and the request does not exclude, best expected
    value (prior rate x value) first, ties in catalog order."""
    product = Item("p1", "product", "a product", "a/b", "a", 30.0, True, False, None)
    rate = {f"o{k}": r for k, r in enumerate(rates)}
    shop = ShopView({"p1": product, **{o.item_id: o for o in offers}}, {"c1": segment}, {},
                    {}, [], rate, [], NOW)
    state = ServingState(models=None, shop=shop, content=None)  # offers need neither
    request = RecommendRequest(customer_id="c1", channel=channel, exclude=exclude,
                               context={"cart_items": cart})
    behaviour = Behaviour(redemptions=Counter(redeemed))
    shown = rank_offers(state, request, behaviour, NOW.to_pydatetime(), n)
    cart_value = 30.0 if cart else 0.0
    plain = [o for o in offers if o.item_id not in exclude and offer_is_eligible(
        o, segment, channel, cart_value, redeemed.get(o.item_id, 0), NOW)]
    plain.sort(key=lambda o: -rate[o.item_id] * (o.offer_value or 0.0))
    assert [c.item_id for c in shown] == [o.item_id for o in plain[:n]]


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
    with pytest.raises(ValueError, match="n.product\n  Input should be less than or equal to 100"):
        RecommendRequest(customer_id="x", n={"product": 500})
    unchecked = RecommendRequest.model_construct(customer_id="x", n={ItemKind.PRODUCT: 500})
    with pytest.raises(ValueError, match="n.product must be between 0 and 100, got 500"):
        recommend(state, unchecked, state.shop.as_of)  # the pipeline checks what it is handed


# ---------------------------------------------------------------------------- HTTP
@pytest.fixture(scope="module")
def client(data_dir):
    """One ASGI app per process: BentoML registers its Prometheus metrics when it is built."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NEXTBEST_DATA_DIR", str(data_dir))
        patch.setenv("NEXTBEST_RELOAD_INTERVAL_SECONDS", "0")
        patch.setenv("NEXTBEST_FLUSH_INTERVAL_SECONDS", "0")  # see the env fixture
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
    ({"customer_id": "c1", "buy_again": -1}, "buy_again"),
    ({"customer_id": "c1", "buy_again": "lots"}, "buy_again"),
])
def test_bad_input_is_a_400_that_names_the_field(client, body, field):
    response = client.post("/recommend", json=body)
    assert response.status_code == 400
    assert field in response.json()["error"] + str(response.json().get("detail", ""))


def test_a_withdrawn_consent_applies_to_the_next_answer(client):
    """No reload needed: the contact verdict reads the consent the shop sent last."""
    ask = {"customer_id": "c0000003", "channel": "email", "n": {"product": 2}}

    def consent(granted: bool) -> dict:
        response = client.post("/consent", json={"customer_id": "c0000003", "channel": "email",
                                                 "granted": granted})
        assert response.status_code == 200, response.text
        return response.json()

    assert consent(True)["granted"] is True
    assert "consent" not in (client.post("/recommend", json=ask).json()["contact"]["reason"] or "")
    assert consent(False) | {"as_of": None} == {"customer_id": "c0000003", "channel": "email",
                                               "granted": False, "as_of": None, "recorded": True}
    contact = client.post("/recommend", json=ask).json()["contact"]
    assert contact == {"channel": "email", "allowed": False,
                       "reason": "consent for email withdrawn"}


@pytest.mark.parametrize("body, field", [
    ({"customer_id": "c1", "channel": "fax", "granted": False}, "channel"),
    ({"customer_id": "c1", "channel": "email"}, "granted"),
    ({"customer_id": "c1", "channel": "email", "granted": False,
      "timestamp": "2999-01-01T00:00:00Z"}, "timestamp"),
])
def test_a_bad_consent_is_a_400_that_names_the_field(client, body, field):
    response = client.post("/consent", json=body)
    assert response.status_code == 400
    assert field in response.json()["error"] + str(response.json().get("detail", ""))


@pytest.mark.parametrize("endpoint, body, expected", [
    ("/recommend", {"customer_id": "c1", "chanel": "web"},
     "chanel: not a field here (did you mean 'channel'? the fields are customer_id, channel, "
     "placement, n, context, filters, exclude, buy_again)"),
    ("/recommend", {"customer_id": "c1", "filters": {"colour": "red"}},
     "filters.colour: not a field here (the fields are category, min_price, max_price, "
     "in_stock_only)"),
    ("/recommend", {"customer_id": "c1", "channel": "fax"}, 'channel: Input should be'),
    ("/recommend", {"customer_id": "c1", "filters": {"max_price": -5}},
     "filters.max_price: Input should be greater than or equal to 0 (got -5)"),
    ("/consent", {"customer_id": "c1", "channel": "fax", "granted": True},
     """channel: Input should be 'email', 'sms' or 'push' (got "fax")"""),
    ("/consent", {"customer_id": "c1", "channel": "sms"}, "granted: Field required"),
])
def test_a_schema_mismatch_names_the_field_and_the_value_sent(client, endpoint, body, expected):
    response = client.post(endpoint, json=body)
    assert response.status_code == 400
    assert expected in response.json()["error"]
    assert response.json()["detail"]  # the fields, as BentoML lists them


def test_similar_items_over_http(client):
    ok = client.post("/similar_items", json={"item_id": "p000005", "n": 3})
    assert ok.status_code == 200 and len(ok.json()["items"]) == 3
    missing = client.post("/similar_items", json={"item_id": "nope"})
    assert missing.status_code == 400
    assert missing.json() == {"error": "item_id 'nope' is not in the catalog"}


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
    response = service.propensity(customer_ids=["c0000001"])
    assert response.status_code == 503
    assert "train one that beats the baselines with 'nextbest train propensity'" in \
        orjson.loads(response.body)["error"]


def test_health_endpoints(client):
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_admin_reload_needs_the_token(client):
    assert client.post("/admin_reload", json={"token": "wrong"}).status_code == 403
    answer = client.post("/admin_reload", json={"token": TOKEN})
    assert answer.status_code == 200 and answer.json()["swapped"] is False


# ---------------------------------------------------------------------------- HTTP contract
@pytest.fixture(scope="module")
def spec(client) -> dict:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def conforms(spec: dict, path: str, response) -> None:
    """``response`` is what the spec says ``path`` answers with its status."""
    import jsonschema

    documented = spec["paths"][path]["post"]["responses"]
    assert str(response.status_code) in documented, (path, response.status_code, response.text)
    schema = documented[str(response.status_code)]["content"]["application/json"]["schema"]
    jsonschema.validate(response.json(), {**schema, "components": spec["components"]})


def test_the_api_page_is_at_docs_titled_nextbest_with_its_version(client):
    from importlib import metadata

    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert f"<title>nextbest {metadata.version('nextbest')}: HTTP API</title>" in page.text
    assert "googletagmanager" not in page.text  # it opens without internet
    for asset in ("/static_content/swagger-ui-bundle.js", "/static_content/swagger-ui.css"):
        assert asset in page.text and client.get(asset).status_code == 200
    assert client.get("/", follow_redirects=False).headers["location"] == "/docs"


def test_the_spec_is_titled_nextbest_and_documents_every_status(spec):
    from importlib import metadata

    assert spec["info"]["title"] == "nextbest"
    assert spec["info"]["version"] == metadata.version("nextbest")
    events = spec["paths"]["/events"]["post"]["responses"]
    assert {"200", "207", "400", "413", "503"} <= set(events)
    assert "Retry-After" in events["503"]["headers"]
    error = spec["components"]["schemas"]["ErrorAnswer"]["properties"]
    assert error["detail"]["anyOf"][0]["type"] == "array"
    for path, item in spec["paths"].items():
        if "post" in item:
            ok = item["post"]["responses"]["200"]["content"]["application/json"]["schema"]
            assert ok["$ref"].startswith("#/components/schemas/"), path  # a typed answer


def test_real_answers_match_the_spec(client, spec, state):
    customer = buyer_of_durables(state)
    for body in ({"customer_id": customer}, {"customer_id": "ghost", "channel": "email"}):
        conforms(spec, "/recommend", client.post("/recommend", json=body))
    conforms(spec, "/recommend", client.post("/recommend", json={"customer_id": 5}))
    conforms(spec, "/recommend", client.post("/recommend", content="customer_id=c1",
                                             headers={"content-type": "text/plain"}))
    conforms(spec, "/events", client.post("/events", json=an_event("spec", "p000001")))
    conforms(spec, "/events", client.post("/events", json={"events": [an_event("spec", "p1"),
                                                                      "junk"]}))
    conforms(spec, "/events", client.post("/events", json={"channel": "fax"}))
    conforms(spec, "/events", client.post("/events", json={"events": [{}] * 10_001}))
    conforms(spec, "/events", client.post("/events", json={"events": [], "atomic": "yes"}))
    consent = {"customer_id": customer, "channel": "sms"}
    conforms(spec, "/consent", client.post("/consent", json={**consent, "granted": True}))
    conforms(spec, "/consent", client.post("/consent", json={**consent, "granted": "yes"}))
    conforms(spec, "/consent_status", client.post("/consent_status", json={"customer_id": customer}))
    conforms(spec, "/similar_items", client.post("/similar_items", json={"item_id": "p000005"}))
    conforms(spec, "/similar_items", client.post("/similar_items", json={"item_id": "nope"}))
    conforms(spec, "/propensity", client.post("/propensity", json={"customer_ids": [customer, "x"]}))
    conforms(spec, "/propensity", client.post("/propensity", json={"customer_ids": []}))
    conforms(spec, "/admin_reload", client.post("/admin_reload", json={"token": TOKEN}))
    conforms(spec, "/admin_reload", client.post("/admin_reload", json={"token": "wrong"}))
    conforms(spec, "/admin_reload", client.get("/admin_reload"))


def without_lifespan(app):
    """``app`` with its lifespan left to the test client that started it: Schemathesis runs an
    app's lifespan around its calls, and the shutdown would drop the service instance that
    the module's client shares."""
    async def served(scope, receive, send):
        if scope["type"] != "lifespan":
            return await app(scope, receive, send)
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})

    return served


FUZZ_CASES = 150
"""Requests per endpoint and mode (allowed by the spec, and breaking it): a bounded fuzz run."""


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_whatever_the_spec_allows_or_forbids_the_answer_is_what_the_spec_says(client, mode):
    """Schemathesis over the spec, on every endpoint: requests the spec allows, or requests that
    break it, each answered without a 500, with a status, content type and body the spec
    documents. Left out: the check that every request the schema allows is accepted, since the
    service also refuses what no JSON schema can say (min_price above max_price, an item not in
    the catalog, an event dated in the future): a documented 400 with the reason."""
    import schemathesis
    from schemathesis.checks import positive_data_acceptance as semantic_refusals

    schema = schemathesis.openapi.from_asgi("/openapi.json", without_lifespan(client.app))
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/metrics":  # BentoML's; in process it lacks its multiprocess
            continue                      # directory, and a real bentoml serve test reads it
        if mode == "negative" and operation.method.upper() == "GET":
            continue  # the health endpoints take nothing that could be wrong

        @given(case=operation.as_strategy(schemathesis.GenerationMode(mode)))
        @hypothesis_settings(max_examples=FUZZ_CASES, deadline=None, database=None,
                             derandomize=True, suppress_health_check=list(HealthCheck))
        def answered_as_documented(case) -> None:
            case.call_and_validate(excluded_checks=[semantic_refusals])

        answered_as_documented()


def test_unknown_paths_and_wrong_methods_answer_json(client):
    missing = client.get("/recomend")
    assert missing.status_code == 404
    assert missing.json()["error"].startswith("there is no endpoint /recomend; the endpoints are "
                                              "POST /recommend")
    wrong = client.get("/recommend")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert wrong.json() == {"error": "/recommend takes POST with a JSON body, not GET"}


def test_a_body_over_the_size_limit_is_refused_before_it_is_read(client):
    big = b'{"events": [' + b",".join([b'{"event_id": "' + b"x" * 1000 + b'"}'] * 11_000) + b"]}"
    response = client.post("/events", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"].startswith("the body is larger than 10,000,000 bytes "
                                               "(NEXTBEST_MAX_BODY_BYTES")


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab', max_size=5),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(alphabet='[]{}"\\ab', max_size=3), inner, max_size=3),
                    max_leaves=30))
def test_the_nesting_depth_is_that_of_the_parsed_json(value):
    """What RequestLimits refuses: brackets inside strings and escaped quotes do not count."""
    from serving.request_limits import nests_deeper_than

    def depth(v) -> int:
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        if isinstance(v, dict):
            return 1 + max((depth(x) for x in v.values()), default=0)
        return 0

    text = json.dumps(value).encode()
    for limit in range(6):
        assert nests_deeper_than(text, limit) == (depth(value) > limit)


def test_a_deeply_nested_body_is_a_400_at_once(client):
    deep = {"customer_id": "c1", "context": {"page_type": "x"}}
    for _ in range(300):
        deep = {"customer_id": "c1", "exclude": [deep]}
    started = time.monotonic()
    response = client.post("/recommend", json=deep)
    assert response.status_code == 400 and time.monotonic() - started < 5
    assert "more than 32 levels deep (NEXTBEST_MAX_JSON_DEPTH)" in response.json()["error"]


def test_an_event_with_a_huge_context_is_refused(client):
    response = client.post("/events", json=an_event("big", "p000001", blob="x" * 10_000))
    assert response.status_code == 400
    [problem] = response.json()["problems"]
    assert problem["field"] == "context" and "NEXTBEST_MAX_CONTEXT_BYTES" in problem["expected"]


def test_a_body_not_sent_as_json_is_told_how_to_send_it(client):
    response = client.post("/recommend", content='{"customer_id": "c0000042"}',
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415
    assert response.json()["error"].startswith(
        "the body must be JSON, sent with the header Content-Type: application/json (it came as "
        "application/x-www-form-urlencoded")


def test_a_browser_preflight_from_an_origin_not_allowed_is_refused_with_the_setting(client):
    response = client.options("/recommend", headers={
        "origin": "https://shop.example", "access-control-request-method": "POST"})
    assert response.status_code == 403
    assert "NEXTBEST_CORS_ALLOW_ORIGINS" in response.json()["error"]


def test_a_browser_preflight_from_an_allowed_origin_is_answered(monkeypatch):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from serving.cors import Cors

    monkeypatch.setenv("NEXTBEST_CORS_ALLOW_ORIGINS", '["https://shop.example"]')
    get_settings.cache_clear()
    try:
        async def ok(_):
            return JSONResponse({"ok": True})

        app = Cors(Starlette(routes=[Route("/recommend", ok, methods=["POST"])]))
        with TestClient(app) as browser:
            preflight = browser.options("/recommend", headers={
                "origin": "https://shop.example", "access-control-request-method": "POST",
                "access-control-request-headers": "content-type"})
            call = browser.post("/recommend", json={}, headers={"origin": "https://shop.example"})
    finally:
        get_settings.cache_clear()
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://shop.example"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert call.headers["access-control-allow-origin"] == "https://shop.example"


@pytest.mark.parametrize("path, setting", [("/events", "NEXTBEST_WRITE_TOKENS"),
                                           ("/consent", "NEXTBEST_WRITE_TOKENS"),
                                           ("/recommend", "NEXTBEST_READ_TOKENS")])
def test_endpoints_take_only_the_tokens_configured_for_them(monkeypatch, path, setting):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from serving.auth import TokenAuth

    monkeypatch.setenv(setting, '["old-token", "new-tökén"]')  # rotating: both are good
    get_settings.cache_clear()
    try:
        async def ok(_):
            return JSONResponse({"ok": True})

        app = TokenAuth(Starlette(routes=[Route(p, ok, methods=["POST"]) for p in (
            "/events", "/consent", "/recommend")]))
        with TestClient(app) as caller:
            def call(token: str | None, where: str = path):
                headers = {} if token is None else {"authorization": f"Bearer {token}"}
                return caller.post(where, json={}, headers={k: v.encode() for k, v in
                                                            headers.items()})

            missing, wrong = call(None), call("stolen")
            assert [call(t).status_code for t in ("old-token", "new-tökén")] == [200, 200]
    finally:
        get_settings.cache_clear()
    assert missing.status_code == wrong.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"] == (f"{path} needs the tokens in {setting}: send the header "
                                       "Authorization: Bearer <token>")
    other = "/recommend" if setting == "NEXTBEST_WRITE_TOKENS" else "/events"
    with TestClient(app) as caller:  # what the setting does not name stays open
        assert caller.post(other, json={}).status_code == 200


def test_a_non_ascii_admin_token_is_a_403_not_a_500(client):
    response = client.post("/admin_reload", json={"token": "ünïcødé"})
    assert response.status_code == 403
    assert response.json() == {"error": "the token does not match NEXTBEST_ADMIN_TOKEN"}


def test_kinds_not_named_in_n_keep_their_defaults(client):
    assert RecommendRequest(customer_id="c1", n={"product": 5}).n == {
        "product": 5, "content": 3, "offer": 2}
    answer = client.post("/recommend", json={"customer_id": "c0000001", "n": {"product": 2}})
    assert len(answer.json()["products"]) == 2 and len(answer.json()["content"]) == 3


@pytest.mark.parametrize("endpoint, body, expected", [
    ("/recommend", {"customer_id": "c1", "filters": {"min_price": 50, "max_price": 10}},
     "filters: min_price 50 is above max_price 10: no product could match; swap them"),
    ("/recommend", {"customer_id": "c1", "filters": {"in_stock_only": "no"}},
     "filters.in_stock_only: Input should be a valid boolean"),
    ("/consent", {"customer_id": "c1", "channel": "email", "granted": "yes"},
     'granted: Input should be a valid boolean (got "yes")'),
    ("/consent", {"customer_id": "c1", "channel": "email", "granted": 1},
     "granted: Input should be a valid boolean (got 1)"),
    ("/recommend", {"customer_id": "c1", "n": {"product": "5"}},
     'n.product: Input should be a valid integer (a JSON number, not a string or a boolean) '
     '(got "5")'),
    ("/recommend", {"customer_id": "c1", "n": {"product": True}},
     "n.product: Input should be a valid integer (a JSON number, not a string or a boolean) "
     "(got true)"),
    ("/recommend", {"customer_id": "c1", "filters": {"max_price": "80"}},
     'filters.max_price: Input should be a valid number (got "80")'),
    ("/similar_items", {"item_id": "p000005", "n": "3"}, "n: Input should be a valid integer"),
    ("/events", {"events": [], "note": "x"}, "a batch is {\"events\": [...], \"atomic\": ...}; "
     "it has no field 'note'"),
    ("/consent", {"customer_id": "c1", "channel": "email", "granted": True,
                  "timestamp": "2030-01-01T00:00:00Z"},
     "timestamp: expected a time no later than"),
])
def test_nonsense_that_used_to_be_accepted_is_a_400(client, endpoint, body, expected):
    response = client.post(endpoint, json=body)
    assert response.status_code == 400 and expected in response.json()["error"]


def test_a_consent_can_be_read_back(client):
    ask = {"customer_id": "c0000007"}
    before = client.post("/consent_status", json=ask).json()
    assert before["channels"]["push"]["source"] == "customers table"
    client.post("/consent", json={**ask, "channel": "push", "granted": True,
                                  "timestamp": "2026-01-02T03:04:05Z"})
    after = client.post("/consent_status", json=ask).json()["channels"]["push"]
    assert after == {"granted": True, "as_of": "2026-01-02T03:04:05+00:00", "source": "consent"}


def test_admin_reload_says_what_token_it_needs(client, env):
    missing = client.post("/admin_reload", json={})
    assert missing.status_code == 403 and "NEXTBEST_ADMIN_TOKEN" in missing.json()["error"]
    wrong = client.post("/admin_reload", json={"token": "wrong"})
    assert wrong.json() == {"error": "the token does not match NEXTBEST_ADMIN_TOKEN"}
    bearer = client.post("/admin_reload", json={}, headers={"authorization": f"Bearer {TOKEN}"})
    assert bearer.status_code == 200 and bearer.json()["swapped"] is False


def test_a_client_error_is_one_warning_line_without_a_traceback(client, caplog):
    with caplog.at_level(logging.INFO):
        client.post("/recommend", json={"customer_id": "c1", "channel": "fax"})
    records = [r for r in caplog.records if r.name == "bentoml._internal.server.http_app"]
    assert [(r.levelname, r.exc_info) for r in records] == [("WARNING", None)]
    assert records[0].getMessage() == ("rejected a request to /recommend [POST]: channel: Input "
                                       "should be 'web', 'app', 'email', 'sms', 'push' or 'store'")


def test_what_a_client_sends_never_reaches_the_log(client, caplog):
    with caplog.at_level(logging.DEBUG):
        client.post("/recommend", json={"customer_id": "jane.doe@example.com", "channel": "fax"})
        client.post("/events", json=an_event("jane.doe@example.com", "p1", channel="fax"))
        client.post("/consent", json={"customer_id": "jane.doe@example.com", "channel": "email",
                                      "granted": "yes"})
    assert caplog.records and not [r for r in caplog.records
                                   if "jane.doe" in r.getMessage() + str(r.exc_text or "")]


def test_a_model_swap_is_logged_where_the_default_level_shows_it(env, data_dir, caplog):
    service = NextBest()  # what each worker runs first
    assert logging.getLogger("nextbest.serving").isEnabledFor(logging.INFO)
    service.state = None  # as after a failed start: the next check loads and swaps
    with caplog.at_level(logging.INFO, logger="nextbest"):
        assert service.reload()
    assert any(r.levelno == logging.INFO and r.getMessage().startswith("serving {")
               for r in caplog.records)


# ---------------------------------------------------------------------------- lifecycle
def test_with_the_registry_down_it_starts_from_the_last_loaded_models(env, monkeypatch):
    NextBest()  # a normal start fills the cache
    monkeypatch.setenv("NEXTBEST_TRACKING_URI", "http://127.0.0.1:9")
    get_settings.cache_clear()
    service = NextBest()
    assert service.__is_ready__()
    assert service.state.models.source == "cache"
    assert "is unreachable" in service.detail and "serving the last good versions" in service.detail


@pytest.fixture
def own_registry(data_dir, tmp_path, monkeypatch):
    """A copy of the served data directory and registry that a test may break."""
    copy = tmp_path / "data"
    copy_of_served(data_dir, copy)
    shutil.rmtree(copy / "serving-cache", ignore_errors=True)
    for name, value in {"NEXTBEST_DATA_DIR": str(copy), "NEXTBEST_RELOAD_INTERVAL_SECONDS": "0",
                        "NEXTBEST_FLUSH_INTERVAL_SECONDS": "0",
                        "NEXTBEST_ADMIN_TOKEN": TOKEN}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield copy
    get_settings.cache_clear()


def corrupt_champion_of_a_new_version(data_dir: Path) -> tuple[str, Path, bytes]:
    """Register another recommender version, make it champion, and truncate its artifact; return
    the version, the artifact file and its good bytes."""
    from training.tracking import configure

    settings = Settings(data_dir=data_dir)
    outcome = train_recommender(settings, "itemknn", {"neighbors": 20}, register=True)
    configure(settings)
    client = MlflowClient()
    registry.promote(client, "recommender", outcome.version, reason="test")
    uri = client.get_model_version_download_uri("recommender", outcome.version)
    artifact = Path(uri.removeprefix("file://")) / "artifacts" / "recommender.npz"
    good = artifact.read_bytes()
    artifact.write_bytes(good[: len(good) // 3])
    return outcome.version, artifact, good


def readiness(service: NextBest) -> dict:
    from serving.health import HEALTH

    service._report_health()
    return dataclasses.asdict(HEALTH)


def test_a_version_that_does_not_load_is_refused_remembered_and_the_last_good_one_served(
        own_registry):
    service = NextBest()  # version 1 loads, answers, and becomes the last good set
    version, artifact, good = corrupt_champion_of_a_new_version(own_registry)
    assert service.reload() is False  # the alias moved to a corrupt version: refused
    health = readiness(service)
    assert health["ready"] and health["versions"]["recommender"] == "1"
    assert f"'recommender': '{version}'" in health["detail"] and "do not load" in health["detail"]
    cache = json.loads((own_registry / "serving-cache" / "manifest.json").read_text())
    assert cache["versions"]["recommender"] == "1"  # never named as good

    restarted = NextBest()  # with the registry up, a start does not crash-loop on it
    health = readiness(restarted)
    assert health["ready"] and health["versions"]["recommender"] == "1"
    assert health["served_from"] == "cache" and "refused before" in health["detail"]

    artifact.write_bytes(good)  # repaired in the registry: a person asks for it again
    assert restarted.reload() is False  # the poller does not retry a refused set by itself
    assert restarted.reload(retry_refused=True) is True
    assert restarted.state.models.versions["recommender"] == version


def test_a_stored_event_dated_9999_does_not_stop_the_service_from_starting(own_registry, caplog):
    from features.warehouse import Warehouse

    warehouse = Warehouse(own_registry / "warehouse")
    strange = warehouse.events().iloc[[0]].assign(
        event_id="from-9999", timestamp=pd.Timestamp("9999-12-31T23:59:59Z"))
    warehouse.append_events(strange)  # as it could be stored before such events were refused
    service = NextBest()
    assert service.__is_ready__()
    assert service.state.shop.as_of < pd.Timestamp("2100-01-01", tz="UTC")
    assert any("from-9999 at 9999-12-31" in r.getMessage() for r in caplog.records)


def test_the_served_top_items_table_is_mapped_from_the_cache_not_copied(state):
    top_items, top_scores = state.models.recommender.top_items
    assert is_mapped(top_items) and is_mapped(top_scores)
    assert top_items.flags.writeable, "typed as the arrays a request builds (no recompiling)"


def test_a_cached_copy_that_no_longer_matches_its_checksums_is_fetched_again(own_registry,
                                                                            monkeypatch):
    NextBest()
    [cached] = (own_registry / "serving-cache" / "recommender" / "1").glob("recommender.npz")
    cached.write_bytes(b"garbage")
    service = NextBest()  # the registry is up: the copy is fetched again
    assert service.__is_ready__() and service.state.models.source == "registry"
    cached.write_bytes(b"garbage")
    monkeypatch.setenv("NEXTBEST_TRACKING_URI", "http://127.0.0.1:9")
    get_settings.cache_clear()
    down = NextBest()  # no registry, and the only copy is damaged: not ready, and says why
    assert not down.__is_ready__()
    assert "does not match its checksums" in down.detail


def test_readiness_says_what_is_served_and_why_over_http(client):
    client.post("/admin_reload", json={"token": TOKEN})  # this app's service reports again
    response = client.get("/readyz")  # (other tests started services of their own since)
    assert response.status_code == 200
    body = response.json()
    assert body["ready"] is True and body["versions"]["recommender"] == "1"
    assert body["served_from"] == "registry"


def test_with_no_registry_and_no_cache_it_is_not_ready_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTBEST_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("NEXTBEST_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("NEXTBEST_RELOAD_INTERVAL_SECONDS", "0")
    get_settings.cache_clear()
    service = NextBest()
    assert not service.__is_ready__()
    assert "unreachable" in service.detail and "no models that worked are cached" in service.detail
    with pytest.raises(ServiceUnavailable, match="no models loaded yet"):
        service.answer(RecommendRequest(customer_id="c1"))
    response = asyncio.run(service.recommend(RecommendRequest(customer_id="c1")))  # as over HTTP
    assert response.status_code == 503
    assert "no models loaded yet" in orjson.loads(response.body)["error"]
    get_settings.cache_clear()


def test_a_moved_alias_is_swapped_in_while_requests_keep_flowing(env, data_dir):
    service = NextBest()
    second = train_recommender(Settings(data_dir=data_dir), "popularity")
    client = MlflowClient()
    registry.promote(client, "recommender", second.version, reason="test hot swap")
    errors, seen = [], set()

    def ask(i: int) -> None:
        try:
            answer = service.answer(RecommendRequest(customer_id=f"c{i % 300:07d}"))
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
    assert service.answer(RecommendRequest(customer_id="c0000001"))["model_versions"]["recommender"] == \
        second.version
    registry.rollback(client, "recommender")


def test_a_swapped_out_state_is_freed_without_a_garbage_collection(data_dir):
    """The service freezes its loaded state out of the collector's sight (``gc.freeze``), so a
    state dropped by a swap is freed only if reference counting alone frees it: a reference
    cycle anywhere in it would keep it in memory on every promotion until the worker restarts."""
    state = build_state(Settings(data_dir=data_dir))
    now = pd.Timestamp.now(tz="UTC")
    for request in (RecommendRequest(customer_id="c0000001"),  # caches and per-thread scratch
                    RecommendRequest(customer_id="nobody", filters={"category": "beauty"},
                                     context={"current_item": "p000031", "cart_items": ["p000017"]})):
        recommend(state, request, now)
    similar_products(state, "p000031")
    parts = [weakref.ref(part) for part in (state, state.shop, state.products, state.content)]
    gc.collect()
    gc.disable()
    try:
        del state
        assert [part() for part in parts] == [None] * len(parts)
        assert gc.collect() == 0
    finally:
        gc.enable()


# ---------------------------------------------------------------------------- real server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, tmp_path: Path, **env: str) -> tuple[subprocess.Popen, str]:
    """``bentoml serve`` in a subprocess, returned once /readyz answers 200; the workers' memory
    settings are the service's own, whatever this process runs with."""
    return wait_until_ready(*spawn_server(data_dir, tmp_path, **env))


def spawn_server(data_dir: Path, tmp_path: Path, **env: str) -> tuple[subprocess.Popen, str]:
    """``start_server`` without the wait: several start at once (``wait_until_ready`` each)."""
    port = _free_port()
    inherited = {k: v for k, v in os.environ.items() if k not in WORKER_ENVS}
    env = {**inherited, "NEXTBEST_DATA_DIR": str(data_dir),
           "NEXTBEST_RELOAD_INTERVAL_SECONDS": "0", "BENTOML_HOME": str(tmp_path / "bentoml"),
           **env}
    root = Path(__file__).resolve().parents[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "serving.service:NextBest", "--port", str(port),
         "--host", "127.0.0.1"], cwd=root, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    return server, f"http://127.0.0.1:{port}"


def wait_until_ready(server: subprocess.Popen, url: str) -> tuple[subprocess.Popen, str]:
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as ready:
                if ready.status == 200:
                    return server, url
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"bentoml serve did not become ready: {server.stderr.read()[-2000:]}",
                            pytrace=False)
            time.sleep(0.5)


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def stop(server: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Signal the server and every worker it started (BentoML workers run in their own process
    groups, so a signal to the server's group alone would leave them serving)."""
    try:
        processes = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(sig)
    psutil.wait_procs(processes, timeout=30)
    server.wait(timeout=30)


@pytest.mark.slow
def test_a_real_bentoml_serve_process_answers(data_dir, tmp_path):
    server, url = start_server(data_dir, tmp_path)
    try:
        status, body = post(f"{url}/recommend", {"customer_id": "c0000001", "n": {"product": 3}})
        assert status == 200
        assert len(body["products"]) == 3 and body["model_versions"]["recommender"] == "1"
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as metrics:
            assert "bentoml_service_request" in metrics.read().decode()
    finally:
        stop(server)


@pytest.mark.slow
def test_nextbest_serve_listens_on_this_machine_only_by_default(data_dir):
    port = _free_port()
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("NEXTBEST_")}
    server = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "serve", "--port", str(port), "--data-dir",
         str(data_dir)], cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**inherited, "NEXTBEST_RELOAD_INTERVAL_SECONDS": "0",
             "NEXTBEST_FLUSH_INTERVAL_SECONDS": "0"})
    try:
        wait_until_ready(server, f"http://127.0.0.1:{port}")
        listening = {c.laddr.ip for c in psutil.net_connections("tcp")
                     if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN}
        assert listening == {"127.0.0.1"}
    finally:
        stop(server)


@contextlib.contextmanager
def private_redis():
    """A redis-server of this test's own (stopping it disturbs no one); yields its URL."""
    require_program("redis-server")
    port = _free_port()
    redis_server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                     "--save", "", "--appendonly", "no"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        redis_server.kill()
        redis_server.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["embedded", "redis"])
def test_kill_9_under_concurrent_batches_loses_and_doubles_no_acknowledged_event(data_dir, tmp_path,
                                                                                 backend):
    """Four clients send batches of ten events with ids the test controls; the service is
    killed (every process, SIGKILL) while they do. After a restart: every acknowledged event is
    stored exactly once, re-sending them all gives only duplicates, and each customer's state
    counted each event once."""
    import threading

    from features.online import open_online_store
    from features.warehouse import Warehouse

    online = tmp_path / "data"
    copy_of_served(data_dir, online)  # the models and warehouse as served
    with contextlib.ExitStack() as stack:
        env = {"NEXTBEST_FLUSH_INTERVAL_SECONDS": "0", "NEXTBEST_ONLINE_BACKEND": backend}
        if backend == "redis":
            env |= {"NEXTBEST_REDIS_URL": stack.enter_context(private_redis()),
                    "NEXTBEST_REDIS_PREFIX": f"kill9-{uuid.uuid4().hex[:6]}:"}
        server, url = start_server(online, tmp_path, **env)
        acknowledged: dict[str, list[dict]] = {}
        stopping = threading.Event()

        def client(number: int) -> None:
            customer, batch = f"kill9-{number}", 0
            while not stopping.is_set():
                events = [an_event(customer, f"p{i:06d}", "view",
                                   event_id=f"{customer}-{batch}-{i}") for i in range(1, 11)]
                try:
                    status, body = post(f"{url}/events", {"events": events})
                except OSError:
                    return  # the server is gone
                if status == 200 and body["accepted"] + body["duplicates"] == 10:
                    acknowledged.setdefault(customer, []).extend(events)
                batch += 1

        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(3)
        stop(server, signal.SIGKILL)  # mid-stream: no chance to flush or close anything
        stopping.set()
        for thread in threads:
            thread.join(timeout=30)
        sent = [e for events in acknowledged.values() for e in events]
        assert len(sent) >= 40, "the clients got too few answers before the kill"
        server, url = start_server(online, tmp_path, **env)
        try:
            answers = [post(f"{url}/events", {"events": sent[start:start + 500]})
                       for start in range(0, len(sent), 500)]
            assert {status for status, _ in answers} == {200}
            assert sum(body["duplicates"] for _, body in answers) == len(sent)  # all remembered
        finally:
            stop(server)
        settings = Settings(data_dir=online, online_backend=backend,
                            **({"redis_url": env["NEXTBEST_REDIS_URL"],
                                "redis_prefix": env["NEXTBEST_REDIS_PREFIX"]}
                               if backend == "redis" else {}))
        store = open_online_store(settings)
        store.flush_to(Warehouse(online / "warehouse"))
        stored = Warehouse(online / "warehouse").events(customer_ids=list(acknowledged))
        assert stored["event_id"].is_unique  # nothing counted twice
        assert {e["event_id"] for e in sent} <= set(stored["event_id"])  # nothing lost
        for customer in acknowledged:
            counted = store.customer(customer).counts.get("view", 0)
            assert counted == int((stored["customer_id"] == customer).sum())


@pytest.mark.slow
def test_with_redis_stopped_recommend_degrades_and_ingestion_asks_for_a_retry(data_dir, tmp_path):
    require_program("redis-server")  # a private server, so that stopping it disturbs no one
    port = _free_port()
    redis_server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                     "--save", "", "--appendonly", "no"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        server, url = start_server(data_dir, tmp_path, NEXTBEST_ONLINE_BACKEND="redis",
                                   NEXTBEST_REDIS_URL=f"redis://127.0.0.1:{port}/0")
        status, body = post(f"{url}/events", an_event("redis-shopper", "p000004", "purchase"))
        assert status == 200 and body["accepted"] == 1
        redis_server.kill()
        redis_server.wait(timeout=10)
        status, answer = post(f"{url}/recommend", {"customer_id": "redis-shopper"})
        assert status == 200 and answer["degraded"] is True and answer["products"]
        assert "unreachable" in answer["degraded_reason"]
        status, refused = post(f"{url}/events", an_event("redis-shopper", "p000005"))
        assert status == 503 and "nothing was recorded, retry" in refused["error"]
    finally:
        redis_server.kill()
        if server is not None:
            stop(server)


@pytest.mark.slow
def test_a_redis_that_never_answers_stalls_no_endpoint(data_dir, tmp_path):
    """A listener that accepts connections and never answers: the first write waits out the
    store's timeout, the next ones fail at once, and the other endpoints never wait."""
    import threading

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: [held.append(silent.accept()[0]) for _ in range(64)],
                     daemon=True).start()
    server = None
    try:
        server, url = start_server(
            data_dir, tmp_path, NEXTBEST_ONLINE_BACKEND="redis",
            NEXTBEST_REDIS_URL=f"redis://127.0.0.1:{silent.getsockname()[1]}/0",
            NEXTBEST_FLUSH_INTERVAL_SECONDS="0")
        started = time.monotonic()
        with ThreadPoolExecutor(12) as pool:
            writes = [pool.submit(post, f"{url}/events", an_event(f"stall-{i}", "p000001"))
                      for i in range(10)]
            time.sleep(0.3)
            asked = time.monotonic()
            status, similar = post(f"{url}/similar_items", {"item_id": "p000005", "n": 3})
            similar_took = time.monotonic() - asked
            answers = [w.result() for w in writes]
        assert status == 200 and similar_took < 1.5
        assert {code for code, _ in answers} == {503}
        assert time.monotonic() - started < 6  # one timeout (2 s), not ten in a row
    finally:
        if server is not None:
            stop(server)
        for connection in held:
            connection.close()
        silent.close()


@pytest.mark.slow
def test_the_built_bento_serves_the_models_of_the_directory_it_is_started_from(data_dir, tmp_path):
    """`bentoml build`, then `bentoml serve nextbest:<tag>` from the directory holding the
    demo's .nextbest (as the README says): BentoML runs the service inside the stored Bento,
    and the data directory must still be the one the user started from."""
    root = Path(__file__).resolve().parents[1]
    home = tmp_path / "bentoml"
    built = subprocess.run([sys.executable, "-m", "bentoml", "build", "--output", "tag"],
                           cwd=root, env={**os.environ, "BENTOML_HOME": str(home)},
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    [bento] = (home / "bentos" / "nextbest").glob("*/bento.yaml")
    shop = tmp_path / "shop"
    copy_of_served(data_dir, shop / ".nextbest")
    port = _free_port()
    inherited = {k: v for k, v in os.environ.items()
                 if k not in WORKER_ENVS and not k.startswith("NEXTBEST_")}
    server = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", tag, "--port", str(port), "--host",
         "127.0.0.1"], cwd=shop, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**inherited, "BENTOML_HOME": str(home), "PWD": str(shop),  # as a shell sets it
             "NEXTBEST_RELOAD_INTERVAL_SECONDS": "0", "NEXTBEST_FLUSH_INTERVAL_SECONDS": "0"},
        start_new_session=True)
    try:
        _, url = wait_until_ready(server, f"http://127.0.0.1:{port}")
        status, body = post(f"{url}/recommend", {"customer_id": "c0000001", "n": {"product": 3}})
        assert status == 200 and body["model_versions"]["recommender"] == "1"
        assert not list(bento.parent.rglob("mlflow.db"))  # nothing written inside the Bento
    finally:
        stop(server)


@pytest.mark.parametrize("inside, pwd, expected", [
    (False, "/elsewhere", "cwd"), (True, "/srv/shop", "/srv/shop"), (True, None, "refused")])
def test_a_relative_data_dir_is_resolved_where_the_service_was_launched(tmp_path, inside, pwd,
                                                                       expected):
    from serving.launch import launch_directory

    cwd = tmp_path / "bento" / "src"
    cwd.mkdir(parents=True)
    if inside:
        (tmp_path / "bento" / "bento.yaml").write_text("service: x\n")
    if expected == "refused":
        with pytest.raises(ValueError, match="set NEXTBEST_DATA_DIR to the absolute path"):
            launch_directory(cwd, pwd or "")
        return
    assert launch_directory(cwd, pwd) == (cwd if expected == "cwd" else Path(expected))


# ---------------------------------------------------------------------------- real time
def an_event(customer: str, item: str, kind: str = "view", **extra) -> dict:
    return {"event_id": uuid.uuid4().hex, "customer_id": customer, "item_id": item,
            "event_type": kind, "timestamp": pd.Timestamp.now(tz="UTC").isoformat(),
            "channel": "web", **extra}


def test_one_event_is_accepted_once_and_a_retry_is_a_duplicate(client):
    event = an_event("rt-single", "p000001")
    first = client.post("/events", json=event)
    assert first.status_code == 200 and first.json()["accepted"] == 1
    again = client.post("/events", json=event)
    assert again.status_code == 200 and again.json() == {"accepted": 0, "duplicates": 1,
                                                          "rejected": [], "problems": []}


def test_a_batch_keeps_its_good_events_and_names_each_bad_one(client):
    good = an_event("rt-batch", "p000002")
    bad = an_event("rt-batch", "p000003", kind="teleport")
    response = client.post("/events", json={"events": [good, bad, "junk"]})
    assert response.status_code == 207
    body = response.json()
    assert body["accepted"] == 1 and body["rejected"] == [1, 2]
    messages = [p["message"] for p in body["problems"]]
    assert any(m.startswith("events[1].event_type: got 'teleport'") for m in messages)
    assert any(m.startswith("events[2]: got \"'junk'\"") for m in messages)


def test_an_atomic_batch_with_a_bad_event_records_nothing(client):
    good = an_event("rt-atomic", "p000002")
    bad = an_event("rt-atomic", "p000003", timestamp="last tuesday")
    response = client.post("/events", json={"events": [good, bad], "atomic": True})
    assert response.status_code == 400 and "events[1].timestamp" in response.text
    assert client.post("/events", json=good).json()["accepted"] == 1  # it was not recorded


def test_a_single_bad_event_is_a_400_that_names_the_field(client):
    response = client.post("/events", json={**an_event("rt-bad", "p1"), "channel": "fax"})
    assert response.status_code == 400 and "events[0].channel: got 'fax'" in response.text


def test_an_event_from_the_future_is_refused_and_drives_nothing(client, state):
    future = an_event("rt-future", "p000010", timestamp="2030-01-01T00:00:00Z")
    response = client.post("/events", json=future)
    assert response.status_code == 400
    assert "NEXTBEST_FUTURE_TOLERANCE_MINUTES" in response.json()["problems"][0]["expected"]
    answer = client.post("/recommend", json={"customer_id": "rt-future"}).json()
    assert not any(e["reason"].startswith("because you viewed") for e in answer["products"])


def test_an_oversized_batch_is_refused_whole(client):
    response = client.post("/events", json={"events": [{}] * 10_001})
    assert response.status_code == 413 and "at most 10000 events" in response.text


def test_a_purchase_removes_the_item_from_the_next_recommendation(client, state):
    customer = buyer_of_durables(state)
    before = client.post("/recommend", json={"customer_id": customer}).json()
    durable = next(i for i in ids(before) if not state.shop.items[i].repeatable)
    client.post("/events", json=an_event(customer, durable, "purchase"))
    after = client.post("/recommend", json={"customer_id": customer, "n": {"product": 50}}).json()
    assert durable not in ids(after) and after["degraded"] is False


def test_a_just_viewed_item_drives_similar_recommendations(client, state):
    viewed = "p000010"
    client.post("/events", json=an_event("rt-newcomer", viewed))
    answer = client.post("/recommend", json={"customer_id": "rt-newcomer"}).json()
    title = state.shop.items[viewed].title
    assert any(entry["reason"] == f"because you viewed {title}" for entry in answer["products"])
    assert answer["known_customer"]


def test_the_live_cart_is_context(client, state):
    in_cart = "p000011"
    client.post("/events", json=an_event("rt-cart", in_cart, "add_to_cart"))
    answer = client.post("/recommend", json={"customer_id": "rt-cart"}).json()
    assert in_cart not in ids(answer)
    title = state.shop.items[in_cart].title
    assert any(entry["reason"] == f"goes with {title}" for entry in answer["products"])


def test_a_factor_model_computes_a_new_customers_vector_from_their_fresh_events(state):
    from features.online.state import CustomerState
    from training.recommenders import make_recommender

    bundle = state.models.recommender
    als = make_recommender("als", factors=8, iterations=5).fit(bundle.interactions.matrix)
    models = dataclasses.replace(state.models, recommender=dataclasses.replace(bundle, model=als))
    with_als = dataclasses.replace(state, models=models)
    request = RecommendRequest(customer_id="brand-new-customer", n={"product": 20})
    before = recommend(with_als, request, state.shop.as_of)
    seen = [str(i) for i in bundle.interactions.item_ids[:5]]
    live = CustomerState("brand-new-customer", views=[(item, 1.0) for item in seen],
                         last_event=1.0)
    after = recommend(with_als, request, state.shop.as_of, live=live)
    reasons = {entry["reason"] for entry in after["products"]}
    assert "recommended for you" not in {e["reason"] for e in before["products"]}
    assert "recommended for you" in reasons


# ---------------------------------------------------------------------------- offer model
def offer_model(state: ServingState):
    """A small offer-response model in which offers without a basket minimum get redeemed."""
    from training.propensity.model import PropensityModel

    rng = np.random.default_rng(0)
    rows = state.propensity.features.sample(600, replace=True, random_state=0)
    rows = rows.reset_index(drop=True).assign(
        offer_value=rng.uniform(5, 50, 600), offer_min_basket=rng.choice([0.0, 50.0], 600),
        offer_days_left=rng.uniform(1, 30, 600))
    return PropensityModel(n_estimators=30).fit(rows, (rows["offer_min_basket"] == 0).astype(int))


@pytest.mark.parametrize("clock", ["pandas", "datetime"])  # the service ranks at a datetime
def test_offers_are_ranked_by_the_offer_models_chance_times_value(state, clock):
    scorer = OfferScorer(offer_model(state), "7", state.propensity.features)
    with_model = dataclasses.replace(state, offers=scorer)
    when = state.shop.as_of - pd.Timedelta(days=20)
    if clock == "datetime":
        when = when.to_pydatetime()
    request = RecommendRequest(customer_id="c0000001", n={"offer": 10})
    answer = recommend(with_model, request, when)
    assert answer["offers"], "the test shop should have eligible offers then"
    offers = [state.shop.items[e["item_id"]] for e in answer["offers"]]
    chances = scorer.redeem_probability("c0000001", offers, when)
    expected = [round(p * o.offer_value, 6) for p, o in zip(chances, offers, strict=True)]
    assert [e["score"] for e in answer["offers"]] == expected == sorted(expected, reverse=True)
    assert all("chance you redeem it" in e["reason"] for e in answer["offers"])


def test_a_customer_the_offer_model_never_saw_still_gets_a_chance(state):
    scorer = OfferScorer(offer_model(state), "7", state.propensity.features)
    offers = state.shop.offers[:3]
    chances = scorer.redeem_probability("never-seen", offers, state.shop.as_of)
    assert ((chances > 0) & (chances < 1)).all()


def test_a_model_without_offer_terms_is_not_an_offer_model(state):
    with pytest.raises(ValueError, match="lacks offer_value"):
        OfferScorer(state.models.propensity, "1", state.propensity.features)


def test_a_registered_offer_model_is_loaded_and_ranks_the_offers(data_dir, tmp_path):
    copy = tmp_path / "data"
    copy_of_served(data_dir, copy)  # its own registry, so the shared one keeps two models
    settings = Settings(data_dir=copy)
    offer = train_propensity(settings, "offer", {"n_estimators": 50}, horizon_days=14,
                             n_snapshots=2)
    if not offer.decision.promoted:  # the gate's business; here a champion is needed
        promote_by_hand(settings, "propensity-offer", offer.version)
    state = build_state(settings)
    assert state.models.versions["propensity-offer"] == offer.version
    assert state.offers is not None and state.offers.version == offer.version
    answer = recommend(state, RecommendRequest(customer_id="c0000001", n={"offer": 5}),
                       state.shop.as_of - pd.Timedelta(days=20))
    assert answer["model_versions"]["propensity-offer"] == offer.version
    assert all("chance you redeem it" in e["reason"] for e in answer["offers"])


def test_content_ranks_browsed_categories_first_and_fills_with_popular_reading(state):
    from serving.pipeline import _liked_categories, rank_content

    customer = next(c for c, b in state.shop.behaviour.items() if b.recent_views)
    behaviour = state.shop.customer(customer)
    excluded = [i.item_id for i in state.shop.items.values() if i.kind == "content"][:2]
    request = RecommendRequest(customer_id=customer, exclude=excluded)
    ranked = rank_content(state, request, behaviour, 40)
    scores = [c.score for c in ranked]
    assert scores == sorted(scores, reverse=True)
    assert not {c.item_id for c in ranked} & (set(excluded) | set(behaviour.recent_views))
    liked = _liked_categories(state.shop, behaviour)
    favourite = next(iter(liked))
    assert liked[favourite] == max(liked.values())
    assert ranked[0].reason == f"about {favourite}, which you have been browsing"
    kinds = ["popular" if c.reason == "popular reading" else "browsing" for c in ranked]
    assert kinds == sorted(kinds)  # every browsing article before any popular one


def test_each_worker_takes_its_share_of_the_cores_for_blas():
    """In a fresh process: in this one, other tests' background threads enter and leave
    threadpool limits of their own, which restore whatever they found."""
    probe = ("from threadpoolctl import threadpool_info; from serving.service import "
             "share_blas_threads; import os; cores = os.cpu_count() or 1; "
             "shares = [share_blas_threads(2 * cores), share_blas_threads('cpu_count')]; "
             "print(shares, sorted({p['num_threads'] for p in threadpool_info() "
             "if p['user_api'] == 'blas'}), share_blas_threads(1) == cores)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.split("\n")[0] == "[1, 1] [1] True"


@pytest.mark.slow
def test_the_workers_of_a_real_bentoml_serve_start_with_their_heap_on_huge_pages(data_dir, tmp_path):
    """What serving/workarounds/huge_pages.py sets reaches the worker processes BentoML starts."""
    server, _ = start_server(data_dir, tmp_path)
    try:
        workers = [p for p in psutil.Process(server.pid).children(recursive=True)
                   if "worker" in " ".join(p.cmdline())]
        assert workers
        for worker in workers:
            assert {k: worker.environ().get(k) for k in WORKER_ENVS} == WORKER_ENVS
    finally:
        stop(server)

"""Several instances, one state: two API instances behind HAProxy, one background worker.

The deployment of docs/deploy.md without its containers: two ``bentoml serve`` processes on
their own ports, on one Redis online store and one MLflow tracking server on PostgreSQL, a real
HAProxy in front of them, and one ``nextbest worker`` beside them, all started here.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from features.online import open_online_store
from features.settings import Settings
from features.synthetic import ShopConfig, generate_shop, store_shop
from features.warehouse import Warehouse
from tests.conftest import (
    require_program,
    require_service,
    tracking_server_on_postgresql,
    with_welcome_journey,
)
from tests.test_service import (
    _free_port,
    an_event,
    post,
    private_redis,
    spawn_server,
    stop,
    wait_until_ready,
)
from training.recommender_job import train_recommender

pytestmark = [pytest.mark.services, pytest.mark.slow]

@dataclass
class Deployment:
    """What the module's tests share: the instances' URLs, the balancer's, the settings."""

    settings: Settings
    instances: list[tuple[subprocess.Popen, str]]
    """(process, url) of each API instance."""
    balancer: str
    spare: str
    """A registered recommender version that is not the champion."""

    @property
    def store(self):
        return open_online_store(self.settings)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    require_service("PostgreSQL", "127.0.0.1", 5432)
    require_program("haproxy")
    root = tmp_path_factory.mktemp("deployment")
    data = root / "data"
    store_shop(Warehouse(data / "warehouse"),
               generate_shop(ShopConfig(n_customers=300, n_products=120, days=75, seed=21)))
    with_welcome_journey(data)
    with contextlib.ExitStack() as stack:
        tracking = stack.enter_context(tracking_server_on_postgresql(root))
        redis_url = stack.enter_context(private_redis())
        env = {"NEXTBEST_TRACKING_URI": tracking, "NEXTBEST_ONLINE_BACKEND": "redis",
               "NEXTBEST_REDIS_URL": redis_url, "NEXTBEST_REDIS_PREFIX": "nextbest:two:",
               "NEXTBEST_RELOAD_INTERVAL_SECONDS": "1", "NEXTBEST_FLUSH_INTERVAL_SECONDS": "1"}
        settings = Settings(data_dir=data, tracking_uri=tracking, online_backend="redis",
                            redis_url=redis_url, redis_prefix="nextbest:two:")
        spare = train_recommender(settings, "popularity").version
        assert train_recommender(settings, "itemknn").decision.promoted
        spawned = [spawn_server(data, root / f"api{k}", **env) for k in range(2)]
        for server, _ in spawned:
            stack.callback(stop, server)
        worker = subprocess.Popen([sys.executable, "-m", "serving.cli", "worker"],
                                  cwd=Path(__file__).resolve().parents[1],
                                  env={**os.environ, "NEXTBEST_DATA_DIR": str(data), **env},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(lambda: (worker.terminate(), worker.wait(timeout=60)))
        instances = [wait_until_ready(*started) for started in spawned]  # they start together
        balancer = stack.enter_context(haproxy(root, [url for _, url in instances]))
        yield Deployment(settings, instances, balancer, spare)


@contextlib.contextmanager
def haproxy(directory: Path, servers: list[str]):
    """HAProxy round-robin over ``servers``, health-checked on /readyz; yields its URL."""
    port = _free_port()
    backends = "\n".join(
        f"    server api{k} {url.removeprefix('http://')} check inter 300 fall 1 rise 2"
        for k, url in enumerate(servers))
    config = directory / "haproxy.cfg"
    config.write_text(f"""global
    maxconn 256
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch
frontend nextbest
    bind 127.0.0.1:{port}
    default_backend api
backend api
    balance roundrobin
    option httpchk GET /readyz
    retry-on conn-failure empty-response response-timeout
{backends}
""")
    process = subprocess.Popen(["haproxy", "-f", str(config), "-db"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"haproxy did not start: {process.stderr.read()[-2000:]}", pytrace=False)
        time.sleep(0.2)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def answers(url: str) -> bool:
    try:
        return post(f"{url}/recommend", {"customer_id": "probe"})[0] == 200
    except urllib.error.URLError:  # not listening yet
        return False


def products(url: str, customer: str) -> list[str]:
    status, answer = post(f"{url}/recommend", {"customer_id": customer, "n": {"product": 10}})
    assert status == 200, answer
    return [p["item_id"] for p in answer["products"]]


def test_an_event_sent_through_one_instance_changes_the_other_s_next_answer(deployment):
    (_, first), (_, second) = deployment.instances
    newcomer = f"new-{uuid.uuid4().hex[:6]}"
    status, unknown = post(f"{second}/recommend", {"customer_id": newcomer})
    assert status == 200 and not unknown["known_customer"]
    viewed = products(second, "c00042")[0]

    status, answer = post(f"{first}/events", an_event(newcomer, viewed, "view"))

    assert status == 200 and answer["accepted"] == 1
    status, known = post(f"{second}/recommend", {"customer_id": newcomer})
    assert known["known_customer"], "the other instance sees the event"
    assert [p["item_id"] for p in known["products"]] != \
        [p["item_id"] for p in unknown["products"]], "and ranks from it"


def test_requests_through_the_balancer_reach_both_instances(deployment):
    before = [metric_count(url) for _, url in deployment.instances]
    for _ in range(6):
        assert post(f"{deployment.balancer}/recommend", {"customer_id": "c00007"})[0] == 200

    after = [metric_count(url) for _, url in deployment.instances]
    assert [a - b for a, b in zip(after, before, strict=True)] == [3, 3], "round robin"


def metric_count(url: str) -> float:
    """Requests to /recommend this instance answered, from its Prometheus metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("bentoml_service_request_total{")
               and 'endpoint="/recommend"' in line and 'http_response_code="200"' in line)


def test_a_journey_message_is_sent_once_whatever_the_number_of_instances(deployment):
    customer = f"j-{uuid.uuid4().hex[:6]}"
    item = products(deployment.balancer, "c00001")[0]
    assert post(f"{deployment.balancer}/consent",
                {"customer_id": customer, "channel": "email", "granted": True})[0] == 200
    assert post(f"{deployment.balancer}/events", an_event(customer, item, "add_to_cart"))[0] == 200

    store, deadline = deployment.store, time.monotonic() + 60
    while not mine(store, customer) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2.0)  # a second sender, if there were one, would have sent by now

    assert len(mine(store, customer)) == 1


def mine(store, customer: str) -> list[dict]:
    return [d for _, d in store.outbox(limit=10_000) if d["customer_id"] == customer]


def test_a_promotion_is_picked_up_by_both_instances(deployment):
    from tests.conftest import promote_by_hand

    promote_by_hand(deployment.settings, deployment.settings.recommender_name, deployment.spare)

    deadline = time.monotonic() + 60
    for _, url in deployment.instances:
        while True:
            status, answer = post(f"{url}/recommend", {"customer_id": "c00003"})
            if status == 200 and answer["model_versions"]["recommender"] == deployment.spare:
                break
            assert time.monotonic() < deadline, f"{url} still serves {answer['model_versions']}"
            time.sleep(0.5)


def status_of(url: str, body: dict) -> int:
    """The HTTP status of a POST, 0 when no answer came: the balancer's own error pages
    (a 502 while an instance dies) are not JSON, and a refused connection is no status."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


def test_stopping_one_instance_loses_no_acknowledged_event(deployment):
    """Four clients send batches through the balancer, retrying what was not acknowledged,
    while one instance is killed; every acknowledged event reaches the warehouse once."""
    acknowledged: list[str] = []
    stop_sending = threading.Event()
    customers = [f"s{k:03d}" for k in range(40)]
    item = products(deployment.balancer, "c00001")[0]

    def client(seed: int) -> None:
        k = 0
        while not stop_sending.is_set():
            batch = [an_event(customers[(seed * 7 + k + j) % 40], item, "view")
                     for j in range(20)]
            k += 1
            for _ in range(50):  # a retry sends the same event ids again
                if status_of(f"{deployment.balancer}/events", {"events": batch}) == 200:
                    acknowledged.extend(e["event_id"] for e in batch)
                    break
                time.sleep(0.1)

    threads = [threading.Thread(target=client, args=(s,)) for s in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    killed, _ = deployment.instances[0]
    stop(killed, signal.SIGKILL)
    time.sleep(3.0)
    stop_sending.set()
    for thread in threads:
        thread.join(timeout=60)

    assert len(acknowledged) > 100
    warehouse = Warehouse(deployment.settings.data_dir / "warehouse")
    deployment.store.flush_to(warehouse)  # what the worker has not moved yet
    stored = warehouse.events()
    stored = stored[stored["event_id"].isin(set(acknowledged))]
    assert len(stored) == len(set(acknowledged)), "every acknowledged event, once"

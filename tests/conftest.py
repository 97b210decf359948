"""Shared fixtures: a tiny synthetic shop (generated once), fresh warehouses, local services.

Tests never read ../shared: everything they use is generated here or written by the test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pandas as pd
import pytest

from features.synthetic import ShopConfig, SyntheticShop, generate_shop, store_shop
from features.warehouse import Warehouse

TINY = ShopConfig(n_customers=80, n_products=90, n_content=24, n_offers=6, days=60, seed=7)


@pytest.fixture(scope="session")
def tiny_shop() -> SyntheticShop:
    """A few thousand events; shared, so tests must not modify its frames (checked below)."""
    return generate_shop(TINY)


@pytest.fixture(autouse=True)
def _tiny_shop_untouched(request):
    """Fail a test that mutates the shared shop in place."""
    if "tiny_shop" not in request.fixturenames:
        yield
        return
    shop = request.getfixturevalue("tiny_shop")
    before = (len(shop.events), pd.util.hash_pandas_object(shop.events, index=False).sum())
    yield
    after = (len(shop.events), pd.util.hash_pandas_object(shop.events, index=False).sum())
    assert before == after, "a test modified the shared tiny_shop.events"


@pytest.fixture
def warehouse(tmp_path: Path) -> Warehouse:
    return Warehouse(tmp_path / "warehouse")


@pytest.fixture
def stored_shop(tiny_shop: SyntheticShop, warehouse: Warehouse) -> Warehouse:
    store_shop(warehouse, tiny_shop)
    return warehouse


@pytest.fixture(scope="session")
def serving_dir(tmp_path_factory) -> Path:
    """A data directory with a 300-customer shop and registered champion models (item-kNN
    recommender, purchase propensity): what the service and the triggers serve from."""
    from features.settings import Settings
    from training.propensity_job import train_propensity
    from training.recommender_job import train_recommender

    root = tmp_path_factory.mktemp("serving")
    shop = generate_shop(ShopConfig(n_customers=300, n_products=120, days=75, seed=21))
    store_shop(Warehouse(root / "warehouse"), shop)
    settings = Settings(data_dir=root)
    assert train_recommender(settings, "itemknn").decision.promoted
    propensity = train_propensity(settings, "purchase", {"n_estimators": 100},
                                  horizon_days=14, n_snapshots=2)
    if not propensity.decision.promoted:  # on 300 customers the baselines may win
        promote_by_hand(settings, settings.propensity_name, propensity.version)
    return root


def copy_of_served(source: Path, target: Path) -> Path:
    """A copy of a served data directory (warehouse, registry, serving cache) with an online
    store of its own, empty: the source's holds whatever the tests that served from it sent."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("online.db*"))
    return target


def with_welcome_journey(data_dir: Path) -> Path:
    """``data_dir`` with one journey, an email on every add-to-cart, and a policy that lets
    every message through: a step each cart makes due at once, to count."""
    import yaml

    (data_dir / "journeys.yaml").write_text(yaml.safe_dump({"journeys": [{
        "name": "welcome", "entry": {"when": "event", "event": "add_to_cart"}, "goal": None,
        "reentry": {"after_days": None},
        "steps": [{"name": "hello", "message": {"channel": "email", "send": "products"}}]}]}))
    (data_dir / "policy.yaml").write_text("{}\n")
    return data_dir


def is_mapped(array) -> bool:
    """Is the array a view of a memory-mapped file (shared through the page cache)?"""
    import mmap

    while not isinstance(array, mmap.mmap) and getattr(array, "base", None) is not None:
        array = array.base
    return isinstance(array, mmap.mmap)


def promote_by_hand(settings, name: str, version: str) -> None:
    """Make a version champion whatever the gate said, as a person overruling it would: for
    tests about what is done with a champion, on shops too small for the model to win."""
    from mlflow import MlflowClient

    from training import registry
    from training.tracking import configure

    configure(settings)
    registry.promote(MlflowClient(), name, version, reason="tests: a champion is needed")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip (on a user's machine) or fail (under CI) when a local service is not running."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if os.environ.get("NEXTBEST_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message}, and NEXTBEST_REQUIRE_SERVICES=1 says it must be", pytrace=False)
    pytest.skip(f"{message}; start it to run this test")


def require_program(name: str) -> None:
    """Skip (on a user's machine) or fail (under CI) when a program a test starts is missing."""
    if shutil.which(name) is not None:
        return
    message = f"{name} is not installed"
    if os.environ.get("NEXTBEST_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message}, and NEXTBEST_REQUIRE_SERVICES=1 says it must be", pytrace=False)
    pytest.skip(f"{message}; install it to run this test")


@contextlib.contextmanager
def tracking_server_on_postgresql(directory: Path):
    """A real `mlflow server` on a fresh database of the local PostgreSQL, artifacts under
    ``directory``; yields its URL, and stops it and drops the database afterwards."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    import psycopg

    database = f"nextbest_test_{uuid.uuid4().hex[:8]}"
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    with psycopg.connect(admin, autocommit=True) as db:
        db.execute(f"create database {database}")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server",
         "--backend-store-uri", f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}",
         "--artifacts-destination", str(directory / "server-artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("mlflow server on PostgreSQL did not start", pytrace=False)
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        with psycopg.connect(admin, autocommit=True) as db:
            db.execute(f"drop database if exists {database} with (force)")

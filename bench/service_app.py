"""The service benchmark's BentoML service: the real ranking pipeline on a synthetic state,
next to a no-op endpoint with the same input spec and service configuration.

Sized by ``NB_ITEMS`` and ``NB_CUSTOMERS`` (default 100,000 and 1,000,000); 64 random ALS
factors, five interactions per customer, 1,000 articles, 20 offers with eligibility rules, 200
new products, the neighbour table the service precomputes, each customer's top 200 items as the
training job keeps them, and a read of the customer's live state from the embedded online store
per request, as the service does; the first ``NB_FRESH_CUSTOMERS`` customers have views there
since the snapshot. The two tables are built once (about 4 minutes at the default size) and
kept in ``NB_CACHE`` (default ``~/.cache/nextbest-bench``), from where every worker reads them,
as the service reads a registered model's. Both endpoints answer through the service's output
path (orjson bytes), take the request as the whole body and sit behind the service's
middleware (``add_http_layers``: CORS, JSON errors, tokens, request limits, readable 400s, the
docs and readiness pages); their workers' heap is on huge pages, as the service's
(``serving/workarounds/huge_pages.py``).
Access logging is off (one log line per request would be measured too). Used only
by ``bench/bench_service.py``. Each worker applies the service's workarounds of BentoML first
(``apply_framework_workarounds``: the request timeout, accepting connections one per turn, the
client-error log lines), as the service's workers do.
"""

from __future__ import annotations

import gc
import os
import tempfile
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import bentoml
import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.id_index import IdIndex
from features.ingest import parse_events
from features.online.embedded import EmbeddedStore
from features.settings import Settings
from serving.customers import Behaviours, Labels, Lists
from serving.engagement.policy import DEFAULT_POLICY, load_policy
from serving.exposure_log import ExposureLog, answer_exposure, placement
from serving.health import HEALTH
from serving.models import LoadedModels
from serving.pipeline import recommend
from serving.schemas import RecommendRequest
from serving.service import (
    add_http_layers,
    apply_framework_workarounds,
    json_response,
    share_blas_threads,
)
from serving.shop import Item, ShopView
from serving.state import ContentIndex, ServingState, neighbour_table, smoke_check
from serving.workarounds.huge_pages import worker_envs
from training.artifacts import mapped
from training.interactions import Interactions
from training.recommenders import make_recommender
from training.tracking import TOP_ITEMS, Bundle

CONSTANT = {"products": [], "content": [], "offers": []}


def synthetic_state(n_items: int, n_customers: int, factors: int = 64, seed: int = 0
                    ) -> ServingState:
    rng = np.random.default_rng(seed)
    item_ids = np.array([f"p{i:06d}" for i in range(n_items)], dtype=object)
    user_ids = np.array([f"c{i:07d}" for i in range(n_customers)], dtype=object)
    cache = Path(os.environ.get("NB_CACHE", Path.home() / ".cache" / "nextbest-bench"))
    cache /= f"{n_items}x{n_customers}x{factors}-seed{seed}"
    model = make_recommender("als", factors=factors)
    model.n_items_ = n_items
    # drawn every time, so that the draws after them (the histories, the catalog) are the ones
    # the cached tables were built with; mapped from the file, as the service maps its factors
    drawn = (rng.normal(0, 0.1, (n_customers, factors)).astype(np.float32),
             rng.normal(0, 0.1, (n_items, factors)).astype(np.float32))
    user_factors, item_factors = cached_arrays(cache / "factors", lambda: drawn)
    model._restore({"user_factors": user_factors, "item_factors": item_factors})
    per_user = 5
    columns = rng.integers(0, n_items, n_customers * per_user)
    rows = np.repeat(np.arange(n_customers), per_user)
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, columns)),
                           shape=(n_customers, n_items))
    interactions = Interactions(matrix, user_ids, item_ids)
    popularity = np.asarray(matrix.sum(axis=0)).ravel()
    categories = [f"dept{d}/cat{c}" for d in range(6) for c in range(4)]
    category = rng.integers(0, len(categories), n_items)
    names = ["casual", "loyal", "premium", "bargain_hunter"]
    price = np.round(rng.lognormal(3.5, 0.7, n_items), 2)
    stocked = rng.random(n_items) > 0.05
    items = {item_ids[i]: Item(item_ids[i], "product", f"product {i} {categories[category[i]]}",
                               categories[category[i]], categories[category[i]].split("/")[0],
                               float(price[i]), bool(stocked[i]), False, None)
             for i in range(n_items)}
    as_of = pd.Timestamp.now(tz="UTC")
    for i in rng.choice(n_items, 200, replace=False):  # new this month: the "new in" source
        items[item_ids[i]].created_at = as_of - pd.Timedelta(days=int(rng.integers(0, 30)))
    content = [f"a{k:05d}" for k in range(1000)]
    for k, article in enumerate(content):
        path = categories[k % len(categories)]
        items[article] = Item(article, "content", f"guide {k} to {path}", path,
                              path.split("/")[0], None, True, True, None)
    for k in range(20):
        offer = f"o{k:03d}"
        items[offer] = Item(offer, "offer", f"{5 * (k % 4 + 1)} off", "offers", "offers", None,
                            True, False, None, offer_value=float(5 * (k % 4 + 1)),
                            segments=frozenset() if k % 2 else frozenset({names[k % 4]}),
                            channels=frozenset() if k % 3 else frozenset({"web", "app"}),
                            min_basket=float(20 * (k % 3)), redemption_limit=1 + k % 2)
    # each customer's segment, two purchases and three views, as the service's columns hold them
    index = IdIndex.distinct(user_ids)
    customers = pd.Series(user_ids)
    segments = Labels(index, customers,
                      pd.Series(np.array(names, dtype=object)[np.arange(n_customers) % 4]))
    rows, mine = index.positions(customers), columns.reshape(n_customers, per_user)
    behaviour = Behaviours(index, item_ids, Lists(np.repeat(rows, 2), mine[:, :2].ravel(), len(index)),
                           Lists(np.repeat(rows, 3), mine[:, 2:].ravel(), len(index)),
                           Lists(np.empty(0, np.int64), np.empty(0, np.int32), len(index),
                                 np.empty(0, np.int32)))
    top = np.argsort(-popularity)[:300]
    new = sorted((i for i in items.values() if i.created_at is not None),
                 key=lambda i: i.created_at, reverse=True)
    shop = ShopView(items, segments, behaviour,
                    {("*", "*"): [(item_ids[i], float(popularity[i])) for i in top]},
                    [(a, float(1000 - k)) for k, a in enumerate(content[:300])],
                    {f"o{k:03d}": 0.05 + 0.01 * k for k in range(20)},
                    [i.item_id for i in new], as_of)
    top_items = cached_arrays(cache / "top", lambda: model.recommend_all(matrix, N=TOP_ITEMS))
    neighbours = cached_arrays(cache / "neighbours", lambda: neighbour_table(model, Settings()))
    models = LoadedModels(Bundle(model, interactions, popularity, top_items),
                          {"recommender": "bench"})
    return ServingState(models, shop, ContentIndex(shop), neighbours=neighbours)


def cached_arrays(prefix: Path, build) -> tuple[np.ndarray, np.ndarray]:
    """A pair of arrays built once and read from disk from then on (the bench state is the same
    for a given size and seed)."""
    first, second = prefix.with_name(prefix.name + "-0.npy"), prefix.with_name(prefix.name + "-1.npy")
    if not second.exists():
        prefix.parent.mkdir(parents=True, exist_ok=True)
        for path, array in zip((first, second), build(), strict=True):
            partial = path.with_name(f".{path.name}.{os.getpid()}")
            with partial.open("wb") as file:  # np.save would add ".npy" to a bare path
                np.save(file, array)
            os.replace(partial, path)
    return tuple(mapped(path) for path in (first, second))  # mapped, as the service maps them


def fresh_events(n_items: int, customers: int) -> list[dict]:
    """Two product views since the snapshot for customers c0000000..: their "for you"
    candidates are scored over the whole catalog from a re-derived vector, as for any customer
    active now."""
    now = pd.Timestamp.now(tz="UTC").isoformat()
    raw = [{"event_id": f"fresh-{k}-{j}", "customer_id": f"c{k:07d}", "event_type": "view",
            "item_id": f"p{(k * 7919 + j * 104729) % n_items:06d}", "timestamp": now,
            "channel": "web"} for k in range(customers) for j in range(2)]
    parsed = parse_events(raw)
    assert not parsed.problems, parsed.problems[:3]
    return parsed.events


@bentoml.service(name="nextbest-bench", logging={"access": {"enabled": False}},
                 workers=int(os.environ.get("NB_WORKERS", 1)),
                 envs=worker_envs(Settings().huge_pages))  # as the service's workers
class BenchService:
    def __init__(self) -> None:
        apply_framework_workarounds()  # as every worker of the service does first
        share_blas_threads(int(os.environ.get("NB_WORKERS", 1)))
        self.state = synthetic_state(int(os.environ.get("NB_ITEMS", 100_000)),
                                     int(os.environ.get("NB_CUSTOMERS", 1_000_000)))
        self.online = EmbeddedStore(Path(tempfile.mkdtemp()) / "online.db")
        self.online.ingest(fresh_events(int(os.environ.get("NB_ITEMS", 100_000)),
                                        int(os.environ.get("NB_FRESH_CUSTOMERS", 0))))
        self.policy = load_policy(DEFAULT_POLICY)
        self.exposures = ExposureLog(self.online).start()  # the service's defaults
        smoke_check(self.state)  # as the service does before serving a state
        gc.freeze()  # as the service does after loading
        HEALTH.ready, HEALTH.detail = True, "the benchmark's synthetic state"  # /readyz
        if os.environ.get("NB_READY_DIR"):  # the benchmark waits for every worker, not the first
            (Path(os.environ["NB_READY_DIR"]) / str(os.getpid())).touch()

    @bentoml.api
    async def recommend(self, request: RecommendRequest, /) -> dict:
        """As the service does it: on the event loop, read the customer's live state from the
        embedded store, rank, answer JSON."""
        live = self.online.customer(request.customer_id)
        return json_response(recommend(self.state, request, datetime.now(UTC), 0.5, live,
                                       self.policy))

    @bentoml.api
    async def recommend_logged(self, request: RecommendRequest, /) -> dict:
        """``recommend`` plus the exposure log, exactly as the service records each answer: the
        answer is buffered and the writer thread builds and writes the exposure."""
        live = self.online.customer(request.customer_id)
        now = datetime.now(UTC)
        answer = recommend(self.state, request, now, 0.5, live, self.policy)
        answer["degraded"] = False
        self.exposures.record(partial(answer_exposure, answer, request.channel.value,
                                      placement(request), now.timestamp()))
        return json_response(answer)

    @bentoml.api
    async def noop(self, request: RecommendRequest, /) -> dict:
        """The same kind of endpoint (on the event loop), input handling and output path, around
        a constant."""
        return json_response(CONSTANT)

    @bentoml.api
    def noop_sync(self, request: RecommendRequest, /) -> dict:
        """The no-op as a sync endpoint, run in BentoML's thread pool: what the hand-off to a
        thread and back costs, measured in the same run."""
        return json_response(CONSTANT)


add_http_layers(BenchService)  # the service's middleware, every layer of it

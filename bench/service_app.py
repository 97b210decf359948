"""The service benchmark's BentoML service: the real ranking pipeline on a synthetic state,
next to a no-op endpoint with the same input spec and service configuration.

Sized by ``NB_ITEMS`` and ``NB_CUSTOMERS`` (default 100,000 and 1,000,000); 64 random ALS
factors, five interactions per customer, the neighbour table the service precomputes, and a
read of the customer's live state from the embedded online store per request, as the service
does. Access logging is off (one log line per request would be measured too). Used only by
``bench/bench_service.py``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import bentoml
import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.online.embedded import EmbeddedStore
from features.policy import DEFAULT_POLICY, load_policy
from features.settings import Settings
from serving.models import LoadedModels
from serving.pipeline import ContentIndex, RecommendRequest, ServingState, recommend
from serving.service import neighbour_table
from serving.shop import Behaviour, Item, ShopView
from training.interactions import Interactions
from training.recommenders import make_recommender
from training.tracking import Bundle

CONSTANT = {"products": [], "content": [], "offers": []}


def synthetic_state(n_items: int, n_customers: int, factors: int = 64, seed: int = 0
                    ) -> ServingState:
    rng = np.random.default_rng(seed)
    item_ids = np.array([f"p{i:06d}" for i in range(n_items)], dtype=object)
    user_ids = np.array([f"c{i:07d}" for i in range(n_customers)], dtype=object)
    model = make_recommender("als", factors=factors)
    model.n_items_ = n_items
    model._restore({"user_factors": rng.normal(0, 0.1, (n_customers, factors)).astype(np.float32),
                    "item_factors": rng.normal(0, 0.1, (n_items, factors)).astype(np.float32)})
    per_user = 5
    columns = rng.integers(0, n_items, n_customers * per_user)
    rows = np.repeat(np.arange(n_customers), per_user)
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, columns)),
                           shape=(n_customers, n_items))
    interactions = Interactions(matrix, user_ids, item_ids)
    popularity = np.asarray(matrix.sum(axis=0)).ravel()
    categories = [f"dept{d}/cat{c}" for d in range(6) for c in range(4)]
    category = rng.integers(0, len(categories), n_items)
    price = np.round(rng.lognormal(3.5, 0.7, n_items), 2)
    stocked = rng.random(n_items) > 0.05
    items = {item_ids[i]: Item(item_ids[i], "product", f"product {i} {categories[category[i]]}",
                               categories[category[i]], categories[category[i]].split("/")[0],
                               float(price[i]), bool(stocked[i]), False, None)
             for i in range(n_items)}
    segments, behaviour = {}, {}
    names = ["casual", "loyal", "premium", "bargain_hunter"]
    for u in range(n_customers):
        mine = columns[u * per_user:(u + 1) * per_user]
        segments[user_ids[u]] = names[u % 4]
        behaviour[user_ids[u]] = Behaviour(purchased={item_ids[c] for c in mine[:2]},
                                           recent_views=[item_ids[c] for c in mine[2:]])
    top = np.argsort(-popularity)[:300]
    shop = ShopView(items, segments, behaviour, {("*", "*"): [(item_ids[i], float(popularity[i]))
                                                              for i in top]},
                    [], {}, [], pd.Timestamp.now(tz="UTC"))
    models = LoadedModels(Bundle(model, interactions, popularity), {"recommender": "bench"})
    return ServingState(models, shop, ContentIndex(shop),
                        neighbours=neighbour_table(model, Settings()))


@bentoml.service(name="nextbest-bench", logging={"access": {"enabled": False}},
                 workers=int(os.environ.get("NB_WORKERS", 1)))
class BenchService:
    def __init__(self) -> None:
        self.state = synthetic_state(int(os.environ.get("NB_ITEMS", 100_000)),
                                     int(os.environ.get("NB_CUSTOMERS", 1_000_000)))
        self.online = EmbeddedStore(Path(tempfile.mkdtemp()) / "online.db")
        self.policy = load_policy(DEFAULT_POLICY)

    @bentoml.api(input_spec=RecommendRequest)
    def recommend(self, **request) -> dict:
        """As the service does it: parse, read the customer's live state, rank."""
        parsed = RecommendRequest(**request)
        live = self.online.customer(parsed.customer_id)
        return recommend(self.state, parsed, self.state.shop.as_of, 0.5, live, self.policy)

    @bentoml.api(input_spec=RecommendRequest)
    def noop(self, **request) -> dict:
        return CONSTANT

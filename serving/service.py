"""The nextbest BentoML service: ranked products, content and offers per customer.

Models are loaded once per worker in ``__init__`` by MLflow alias (default ``champion``), with
the shop view they are served with; both are held in one immutable ``ServingState`` that is
replaced whole. A background thread polls the alias (``NEXTBEST_RELOAD_INTERVAL_SECONDS``) and
``admin_reload`` forces a check; new models are loaded aside, smoke-checked, and only then
swapped in, so a request in flight always finishes on the state it started with.

Run it with ``bentoml serve serving.service:NextBest`` (port 3000).
"""

from __future__ import annotations

import hmac
import logging
import threading
from http import HTTPStatus
from typing import Any

import bentoml
import pandas as pd
from bentoml.exceptions import BentoMLException, InvalidArgument, ServiceUnavailable
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from features.settings import Settings, get_settings
from features.warehouse import Warehouse
from serving.models import LoadedModels, RegistryUnavailable, load_models, resolve_versions
from serving.pipeline import (
    ContentIndex,
    RecommendRequest,
    ServingState,
    recommend,
    similar_products,
)
from serving.scores import propensity_answer
from serving.shop import load_shop
from training.propensity.scoring import ScoredCustomers

log = logging.getLogger("nextbest.serving")


class Forbidden(BentoMLException):
    error_code = HTTPStatus.FORBIDDEN


class SimilarItemsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: str = Field(min_length=1, max_length=128)
    n: int = Field(10, ge=1, le=100)


class PropensityRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_ids: list[str] = Field(min_length=1, max_length=1000,
                                    description="Customers to score (1 to 1000).")


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=512)


def build_state(settings: Settings, models: LoadedModels | None = None) -> ServingState:
    """Load models (unless given) and the shop view, and check they can answer."""
    models = models or load_models(settings, settings.serving_alias)
    warehouse = Warehouse(settings.data_dir / "warehouse")
    events, items = warehouse.events(), warehouse.items()  # read once for everything below
    shop = load_shop(warehouse, events, items)
    scores = None
    if models.propensity is not None:
        scores = ScoredCustomers.score(models.propensity,
                                       models.versions[settings.propensity_name], events, items)
    state = ServingState(models, shop, ContentIndex(shop), scores)
    smoke_check(state)
    return state


def smoke_check(state: ServingState) -> None:
    """A model that cannot answer a known and an unknown customer is never swapped in."""
    known = next(iter(state.models.recommender.interactions.user_ids), "smoke-unknown")
    for customer in (str(known), "smoke-unknown"):
        answer = recommend(state, RecommendRequest(customer_id=customer), state.shop.as_of)
        if not answer["products"]:
            raise RuntimeError(f"smoke check failed: no products for customer {customer}")


@bentoml.service(name="nextbest", traffic={"timeout": 30})
class NextBest:
    def __init__(self) -> None:
        self.settings = get_settings()
        self.state: ServingState | None = None
        self.detail = "loading"
        self._swap = threading.Lock()
        self._stop = threading.Event()
        try:
            self.state = build_state(self.settings)
            self.detail = self.state.models.detail or "models loaded from the registry"
        except (RegistryUnavailable, RuntimeError, ValueError) as error:
            self.detail = f"not ready: {error}"
            log.error(self.detail)
        if self.settings.reload_interval_seconds > 0:
            threading.Thread(target=self._poll, name="alias-poller", daemon=True).start()

    # ------------------------------------------------------------------ health
    def __is_ready__(self) -> bool:
        return self.state is not None

    # ------------------------------------------------------------------ endpoints
    @bentoml.api(input_spec=RecommendRequest)
    def recommend(self, **request: Any) -> dict:
        """Ranked products, content and offers for one customer, with a reason for each item,
        a recommendation_id to attribute clicks and purchases, and the model versions used."""
        state = self._ready_state()
        try:
            parsed = RecommendRequest(**request)
            return recommend(state, parsed, pd.Timestamp.now(tz="UTC"),
                             self.settings.max_category_share)
        except (ValidationError, ValueError) as error:
            raise InvalidArgument(str(error)) from None

    @bentoml.api(input_spec=SimilarItemsRequest)
    def similar_items(self, item_id: str, n: int = 10) -> dict:
        """Items similar to ``item_id``: collaborative when it has history, by text otherwise."""
        state = self._ready_state()
        if item_id not in state.shop.items:
            raise InvalidArgument(f"item_id {item_id!r} is not in the catalog")
        similar = similar_products(state, item_id, n) or state.content.similar(item_id, n)
        return {"item_id": item_id, "model_versions": dict(state.models.versions),
                "items": [{"item_id": i, "title": state.shop.items[i].title,
                           "score": round(s, 6)} for i, s in similar[:n]]}

    @bentoml.api(input_spec=PropensityRequest)
    def propensity(self, customer_ids: list[str]) -> dict:
        """Calibrated purchase-propensity scores with decile (over all customers), the three
        reasons that moved each score most, and the model version; unknown ids are listed."""
        state = self._ready_state()
        if state.propensity is None:
            raise ServiceUnavailable(f"no '{self.settings.propensity_name}' model is registered "
                                     f"under alias '{self.settings.serving_alias}'; train one "
                                     "with 'nextbest train propensity'")
        return propensity_answer(state.propensity, customer_ids)

    @bentoml.api(input_spec=ReloadRequest)
    def admin_reload(self, token: str) -> dict:
        """Check the alias now and swap models if it moved (needs NEXTBEST_ADMIN_TOKEN)."""
        expected = self.settings.admin_token
        if not expected or not hmac.compare_digest(token, expected):
            raise Forbidden("admin_reload needs the token set in NEXTBEST_ADMIN_TOKEN")
        return {"swapped": self.reload(), "versions": self._versions(), "detail": self.detail}

    # ------------------------------------------------------------------ swapping
    def reload(self) -> bool:
        """Load the aliased versions if they differ from the served ones; True if swapped."""
        with self._swap:
            try:
                wanted = resolve_versions(self.settings, self.settings.serving_alias)
                if self.state is not None and wanted == self.state.models.versions:
                    return False
                fresh = build_state(self.settings)
            except Exception as error:  # a bad model never replaces a working one
                self.detail = f"reload failed, still serving {self._versions()}: {error}"
                log.error(self.detail)
                return False
            self.state = fresh  # one reference assignment: requests see old or new, never a mix
            self.detail = f"serving {fresh.models.versions} since {fresh.models.loaded_at}"
            log.info(self.detail)
            return True

    def _poll(self) -> None:
        while not self._stop.wait(self.settings.reload_interval_seconds):
            self.reload()

    def _ready_state(self) -> ServingState:
        state = self.state
        if state is None:
            raise ServiceUnavailable(f"no models loaded yet ({self.detail})")
        return state

    def _versions(self) -> dict[str, str]:
        return dict(self.state.models.versions) if self.state is not None else {}

"""The closed-loop shop: the synthetic shop's customers visit, the real ranking answers them,
and they respond as their truth says (``features.shop_response``).

Day by day, visits are drawn by each customer's activity at the shop's busy hours. A visit asks
for the home page's recommendations, and the customer clicks, carts, buys and redeems what they
were shown with the response model's probabilities; some also find a product on their own
(never one shown to them within the purchase window, so that what the simulator calls organic
is what attribution must leave alone). Every hour the journey scheduler runs, and a message a customer
opens is answered the same way; a message may also make its customer withdraw consent on its
channel (``/consent``). The outcome events go back through the real ingestion, with
``recommendation_id`` (or ``decision_id``) on ``tagged_share`` of them, as storefronts only
partly tag clicks.

Two storefronts ask the same questions:

* :class:`InProcessShop` runs the pipeline, the online store, the journeys and the exposure log
  in this process with the simulated clock (days replayed in seconds), then moves everything to
  the warehouse;
* :class:`HttpShop` asks a running service over HTTP (``/recommend``, ``/events``): the service
  records the exposures and its scheduler runs the journeys, on its own clock, so event times are the
  wall clock's too.

Every outcome the simulator draws is kept with the exposure that caused it (``truth``), so
attribution and KPIs can be checked against what really happened. The same seed gives the same
visits and choices.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

import numpy as np
import pandas as pd

from features.contracts import EventType, ItemKind
from features.event_time import TimeWindow
from features.experiments import assign, load_plan, plan_path
from features.ingest import parse_events
from features.online import open_online_store
from features.settings import Settings
from features.shop_response import ResponseModel
from features.synthetic import HOUR_WEIGHT
from features.warehouse import Warehouse
from serving.engagement.journeys import journeys_in_force
from serving.engagement.policy import load_policy, policy_path
from serving.engagement.scheduler import JourneyEngine
from serving.exposure_log import ExposureLog, answer_exposure, consent_exposure, placement
from serving.schemas import RecommendRequest

ORGANIC_SHARE = 0.3
"""Visits in which the customer also looks at a product on their own."""
ORGANIC_BUY = 0.15
PLACEMENT = "home"
KINDS = (("products", ItemKind.PRODUCT.value), ("content", ItemKind.CONTENT.value),
         ("offers", ItemKind.OFFER.value))


@dataclass(frozen=True)
class SimulationConfig:
    days: float = 1.0
    visits_per_day: int = 300
    seed: int = 7
    tagged_share: float = 0.5
    """Share of outcome events that carry the id of what they respond to."""
    ranker: Literal["pipeline", "popularity"] = "pipeline"
    """pipeline: the service's ranking; popularity: the same answer with the products replaced
    by the shop's best sellers (the baseline a recommender must beat)."""
    end: datetime | None = None
    """When the simulated period ends (default: now); it starts ``days`` before."""

    def __post_init__(self) -> None:
        if not 0 < self.days <= 365:
            raise ValueError(f"days must be above 0 and at most 365, got {self.days}")
        if self.visits_per_day < 1:
            raise ValueError(f"visits per day must be at least 1, got {self.visits_per_day}")
        if not 0 <= self.tagged_share <= 1:
            raise ValueError(f"tagged share must be between 0 and 1, got {self.tagged_share}")


@dataclass
class SimulationResult:
    start: datetime
    end: datetime
    exposures: int = 0
    impressions: Counter = field(default_factory=Counter)
    """Items shown or sent, by kind."""
    messages: int = 0
    opt_outs: int = 0
    truth: list[dict] = field(default_factory=list)
    """Every outcome drawn: event_id, event_type, customer_id, item_id, kind, exposure_id
    (None: organic), revenue."""

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.truth, columns=["event_id", "event_type", "customer_id",
                                                 "item_id", "kind", "exposure_id", "revenue"])

    @property
    def attributable_revenue(self) -> float:
        """Revenue of the purchases that a shown or sent item caused."""
        truth = self.frame()
        return float(truth.loc[truth["exposure_id"].notna(), "revenue"].sum())

    def ctr(self, kind: str = ItemKind.PRODUCT.value) -> float:
        truth = self.frame()
        clicks = ((truth["event_type"] == EventType.CLICK.value) & (truth["kind"] == kind)
                  & truth["exposure_id"].notna()).sum()
        return clicks / self.impressions[kind] if self.impressions[kind] else float("nan")


class ServiceRefused(ValueError):
    """The service at --url could not be reached or refused a request: a setup problem the
    command line reports in one line."""


class Storefront(Protocol):
    def recommend(self, body: dict, at: datetime) -> dict: ...
    def send(self, events: list[dict]) -> None: ...
    def tick(self, at: datetime) -> list[dict]: ...
    def withdraw(self, customer: str, channel: str, at: datetime) -> None: ...
    def finish(self) -> None: ...
    def now(self, simulated: datetime) -> datetime: ...


class InProcessShop:
    """The pipeline, online store, journeys and exposure log of ``settings``, on the simulated
    clock."""

    def __init__(self, settings: Settings, ranker: str = "pipeline") -> None:
        # as the service loads and ranks (imported here: the service module brings BentoML)
        from serving.service import ranked_answer
        from serving.state import build_state, variant_states

        self.ranked_answer = ranked_answer

        self.settings = settings
        self.state = build_state(settings)
        self.ranker = ranker
        self.online = open_online_store(settings)
        self.policy = load_policy(policy_path(settings))
        self.plan = load_plan(plan_path(settings))
        self.variants = variant_states(settings, self.state, self.plan.recommender_versions)
        self.log = ExposureLog(self.online, capacity=1_000_000)
        self.journeys = JourneyEngine(journeys_in_force(settings), self.policy, self.online,
                                      lambda: self.state,
                                      settings.max_category_share, self.log.record,
                                      lambda customer, now: assign(self.plan, customer, now))

    def now(self, simulated: datetime) -> datetime:
        return simulated

    def recommend(self, body: dict, at: datetime) -> dict:
        started = time.perf_counter()
        request = RecommendRequest.model_validate(body)
        live = self.online.customer(request.customer_id)
        answer = self.ranked_answer(self.state, self.variants, self.settings, request, at,
                                    live, self.policy, assign(self.plan, request.customer_id, at))
        if self.ranker == "popularity":
            answer["products"] = self._best_sellers(request, live)
        answer["degraded"] = False
        self.log.record(answer_exposure(answer, request.channel.value, placement(request),
                                        at.timestamp(), (time.perf_counter() - started) * 1000))
        return answer

    def _best_sellers(self, request: RecommendRequest, live) -> list[dict]:
        shop = self.state.shop
        bought = set(shop.customer(request.customer_id).purchased) | set(live.purchased)
        best = [i for i, _ in shop.popular.get(("*", "*"), [])
                if i not in bought or shop.items[i].repeatable]
        return [{"item_id": i, "title": shop.items[i].title, "category": shop.items[i].category,
                 "score": 0.0, "reason": "popular", "source": "popular"}
                for i in best[:request.n[ItemKind.PRODUCT]]]

    def send(self, events: list[dict]) -> None:
        parsed = parse_events(events, window=TimeWindow.current(self.settings))
        if parsed.problems:
            raise ValueError(f"simulated events refused: {parsed.problems[0]}")
        self.online.ingest(parsed.events)

    def tick(self, at: datetime) -> list[dict]:
        return [o.decision for o in self.journeys.tick(at) if o.status == "sent"]

    def withdraw(self, customer: str, channel: str, at: datetime) -> None:
        """As ``POST /consent`` does: the online store first, then the log."""
        self.online.record_consent(customer, channel, False, at.timestamp())
        self.log.record(consent_exposure(customer, channel, False, at.timestamp()))

    def finish(self) -> None:
        self.log.write()
        warehouse = Warehouse(self.settings.data_dir / "warehouse")
        self.online.flush_to(warehouse)
        self.online.flush_exposures_to(warehouse)


class HttpShop:
    """A running service, asked over HTTP as a storefront would; its clock, its journeys."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def now(self, simulated: datetime) -> datetime:
        """The wall clock: the service records exposures at its own time, so outcomes must
        follow it, not the simulated day."""
        return datetime.now(UTC)

    def _post(self, path: str, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, json.dumps(body, default=str).encode(),
                                         headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise ServiceRefused(f"{self.url}{path} answered {error.code}: "
                                 f"{error.read().decode()[:300]}") from None
        except urllib.error.URLError as error:
            raise ServiceRefused(f"cannot reach the service at {self.url}: {error.reason}; "
                                 "start it with 'nextbest serve', or give its --url") from None

    def recommend(self, body: dict, at: datetime) -> dict:
        return self._post("/recommend", body)

    def send(self, events: list[dict]) -> None:
        if events:
            self._post("/events", {"events": events, "atomic": True})

    def tick(self, at: datetime) -> list[dict]:
        return []

    def withdraw(self, customer: str, channel: str, at: datetime) -> None:
        self._post("/consent", {"customer_id": customer, "channel": channel, "granted": False})

    def finish(self) -> None:
        pass


class Simulation:
    """One run: visits drawn from ``model``, answered by ``shop``."""

    def __init__(self, shop: Storefront, model: ResponseModel, config: SimulationConfig) -> None:
        self.shop = shop
        self.model = model
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.opt_out_rng = np.random.default_rng([config.seed, 1])
        """Opt-outs draw apart, so that the other choices stay as they were without them."""
        self.end = config.end or datetime.now(UTC)
        self.start = self.end - timedelta(days=config.days)
        self.result = SimulationResult(self.start, self.end)
        self._shown: dict[str, dict[str, datetime]] = defaultdict(dict)
        self._messages: dict[str, list[datetime]] = defaultdict(list)
        self._carts: dict[str, set[str]] = defaultdict(set)
        """Each customer's cart: added, not bought yet."""
        self._events = 0
        self._run_id = f"{config.seed}-{self.start:%Y%m%d%H%M%S}"

    def run(self, progress: Callable[[int, int], None] | None = None) -> SimulationResult:
        random.seed(self._run_id)  # the answers' ids, for runs that repeat exactly
        visits = self._visit_times()
        hour = self.start.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        for done, (at, customer) in enumerate(visits, 1):
            while hour <= at:
                self._answer_messages(hour)
                hour += timedelta(hours=1)
            self._visit(customer, at)
            if progress is not None:
                progress(done, len(visits))
        while hour <= self.end:
            self._answer_messages(hour)
            hour += timedelta(hours=1)
        self.shop.finish()
        return self.result

    # ------------------------------------------------------------------ visits
    def _visit_times(self) -> list[tuple[datetime, str]]:
        """Visits at the shop's busy hours, in time order, each early enough that its session
        ends before the period does."""
        count = max(1, round(self.config.visits_per_day * self.config.days))
        customers = self.model.visitors(count, self.rng)
        span = (self.end - self.start).total_seconds() - 900
        hours = HOUR_WEIGHT / HOUR_WEIGHT.sum()
        offsets = []
        while len(offsets) < count:  # thin uniform times by the hour of day's weight
            candidate = self.rng.random() * max(span, 1)
            moment = self.start + timedelta(seconds=candidate)
            if self.rng.random() < hours[moment.hour] / hours.max():
                offsets.append(candidate)
        times = sorted(self.start + timedelta(seconds=o) for o in offsets)
        return list(zip(times, customers, strict=True))

    def _visit(self, customer: str, at: datetime) -> None:
        channel = self.model.storefront_channel(customer, self.rng)
        moment = self.shop.now(at)
        answer = self.shop.recommend({"customer_id": customer, "channel": channel,
                                      "placement": PLACEMENT}, moment)
        self._count_exposure(answer)
        events: list[dict] = []
        clock = [moment]
        self._respond(customer, channel, answer, "recommendation_id", clock, events)
        self._remember(customer, answer, moment)
        if self.rng.random() < ORGANIC_SHARE:
            self._browse(customer, channel, clock, events)
        self.shop.send(events)

    def _respond(self, customer: str, channel: str, answer: dict, id_field: str,
                 clock: list[datetime], events: list[dict]) -> None:
        """Clicks, carts, purchases and redemptions of what ``answer`` shows."""
        exposure_id = answer.get("recommendation_id") or answer.get("decision_id")
        for key, kind in KINDS:
            items = [entry["item_id"] for entry in answer.get(key, [])]
            if not items:
                continue
            if kind == ItemKind.OFFER.value:
                for item in items:
                    if self.rng.random() < self.model.redeem_probability(customer, item):
                        self._outcome(events, clock, customer, item, kind, channel,
                                      EventType.OFFER_REDEEMED, exposure_id, id_field)
                continue
            match = self.model.match(customer, items)
            cart = self._carts[customer]
            clicked = (self.rng.random(len(items))
                       < self.model.click_probability(customer, items, cart))
            for item, fit in zip(np.array(items)[clicked], match[clicked], strict=True):
                self._outcome(events, clock, customer, item, kind, channel, EventType.CLICK,
                              exposure_id, id_field)
                if kind != ItemKind.PRODUCT.value:
                    continue
                if item in cart:  # back to their own cart: straight to checkout
                    if self.rng.random() < self.model.purchase_probability(channel):
                        self._outcome(events, clock, customer, item, kind, channel,
                                      EventType.PURCHASE, exposure_id, id_field)
                elif self.rng.random() < self.model.cart_probability(fit):
                    self._outcome(events, clock, customer, item, kind, channel,
                                  EventType.ADD_TO_CART, exposure_id, id_field)
                    if self.rng.random() < self.model.purchase_probability(channel):
                        self._outcome(events, clock, customer, item, kind, channel,
                                      EventType.PURCHASE, exposure_id, id_field)

    def _browse(self, customer: str, channel: str, clock: list[datetime],
                events: list[dict]) -> None:
        """A product found without nextbest: viewed, sometimes bought; never one shown to the
        customer within the purchase window."""
        window = timedelta(days=7)
        avoid = {i for i, when in self._shown[customer].items() if clock[0] - when <= window}
        item = self.model.organic_pick(customer, self.rng, avoid)
        if item is None:
            return
        self._outcome(events, clock, customer, item, ItemKind.PRODUCT.value, channel,
                      EventType.VIEW, None, None)
        if self.rng.random() < ORGANIC_BUY:
            self._outcome(events, clock, customer, item, ItemKind.PRODUCT.value, channel,
                          EventType.PURCHASE, None, None)

    def _outcome(self, events: list[dict], clock: list[datetime], customer: str, item: str,
                 kind: str, channel: str, event_type: EventType, exposure_id: str | None,
                 id_field: str | None) -> None:
        step = timedelta(seconds=float(self.rng.uniform(5, 60)))  # drawn either way: same seed,
        clock[0] = self.shop.now(clock[0] + step)                  # same choices
        self._events += 1
        event_id = f"sim-{self._run_id}-{self._events}"
        price = self.model.items["price"].get(item)
        price = None if price is None or pd.isna(price) else float(price)
        event = {"event_id": event_id, "customer_id": customer, "item_id": item,
                 "event_type": event_type.value, "timestamp": clock[0].isoformat(),
                 "channel": channel, "quantity": 1, "price": price}
        if event_type == EventType.PURCHASE:
            event["session_id"] = f"sim-{self._run_id}-{customer}-{clock[0]:%Y%m%d%H}"
        if exposure_id is not None and self.rng.random() < self.config.tagged_share:
            event[id_field] = exposure_id
        events.append(event)
        if event_type == EventType.ADD_TO_CART:
            self._carts[customer].add(item)
        elif event_type == EventType.PURCHASE:
            self._carts[customer].discard(item)
        if event_type != EventType.VIEW:
            revenue = (price or 0.0) if event_type == EventType.PURCHASE else 0.0
            self.result.truth.append({"event_id": event_id, "event_type": event_type.value,
                                      "customer_id": customer, "item_id": item, "kind": kind,
                                      "exposure_id": exposure_id, "revenue": revenue})

    # ------------------------------------------------------------------ messages
    def _answer_messages(self, hour: datetime) -> None:
        for decision in self.shop.tick(self.shop.now(hour)):
            customer, channel = decision["customer_id"], decision["channel"]
            self.result.messages += 1
            self.result.exposures += 1
            self.result.impressions.update(item["kind"] for item in decision["items"])
            recent = [t for t in self._messages[customer] if hour - t <= timedelta(days=7)]
            self._messages[customer] = [*recent, hour]
            for item in decision["items"]:
                self._shown[customer][item["item_id"]] = hour
            if self.opt_out_rng.random() < self.model.opt_out_probability(len(recent)):
                self.shop.withdraw(customer, channel, self.shop.now(hour))
                self.result.opt_outs += 1
            if self.rng.random() >= self.model.open_probability(customer, channel, len(recent)):
                continue
            by_kind = {key: [i for i in decision["items"] if i["kind"] == kind]
                       for key, kind in KINDS}
            events: list[dict] = []
            self._respond(customer, channel, {"decision_id": decision["decision_id"], **by_kind},
                          "decision_id", [hour], events)
            self.shop.send(events)

    # ------------------------------------------------------------------ bookkeeping
    def _count_exposure(self, answer: dict) -> None:
        self.result.exposures += 1
        for key, kind in KINDS:
            self.result.impressions[kind] += len(answer[key])

    def _remember(self, customer: str, answer: dict, at: datetime) -> None:
        for key, _ in KINDS:
            for entry in answer[key]:
                self._shown[customer][entry["item_id"]] = at


def simulate(settings: Settings, config: SimulationConfig, url: str | None = None,
             token: str | None = None, progress: Callable[[int, int], None] | None = None
             ) -> SimulationResult:
    """Run the closed loop on the synthetic shop under ``settings.data_dir``: in this process,
    or against the service at ``url``."""
    warehouse = Warehouse(settings.data_dir / "warehouse")
    model = ResponseModel.load(settings.data_dir, warehouse.items())
    shop: Storefront = (HttpShop(url, token) if url is not None
                        else InProcessShop(settings, config.ranker))
    return Simulation(shop, model, config).run(progress)

"""The nextbest BentoML service: ranked products, content and offers per customer.

Models are loaded once per worker in ``__init__`` by MLflow alias (default ``champion``), with
the shop view they are served with; both are held in one immutable ``ServingState``
(``serving/state.py``, which builds it) that is replaced whole. A background thread polls the
alias (``NEXTBEST_RELOAD_INTERVAL_SECONDS``) and ``admin_reload`` forces a check; new models
are loaded aside, smoke-checked, and only then swapped in, so a request in flight always
finishes on the state it started with.

Customers' latest events arrive on ``events`` and are recorded durably in the online store
(embedded SQLite or Redis) before the call returns; every ``recommend`` reads the customer's
live state from it, so the next answer reflects what they just did; an event also makes its
customer due for the journey scheduler. The scheduler and the flush of ingested events to the
warehouse run once per deployment, in the background worker (``serving.background``, started
beside the API by ``nextbest serve``), never in the API workers. If the online store is
unreachable, ``recommend`` answers from the models and the snapshot alone and says
``degraded``, and ``events`` answers 503 so that the caller retries.

The loaded state (millions of small objects at a million customers) is moved out of the
garbage collector's sight with ``gc.freeze()``: a full collection over it took 0.34 s at 200k
customers, a pause every request would wait out. When a swap drops a state, reference counting
alone frees it: a state holds no reference cycles (tested, after it has answered requests), which
the collector, no longer looking, would have kept until the worker restarted.

Run it with ``bentoml serve serving.service:NextBest`` (port 3000).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from http import HTTPStatus

import anyio.to_thread
import bentoml
import orjson
from bentoml.exceptions import BentoMLException, InvalidArgument, ServiceUnavailable
from starlette.responses import Response
from threadpoolctl import threadpool_limits

from features.config_files import file_stamp
from features.contracts import CONTACT_CHANNELS
from features.experiments import Assignment, ExperimentsError, assign, load_plan, plan_path
from features.ingest import parse_events
from features.online import CustomerState, OnlineStateUnavailable, open_online_store
from features.online.breaker import Breaker
from features.settings import Settings, get_settings
from serving.auth import TokenAuth, bearer, token_matches
from serving.cors import Cors
from serving.engagement.policy import consent_in_force, load_policy, policy_path
from serving.exposure_log import (
    ExposureLog,
    answer_exposure,
    consent_exposure,
    failed_exposure,
    placement,
)
from serving.health import HEALTH, Readiness
from serving.interleaving import interleaved_answer, team_states
from serving.launch import version as nextbest_version
from serving.launch import with_data_dir_resolved
from serving.models import ModelCache, RegistryUnavailable, VersionsRefused, resolve_versions
from serving.openapi import ENDPOINTS, ApiDocs
from serving.pipeline import recommend, similar_products
from serving.request_limits import RequestLimits
from serving.schemas import (
    ConsentAnswer,
    ConsentRequest,
    ConsentStatusAnswer,
    ConsentStatusRequest,
    EventsAnswer,
    EventsBody,
    PropensityAnswer,
    PropensityRequest,
    RecommendAnswer,
    RecommendRequest,
    ReloadAnswer,
    ReloadRequest,
    SimilarItemsAnswer,
    SimilarItemsRequest,
)
from serving.scores import propensity_answer
from serving.service_logs import show_service_logs
from serving.state import (
    ServingState,
    build_state,
    load_state,
    variant_states,
)
from serving.workarounds.accepting import accept_one_connection_per_turn, warn_unless_spread
from serving.workarounds.http_errors import JsonErrors
from serving.workarounds.huge_pages import log_huge_pages, worker_envs
from serving.workarounds.timeouts import cancel_timers_when_answered
from serving.workarounds.validation_errors import ReadableValidationErrors

log = logging.getLogger("nextbest.serving")
STORE_THREADS = 4
"""Threads of a worker for the online store's I/O: writes wait on a disk or a network, and must
hold neither the event loop nor BentoML's thread for the other endpoints."""


class Forbidden(BentoMLException):
    error_code = HTTPStatus.FORBIDDEN


def ranked_answer(state: ServingState, variants: dict[str, ServingState], settings: Settings,
                  request: RecommendRequest, now: datetime, live: CustomerState | None,
                  policy, placed: Assignment) -> dict:
    """The answer for the customer's place in the experiments: both teams' products when they
    take part in an interleaving experiment, the variant's recommender version when it names
    one, else ``state``'s (the service and the simulator both rank through this)."""
    if placed.interleaved:
        return interleaved_answer(team_states(placed.interleaved[0], state, variants), request,
                                  now, settings.max_category_share, live, policy, placed,
                                  settings.recommender_name)
    if placed.recommender is not None:
        state = variants.get(placed.recommender, state)
    return recommend(state, request, now, settings.max_category_share, live, policy, placed)


def json_response(body: dict, status: int = HTTPStatus.OK,
                  headers: dict[str, str] | None = None) -> Response:
    """A JSON answer written with orjson, handed to the server as is: BentoML's own path for a
    returned dict validated it and derived its schema on every call (~0.4 ms a request)."""
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status_code=int(status),
                    headers=headers, media_type="application/json")


def json_answer(work: Callable[[], dict]) -> Response:
    """``work``'s answer, or its error as ``{"error": ...}`` with the error's status. Endpoints
    answer through this rather than letting BentoML 1.4 write errors: it wraps a 4xx message in
    a list and replaces a 5xx one with "an unexpected error has occurred"."""
    try:
        return json_response(work())
    except BentoMLException as error:
        return json_response({"error": str(error)}, error.error_code)


def share_blas_threads(workers: int | str) -> int:
    """Give this worker its share of the cores for BLAS, and return it. OpenBLAS otherwise
    starts a thread per core in every worker, and two workers' threads spinning against each
    other on two cores cost more than they add (measured: 110 req/s on two workers, 199 with
    one BLAS thread each, 151 on one worker)."""
    cores = os.cpu_count() or 1
    count = cores if workers == "cpu_count" else int(workers)
    share = max(1, cores // max(1, count))
    threadpool_limits(share, user_api="blas")
    return share


def apply_framework_workarounds() -> None:
    """BentoML 1.4's behaviours the service changes, in the worker, before it serves: each
    module says why, and each change is idempotent."""
    cancel_timers_when_answered()  # its timeout kept each request alive 30 s (timeouts.py)
    accept_one_connection_per_turn()  # else one worker takes every connection (accepting.py)
    show_service_logs()  # client errors as one-line warnings; swaps visible (service_logs.py)


@bentoml.service(name="nextbest", traffic={"timeout": 30}, workers=get_settings().workers,
                 envs=worker_envs(get_settings().huge_pages))
class NextBest:
    def __init__(self) -> None:
        apply_framework_workarounds()
        self.settings = with_data_dir_resolved(get_settings())
        share_blas_threads(self.settings.workers)
        warn_unless_spread(self.settings.workers)
        self.state: ServingState | None = None
        self.detail = "loading"
        self._swap = threading.Lock()
        self._stop = threading.Event()
        self.online = open_online_store(self.settings)
        self.policy = load_policy(policy_path(self.settings))
        self.plan = load_plan(plan_path(self.settings))
        self._plan_stamp = file_stamp(plan_path(self.settings))
        self.variants: dict[str, ServingState] = {}
        """Recommender version -> the state that answers the variants naming it."""
        self._variants_for: tuple[ServingState | None, set[str]] = (None, set())
        """The served state and versions ``variants`` was built for."""
        self.exposures = (ExposureLog(self.online, self.settings.exposure_buffer,
                                      self.settings.exposure_flush_ms, HEALTH.exposures).start()
                          if self.settings.exposure_logging else None)
        self.breaker = Breaker()
        self._store_threads = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="store")
        try:
            self.state = build_state(self.settings)
            self._load_variants()
            gc.freeze()
            self.detail = self.state.models.detail or "models loaded from the registry"
            log_huge_pages(self.settings.huge_pages)
        except (RegistryUnavailable, VersionsRefused, RuntimeError, ValueError) as error:
            self.detail = f"not ready: {error}"
            log.error(self.detail)
        self._report_health()
        if self.settings.reload_interval_seconds > 0:
            threading.Thread(target=self._poll, name="alias-poller", daemon=True).start()
        if self.settings.stream_url:
            threading.Thread(target=self._stream_lag_loop, name="stream-lag", daemon=True).start()

    # ------------------------------------------------------------------ health
    def __is_ready__(self) -> bool:
        return self.state is not None

    # ------------------------------------------------------------------ endpoints
    @bentoml.api
    async def recommend(self, request: RecommendRequest, /) -> RecommendAnswer:
        """Ranked products, content and offers for one customer, with a reason for each item,
        a recommendation_id to attribute clicks and purchases, and the model versions used.

        The request is the whole body, validated once by BentoML. In Python, call ``answer``
        for the dict.

        It runs on the worker's event loop rather than in BentoML's thread pool: handing a
        request to a pool thread and back cost about as much as ranking it (0.23-0.44 ms a request
        on two cores, measured with a no-op). Reading the live state from Redis is a network round
        trip (up to its timeout while Redis is down), so that read alone goes to a thread and
        the loop never waits on the network; the embedded store is a local file read.
        """
        if self.online.reads_over_network:
            live_state = await anyio.to_thread.run_sync(self._live_state, request.customer_id)
        else:
            live_state = self._live_state(request.customer_id)
        return json_answer(lambda: self.answer(request, live_state))

    def answer(self, request: RecommendRequest,
               live_state: tuple[CustomerState | None, str | None] | None = None) -> dict:
        """What ``recommend`` answers, as a dict: rank from the customer's live state, as
        ``_live_state`` gives it (read here unless the caller already has)."""
        started = time.perf_counter()
        state = self._ready_state()
        live, degraded = live_state or self._live_state(request.customer_id)
        # datetime's clock, not pandas': pd.Timestamp.now cost 0.03-0.06 ms of a served
        # request (its code is cold by the time the next request comes), 2-4% of p50
        now = datetime.now(UTC)
        placed = assign(self.plan, request.customer_id, now)
        try:
            answer = ranked_answer(state, self.variants, self.settings, request, now, live,
                                   self.policy, placed)
        except ValueError as error:
            raise InvalidArgument(str(error)) from None
        except Exception as error:  # a 500: counted per variant, then raised as it was
            if self.exposures is not None:
                self.exposures.record(failed_exposure(
                    request.customer_id, request.channel.value, placement(request),
                    now.timestamp(), placed.labels(), error))
            raise
        answer["degraded"] = degraded is not None
        if degraded is not None:
            answer["degraded_reason"] = degraded
        if self.exposures is not None:  # built by the writer thread, off the answer's path
            self.exposures.record(partial(answer_exposure, answer, request.channel.value,
                                          placement(request), now.timestamp(),
                                          (time.perf_counter() - started) * 1000))
        return answer

    @bentoml.api
    async def events(self, body: EventsBody, /) -> EventsAnswer:
        """Record customers' events: one event as the body, or a batch as ``{"events": [...]}``.

        Each event is checked against the event contract; a bad one is listed with its index,
        field and value (HTTP 400 when nothing was accepted, 207 when some were). Accepted events
        are on disk (or in Redis) before the answer; a re-sent ``event_id`` counts as a
        duplicate, not again. 503 means the online store is unreachable and nothing was written.
        """
        single = body.events is None
        status, answer = await self._on_store_thread(
            self.ingest, [body.model_extra or {}] if single else body.events, single,
            body.atomic)
        retry = {"Retry-After": "5"} if status == HTTPStatus.SERVICE_UNAVAILABLE else None
        return json_response(answer, status, retry)

    async def _on_store_thread(self, work: Callable, *args):
        """``work(*args)`` on one of the service's own threads for store I/O (a disk write, or a
        network round trip that may wait out a timeout), so that it never holds the event loop
        nor the one thread BentoML gives the other endpoints."""
        return await asyncio.get_running_loop().run_in_executor(self._store_threads, work, *args)

    def ingest(self, raw: list, single: bool = False, atomic: bool = False) -> tuple[int, dict]:
        """What ``events`` does, as (HTTP status, answer): validate, then record (which makes
        the customers due for the journey scheduler)."""
        limit = self.settings.max_batch_events
        if len(raw) > limit:
            return HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {
                "error": f"events: a batch holds at most {limit} events, got {len(raw)}; split it "
                         "(NEXTBEST_MAX_BATCH_EVENTS)"}
        parsed = parse_events(raw, self.settings.max_reported_errors)
        problems = [p.as_dict() for p in parsed.problems]
        if parsed.problems and (single or atomic or not parsed.events):
            return HTTPStatus.BAD_REQUEST, {
                "accepted": 0, "duplicates": 0, "rejected": parsed.rejected, "problems": problems,
                "error": "nothing was recorded: " + "; ".join(p["message"] for p in problems[:5])}
        try:
            result = self.breaker.call(lambda: self.online.ingest(parsed.events))
        except OnlineStateUnavailable as error:
            log.error("ingestion refused: %s", error)
            return HTTPStatus.SERVICE_UNAVAILABLE, {
                "error": f"{error}; nothing was recorded, retry later"}
        return (HTTPStatus.MULTI_STATUS if parsed.problems else HTTPStatus.OK), {
            "accepted": result.accepted, "duplicates": result.duplicates + parsed.repeated,
            "rejected": parsed.rejected, "problems": problems}

    @bentoml.api
    async def consent(self, request: ConsentRequest, /) -> ConsentAnswer:
        """Record a consent given or withdrawn on a contact channel (email, sms, push). It
        applies at once to the journeys and to ``recommend``'s ``contact`` verdict, ahead of the
        customers table (which applies to customers who never sent one). 503 means the online
        store is unreachable and nothing was recorded."""
        return await self._on_store_thread(json_answer, lambda: self._consent(request))

    def _consent(self, request: ConsentRequest) -> dict:
        at = (request.timestamp or datetime.now(UTC)).timestamp()
        try:
            state = self.breaker.call(lambda: self.online.record_consent(
                request.customer_id, request.channel, request.granted, at))
        except OnlineStateUnavailable as error:
            raise ServiceUnavailable(f"{error}; nothing was recorded, retry later") from None
        granted, when = state.consent[request.channel]
        recorded = (granted, when) == (request.granted, at)
        if recorded and self.exposures is not None:
            self.exposures.record(consent_exposure(request.customer_id, request.channel,
                                                   request.granted, at))
        return {"customer_id": request.customer_id, "channel": request.channel,
                "granted": granted, "as_of": datetime.fromtimestamp(when, UTC).isoformat(),
                "recorded": recorded}

    @bentoml.api
    async def consent_status(self, request: ConsentStatusRequest, /) -> ConsentStatusAnswer:
        """A customer's consent on each contact channel as the service applies it now: the last
        one sent to ``consent``, else the customers table's. 503 when the online store is
        unreachable."""
        return await self._on_store_thread(
            json_answer, lambda: self._consent_status(request.customer_id))

    def _consent_status(self, customer_id: str) -> dict:
        try:
            live = self.breaker.call(lambda: self.online.customer(customer_id))
        except OnlineStateUnavailable as error:
            raise ServiceUnavailable(f"{error}; retry later") from None
        shop = self.state.shop if self.state is not None else None
        table = shop.consents.get(customer_id, frozenset()) if shop is not None else frozenset()
        channels = {}
        for channel in CONTACT_CHANNELS:
            granted, when = consent_in_force(live, table, channel.value)
            channels[channel.value] = {
                "granted": granted, "source": "customers table" if when is None else "consent",
                "as_of": None if when is None else datetime.fromtimestamp(when, UTC).isoformat()}
        known = (shop is not None and customer_id in shop.segments) or bool(live.consent)
        return {"customer_id": customer_id, "known_customer": known, "channels": channels}

    @bentoml.api(input_spec=SimilarItemsRequest)
    def similar_items(self, item_id: str, n: int = 10) -> SimilarItemsAnswer:
        """Items similar to ``item_id``: collaborative when it has history, by text otherwise."""
        return json_answer(lambda: self._similar_items(item_id, n))

    def _similar_items(self, item_id: str, n: int) -> dict:
        state = self._ready_state()
        if item_id not in state.shop.items:
            raise InvalidArgument(f"item_id {item_id!r} is not in the catalog")
        similar = similar_products(state, item_id, n) or state.content.similar(item_id, n)
        return {"item_id": item_id, "model_versions": dict(state.models.versions),
                "items": [{"item_id": i, "title": state.shop.items[i].title,
                           "score": round(s, 6)} for i, s in similar[:n]]}

    @bentoml.api(input_spec=PropensityRequest)
    def propensity(self, customer_ids: list[str]) -> PropensityAnswer:
        """Calibrated purchase-propensity scores with decile (over all customers), the three
        reasons that moved each score most, and the model version; unknown ids are listed."""
        return json_answer(lambda: self._propensity(customer_ids))

    def _propensity(self, customer_ids: list[str]) -> dict:
        state = self._ready_state()
        if state.propensity is None:
            name = self.settings.propensity_name
            raise ServiceUnavailable(
                f"no '{name}' version is '{self.settings.serving_alias}': train one that beats "
                "the baselines with 'nextbest train propensity' (a version the gate refused "
                f"stays challenger; 'nextbest models list --name {name}' says why), or promote "
                f"one by hand with 'nextbest models promote VERSION --name {name}'")
        return propensity_answer(state.propensity, customer_ids)

    @bentoml.api(input_spec=ReloadRequest)
    def admin_reload(self, token: str | None = None, ctx: bentoml.Context = None
                     ) -> ReloadAnswer:
        """Check the alias now and swap models if it moved. Needs the token set in
        NEXTBEST_ADMIN_TOKEN, as ``{"token": ...}`` or ``Authorization: Bearer ...``."""
        sent = token or (bearer(ctx.request.scope) if ctx is not None else None)
        response = json_answer(lambda: self._admin_reload(sent or None))
        if ctx is not None:  # BentoML answers with the context's status when an API takes one
            ctx.response.status_code = response.status_code
        return response

    def _admin_reload(self, token: str | bytes | None) -> dict:
        expected = self.settings.admin_token
        if not expected:
            raise Forbidden("admin_reload is disabled: set NEXTBEST_ADMIN_TOKEN on the service "
                            "to enable it")
        if token is None:
            raise Forbidden("admin_reload needs the token set in NEXTBEST_ADMIN_TOKEN, sent as "
                            "{\"token\": ...} or the header Authorization: Bearer <token>")
        if not token_matches(token, [expected]):
            raise Forbidden("the token does not match NEXTBEST_ADMIN_TOKEN")
        return {"swapped": self.reload(retry_refused=True), "versions": self._versions(),
                "detail": self.detail}

    # ------------------------------------------------------------------ swapping
    def reload(self, retry_refused: bool = False) -> bool:
        """Load the aliased versions if they differ from the served ones; True if swapped. A
        set refused before is not tried again unless ``retry_refused`` (``admin_reload``)."""
        with self._swap:
            try:
                wanted = resolve_versions(self.settings, self.settings.serving_alias)
                if self.state is not None and wanted == self.state.models.versions:
                    return False
                refused = ModelCache(self.settings).refused(wanted)
                if refused is not None and not retry_refused:
                    self.detail = (f"serving {self._versions()}; the alias names {wanted}, "
                                   f"refused: {refused} (admin_reload tries it again)")
                    return False
                fresh = load_state(self.settings, retry_refused)
            except Exception as error:  # noqa: BLE001 - a bad model never replaces a working one
                self.detail = f"reload failed, still serving {self._versions()}: {error}"
                log.error(self.detail)
                return False
            finally:
                self._report_health()
            self.state = fresh  # one reference assignment: requests see old or new, never a mix
            self._load_variants()
            gc.freeze()
            self.detail = f"serving {fresh.models.versions} since {fresh.models.loaded_at}"
            log.info(self.detail)
            self._report_health()
            return True

    def _report_health(self) -> None:
        """What ``/readyz`` says (``serving/health.py``)."""
        state = self.state
        HEALTH.ready, HEALTH.detail = state is not None, self.detail
        HEALTH.versions = dict(state.models.versions) if state is not None else {}
        HEALTH.served_from = state.models.source if state is not None else None

    def _poll(self) -> None:
        while not self._stop.wait(self.settings.reload_interval_seconds):
            self.reload()
            self.reload_plan()

    def reload_plan(self) -> bool:
        """Read the experiments file again if it changed (``nextbest experiments start``, say);
        a file that does not validate leaves the plan in force, and says why."""
        path = plan_path(self.settings)
        stamp = file_stamp(path)
        if stamp == self._plan_stamp:
            return False
        try:
            self.plan = load_plan(path)
        except ExperimentsError as error:
            log.error("experiments file not applied, still running the previous plan: %s", error)
            return False
        finally:
            self._plan_stamp = stamp
        log.info("experiments in force: %s", ", ".join(e.name for e in self.plan.experiments)
                 or "none")
        self._load_variants()
        return True

    def _load_variants(self) -> None:
        """The recommender versions the experiments name, loaded beside the served one. A
        version that cannot be loaded is logged, and its variant answered by the served one."""
        state, wanted = self.state, self.plan.recommender_versions
        built_for, versions = self._variants_for
        if state is None or (built_for is state and versions == wanted):
            return  # a start or stop edited the file: the same versions stay loaded
        self._variants_for = (state, wanted)
        try:
            self.variants = variant_states(self.settings, state, wanted)
        except Exception as error:  # noqa: BLE001 - a bad variant never stops the service
            log.error("experiment variants naming recommender versions %s are answered by the "
                      "served version: %s", sorted(self.plan.recommender_versions), error)
            self.variants = {}

    # ------------------------------------------------------------------ real time
    def _live_state(self, customer_id: str) -> tuple[CustomerState | None, str | None]:
        """The customer's online state, or (None, why) while the store is unreachable; after a
        failure the store is not asked again for a few seconds (``self.breaker``), so requests
        stay fast."""
        asked = not self.breaker.open
        try:
            return self.breaker.call(lambda: self.online.customer(customer_id)), None
        except OnlineStateUnavailable as error:
            if asked:
                log.warning("recommend degraded: %s", error)
            return None, f"{error}; answered from the models alone"

    def _stream_lag_loop(self) -> None:
        """The events consumer's lag on /metrics (``serving.stream``), read from JetStream."""
        from serving.stream import LAG_PERIOD_SECONDS, StreamConfig, report_lag

        config = StreamConfig.from_settings(self.settings)
        while True:
            try:
                report_lag(config)
            except Exception as error:  # noqa: BLE001 - the stream's trouble is not the API's
                log.warning("could not read the event stream's lag: %s", error)
            if self._stop.wait(LAG_PERIOD_SECONDS):
                return

    @bentoml.on_shutdown
    def _write_exposures(self) -> None:
        """A worker stopped on purpose writes what its exposure buffer holds."""
        if self.exposures is not None:
            self.exposures.close()

    def _ready_state(self) -> ServingState:
        state = self.state
        if state is None:
            raise ServiceUnavailable(f"no models loaded yet ({self.detail})")
        return state

    def _versions(self) -> dict[str, str]:
        return dict(self.state.models.versions) if self.state is not None else {}


def add_http_layers(service) -> None:
    """The middleware every request passes through, outermost first: CORS answers preflights
    before anything else; every error is JSON; a caller without a required token is refused
    before its body is read; bodies too large or too deep are refused before they are parsed;
    a 400 names each field and its value; the OpenAPI spec and its page at /docs; /readyz.
    The benchmark's service installs the same (bench/service_app.py)."""
    service.add_asgi_middleware(Cors)
    routes = [m.route for m in service.apis.values()]
    documented = [e.path for e in ENDPOINTS if e.path in routes]  # in the spec's order
    service.add_asgi_middleware(JsonErrors, endpoints=documented + [
        r for r in routes if r not in documented])
    service.add_asgi_middleware(TokenAuth)
    service.add_asgi_middleware(RequestLimits)
    service.add_asgi_middleware(ReadableValidationErrors,
                                requests={e.path: e.request for e in ENDPOINTS})
    service.add_asgi_middleware(ApiDocs, title="nextbest", version=nextbest_version())
    service.add_asgi_middleware(Readiness)


add_http_layers(NextBest)

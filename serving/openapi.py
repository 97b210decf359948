"""The OpenAPI spec of the service, and its documentation page at ``/docs``.

BentoML 1.4 derives a spec from the endpoints' signatures, but our endpoints write their answers
themselves (see ``serving.service.json_response``), so every answer came out as an untyped
object; its error schema says ``detail`` is a string (it is a list); the statuses the endpoints
answer beyond 200/400/404/500 (207, 403, 413, 415, 503) are missing; and its page at ``/`` is
titled "nextbest:dev", version "None", loads Google Tag Manager from the internet and shows
BentoML's badges. So the spec is generated here from the request and answer models of
``serving.schemas``, one entry per endpoint, and :class:`ApiDocs` serves it at ``/openapi.json``
(and at BentoML's ``/docs.json``) with a Swagger UI page at ``/docs`` that uses the Swagger UI
files BentoML ships, so it opens without internet. ``/`` redirects to ``/docs``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import orjson
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from serving import schemas
from serving.asgi import ASGI, Receive, Scope, Send, respond

REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Endpoint:
    """One POST endpoint: what it takes, what it answers, and the other statuses it may give."""

    path: str
    request: type[BaseModel]
    answer: type[BaseModel]
    summary: str
    errors: dict[int, str] = field(default_factory=dict)
    """Status -> when it is answered; each is an ``ErrorAnswer`` unless ``special`` says."""
    special: dict[int, tuple[type[BaseModel], ...]] = field(default_factory=dict)
    """Statuses answered with other models (the events endpoint's 207 and 400)."""
    body: tuple[type[BaseModel], ...] = ()
    """What the spec says the body may be, when not ``request`` (the events endpoint's single
    event or batch, which ``request`` takes loosely and checks with the contract's rules)."""


NOT_READY = "No models are loaded yet (the reason is in `error`); see /readyz."
WRITE_TOKEN = {401: "NEXTBEST_WRITE_TOKENS is set and no token of it was sent as "
                    "Authorization: Bearer <token>."}
READ_TOKEN = {401: "NEXTBEST_READ_TOKENS is set and no token of it was sent as "
                   "Authorization: Bearer <token>."}
BAD_REQUEST = ("The request does not match the schema (each field named in `error`, listed in "
               "`detail`), or a value is not acceptable (`error` says which and why).")
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("/recommend", schemas.RecommendRequest, schemas.RecommendAnswer,
             "Ranked products, content and offers for one customer, each with a reason.",
             {400: BAD_REQUEST, 503: NOT_READY, **READ_TOKEN}),
    Endpoint("/events", schemas.EventsBody, schemas.EventsAnswer,
             "Record customers' events: one event as the body, or a batch as {\"events\": [...]}.",
             {413: "More events than NEXTBEST_MAX_BATCH_EVENTS in one call; nothing was recorded.",
              503: "The online store is unreachable; nothing was recorded. Retry after the "
                   "Retry-After header's seconds.", **WRITE_TOKEN},
             {207: (schemas.EventsAnswer,),
              400: (schemas.EventsAnswer, schemas.ErrorAnswer)},
             body=(schemas.Event, schemas.EventsBatch)),
    Endpoint("/consent", schemas.ConsentRequest, schemas.ConsentAnswer,
             "Record a consent given or withdrawn on a contact channel.",
             {400: BAD_REQUEST, 503: "The online store is unreachable; nothing was recorded.",
              **WRITE_TOKEN}),
    Endpoint("/consent_status", schemas.ConsentStatusRequest, schemas.ConsentStatusAnswer,
             "A customer's consent on each contact channel, as the service applies it now.",
             {400: BAD_REQUEST, 503: "The online store is unreachable.", **READ_TOKEN}),
    Endpoint("/similar_items", schemas.SimilarItemsRequest, schemas.SimilarItemsAnswer,
             "Items similar to an item: collaborative when it has history, by text otherwise.",
             {400: BAD_REQUEST + " An item_id not in the catalog is a 400 too.", 503: NOT_READY,
              **READ_TOKEN}),
    Endpoint("/propensity", schemas.PropensityRequest, schemas.PropensityAnswer,
             "Calibrated purchase-propensity scores, deciles and reasons for up to 1000 customers.",
             {400: BAD_REQUEST, 503: NOT_READY + " Or no propensity model is champion.",
              **READ_TOKEN}),
    Endpoint("/admin_reload", schemas.ReloadRequest, schemas.ReloadAnswer,
             "Check the serving alias now and swap models if it moved.",
             {400: BAD_REQUEST,
              403: "No admin token was sent, it is wrong, or NEXTBEST_ADMIN_TOKEN is not set on "
                   "the service (admin_reload is then disabled)."}),
)
COMMON_ERRORS = {
    400: BAD_REQUEST + " A body nested deeper than NEXTBEST_MAX_JSON_DEPTH is a 400 too.",
    405: "The endpoint takes POST with a JSON body.",
    413: "The body is larger than NEXTBEST_MAX_BODY_BYTES; it was not read.",
    415: "The body is not sent as JSON: send the header Content-Type: application/json.",
}


@cache
def openapi_spec(title: str, version: str) -> dict:
    """The whole spec (OpenAPI 3.1), built once per process."""
    models = [schemas.ErrorAnswer, schemas.ReadinessAnswer]
    for endpoint in ENDPOINTS:
        models += [*(endpoint.body or (endpoint.request,)), endpoint.answer,
                   *(m for ms in endpoint.special.values() for m in ms)]
    keys, definitions = models_json_schema(
        [(m, "validation" if m in _requests() else "serialization") for m in dict.fromkeys(models)],
        ref_template=REF)

    def ref(model: type[BaseModel]) -> dict:
        mode = "validation" if model in _requests() else "serialization"
        return keys[(model, mode)]

    def answer(description: str, *answered: type[BaseModel], headers: dict | None = None) -> dict:
        schema = ref(answered[0]) if len(answered) == 1 else {"anyOf": [ref(m) for m in answered]}
        entry = {"description": description, "content": {"application/json": {"schema": schema}}}
        return entry | ({"headers": headers} if headers else {})

    paths: dict[str, dict] = {}
    for endpoint in ENDPOINTS:
        responses = {"200": answer("The answer.", endpoint.answer)}
        for status, models_answered in endpoint.special.items():
            responses[str(status)] = answer(_SPECIAL.get((endpoint.path, status), "See above."),
                                            *models_answered)
        for status, description in {**endpoint.errors, **COMMON_ERRORS}.items():
            headers = ({"Retry-After": {"description": "Seconds to wait before retrying.",
                                        "schema": {"type": "integer"}}}
                       if status == 503 and endpoint.path == "/events" else None)
            responses.setdefault(str(status), answer(description, schemas.ErrorAnswer,
                                                     headers=headers))
        paths[endpoint.path] = {"post": {
            "summary": endpoint.summary, "operationId": endpoint.path.strip("/"),
            "tags": ["nextbest"],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": ref(endpoint.request) if not endpoint.body else
                {"anyOf": [ref(m) for m in endpoint.body]}}}},
            "responses": dict(sorted(responses.items()))}}
    text = {"text/plain": {"schema": {"type": "string"}}}
    paths |= {
        "/livez": {"get": {"summary": "Liveness: the process answers.", "tags": ["health"],
                           "responses": {"200": {"description": "Alive.", "content": text}}}},
        "/readyz": {"get": {"summary": "Readiness: models are loaded, which ones and why.",
                            "tags": ["health"],
                            "responses": {"200": answer("Ready.", schemas.ReadinessAnswer),
                                          "503": answer("Not ready yet.",
                                                        schemas.ReadinessAnswer)}}},
        "/metrics": {"get": {"summary": "Prometheus metrics.", "tags": ["health"],
                             "responses": {"200": {"description": "Metrics in the Prometheus "
                                                   "text format.", "content": text}}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "Next best products, content and offers for every retail "
                                "customer. Every error is a JSON object with `error` (see "
                                "ErrorAnswer); see docs/service.md for the ranking rules."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": definitions.get("$defs", {})},
    }


_SPECIAL = {
    ("/events", 207): "Some events were recorded; `rejected` and `problems` name the others.",
    ("/events", 400): "Nothing was recorded: a single bad event, an atomic batch with a bad "
                      "event, no valid event (an EventsAnswer with `error`), or a body that does "
                      "not match the schema (an ErrorAnswer).",
}


@cache
def _requests() -> frozenset[type[BaseModel]]:
    return frozenset(m for e in ENDPOINTS for m in (e.request, *e.body))


def docs_page(title: str, version: str) -> bytes:
    """Swagger UI on the spec, from the files BentoML serves under /static_content."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title} {version}: HTTP API</title>
  <link rel="stylesheet" href="/static_content/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/static_content/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{url: "/openapi.json", dom_id: "#swagger-ui",
                                  deepLinking: true}});
  </script>
</body>
</html>
""".encode()


class ApiDocs:
    """ASGI middleware: ``GET /docs``, ``/openapi.json`` (and ``/docs.json``), ``/`` -> /docs."""

    def __init__(self, app: ASGI, title: str, version: str) -> None:
        self.app = app
        self.title, self.version = title, version

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path in ("/openapi.json", "/docs.json"):
            await respond(send, 200, orjson.dumps(openapi_spec(self.title, self.version)))
        elif path in ("/docs", "/docs/"):
            await respond(send, 200, docs_page(self.title, self.version),
                          "text/html; charset=utf-8")
        elif path == "/":
            await respond(send, 307, b"", "text/plain", [(b"location", b"/docs")])
        else:
            await self.app(scope, receive, send)

"""Request-validation errors that name the field and the value the client sent.

BentoML 1.4 validates a request body against the endpoint's model before our code runs, and
answers a mismatch itself: HTTP 400 with ``{"error": "1 validation error for
ConsentRequestIODescriptor", "detail": [...]}``, the fields listed in ``detail`` without the
values sent (it asks pydantic to leave them out). This middleware rewrites the ``error`` of
those answers into a sentence per problem, ``channel: Input should be 'email', 'sms' or
'push' (got 'fax')``, looking each value up in the body the client sent; ``detail`` is kept.

Only a 400 whose body has that shape is touched. For every other request it costs a note of the
body's chunks as they pass.
"""

from __future__ import annotations

import difflib
from typing import Any

import orjson
from pydantic import BaseModel

from serving.asgi import ASGI, Message, Receive, Scope, Send

MISSING = object()


class ReadableValidationErrors:
    """ASGI middleware; ``requests`` maps each endpoint's path to its request model, so that an
    unknown field can be answered with the fields there are."""

    def __init__(self, app: ASGI,
                 requests: dict[str, type[BaseModel]] | None = None) -> None:
        self.app = app
        self.requests = requests or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        sent_body: list[bytes] = []
        held: list[Message] = []

        async def noting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                sent_body.append(message.get("body", b""))
            return message

        async def rewriting_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 400:
                held.append(message)  # hold the headers until the body says what it is
                return
            if held and message["type"] == "http.response.body":
                held.append(message)
                if message.get("more_body"):
                    return
                await _send_rewritten(send, held, b"".join(sent_body),
                                      self.requests.get(scope.get("path", "")))
                held.clear()
                return
            await send(message)

        await self.app(scope, noting_receive, rewriting_send)


async def _send_rewritten(send: Send, held: list[Message], request_body: bytes,
                          model: type[BaseModel] | None) -> None:
    start, chunks = held[0], held[1:]
    body = b"".join(chunk.get("body", b"") for chunk in chunks)
    rewritten = readable(body, request_body, model)
    if rewritten is not None:
        body = rewritten
        start = {**start, "headers": [(k, str(len(body)).encode() if k == b"content-length" else v)
                                      for k, v in start.get("headers", [])]}
    await send(start)
    await send({"type": "http.response.body", "body": body})


def readable(answer: bytes, request_body: bytes,
             model: type[BaseModel] | None = None) -> bytes | None:
    """BentoML's validation answer with an ``error`` naming each field and value, or None when
    the answer is not one."""
    try:
        parsed = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return None
    if not (isinstance(parsed, dict) and isinstance(parsed.get("detail"), list)
            and str(parsed.get("error", "")).endswith("IODescriptor")):
        return None
    try:
        sent = orjson.loads(request_body) if request_body else None
    except orjson.JSONDecodeError:
        sent = None
    problems = [_sentence(problem, sent, model) for problem in parsed["detail"]
                if isinstance(problem, dict)]
    return orjson.dumps({**parsed, "error": "; ".join(problems) or parsed["error"]})


def _sentence(problem: dict, sent: Any, model: type[BaseModel] | None = None) -> str:
    location = [str(part) for part in problem.get("loc", [])]
    field = ".".join(location) or "body"
    message = str(problem.get("msg", "is not valid")).removeprefix("Value error, ")
    if problem.get("type") == "extra_forbidden" and location:
        known = _fields_at(model, problem["loc"][:-1])
        if known:
            close = difflib.get_close_matches(location[-1], known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            return f"{field}: not a field here ({hint}the fields are {', '.join(known)})"
    value = _value_at(sent, problem.get("loc", []))
    if value is MISSING or problem.get("type") == "missing":
        return f"{field}: {message}"
    return f"{field}: {message} (got {orjson.dumps(value).decode()[:200]})"


def _fields_at(model: type[BaseModel] | None, location: list) -> list[str]:
    """The fields of the (nested) model at ``location``, or none when it is not a model."""
    for part in location:
        field = model.model_fields.get(str(part)) if model is not None else None
        annotation = field.annotation if field is not None else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation,
                                                                          BaseModel) else None
    return list(model.model_fields) if model is not None else []


def _value_at(sent: Any, location: list) -> Any:
    """The value at ``location`` (keys and list indices) in what was sent, or MISSING."""
    for part in location:
        in_object = isinstance(sent, dict) and part in sent
        in_list = isinstance(sent, list) and isinstance(part, int) and 0 <= part < len(sent)
        if not (in_object or in_list):
            return MISSING
        sent = sent[part]
    return sent

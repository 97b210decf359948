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

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
MISSING = object()


class ReadableValidationErrors:
    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

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
                await _send_rewritten(send, held, b"".join(sent_body))
                held.clear()
                return
            await send(message)

        await self.app(scope, noting_receive, rewriting_send)


async def _send_rewritten(send: Send, held: list[Message], request_body: bytes) -> None:
    start, chunks = held[0], held[1:]
    body = b"".join(chunk.get("body", b"") for chunk in chunks)
    rewritten = readable(body, request_body)
    if rewritten is not None:
        body = rewritten
        start = {**start, "headers": [(k, str(len(body)).encode() if k == b"content-length" else v)
                                      for k, v in start.get("headers", [])]}
    await send(start)
    await send({"type": "http.response.body", "body": body})


def readable(answer: bytes, request_body: bytes) -> bytes | None:
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
    problems = [_sentence(problem, sent) for problem in parsed["detail"]
                if isinstance(problem, dict)]
    return orjson.dumps({**parsed, "error": "; ".join(problems) or parsed["error"]})


def _sentence(problem: dict, sent: Any) -> str:
    location = [str(part) for part in problem.get("loc", [])]
    field = ".".join(location) or "body"
    message = str(problem.get("msg", "is not valid")).removeprefix("Value error, ")
    value = _value_at(sent, problem.get("loc", []))
    if value is MISSING or problem.get("type") == "missing":
        return f"{field}: {message}"
    return f"{field}: {message} (got {orjson.dumps(value).decode()[:200]})"


def _value_at(sent: Any, location: list) -> Any:
    """The value at ``location`` (keys and list indices) in what was sent, or MISSING."""
    for part in location:
        in_object = isinstance(sent, dict) and part in sent
        in_list = isinstance(sent, list) and isinstance(part, int) and 0 <= part < len(sent)
        if not (in_object or in_list):
            return MISSING
        sent = sent[part]
    return sent

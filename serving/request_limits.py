"""How large and how deep a request body may be, checked before anything parses it.

BentoML 1.4 reads a whole body into memory and parses it however large or deep it is: a 100 MB
``/events`` body was accepted (and stored whole in an event's context), and a body nested a few
hundred levels deep parsed, then made the error path fail 30 s later (orjson refuses to write
more than 254 levels). ``RequestLimits`` answers a body over ``NEXTBEST_MAX_BODY_BYTES`` with a
413 as soon as its length is known (from ``Content-Length``, or while it arrives: the rest is
never read), and one nested deeper than ``NEXTBEST_MAX_JSON_DEPTH`` with a 400; a body within
both limits is handed on unchanged.
"""

from __future__ import annotations

import re

from features.settings import get_settings
from serving.asgi import ASGI, Message, Receive, Scope, Send, header
from serving.workarounds.http_errors import send_error

_TOKENS = re.compile(rb'["\\\[\]{}]')


def nests_deeper_than(body: bytes, limit: int) -> bool:
    """Whether objects and lists in a JSON text nest more than ``limit`` deep (brackets inside
    strings do not count)."""
    if body.count(b"[") + body.count(b"{") <= limit:  # cannot be deeper than its brackets
        return False
    depth = 0
    in_string, escaped_at = False, -1
    for token in _TOKENS.finditer(body):
        position, char = token.start(), token.group()
        if position == escaped_at:
            continue
        if char == b"\\":
            escaped_at = position + 1
        elif char == b'"':
            in_string = not in_string
        elif in_string:
            continue
        elif char in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


class RequestLimits:
    """ASGI middleware for POST bodies, configured from the settings when the app is built."""

    def __init__(self, app: ASGI) -> None:
        settings = get_settings()
        self.app = app
        self.max_bytes, self.max_depth = settings.max_body_bytes, settings.max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._too_large(send, declared)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._too_large(send, size)
                return
        body = b"".join(chunks)
        if nests_deeper_than(body, self.max_depth):
            await send_error(send, 400, (
                f"the body nests objects or lists more than {self.max_depth} levels deep "
                "(NEXTBEST_MAX_JSON_DEPTH); no request of this service needs that"))
            return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send, size: int) -> None:
        await send_error(send, 413, (
            f"the body is larger than {self.max_bytes:,} bytes (NEXTBEST_MAX_BODY_BYTES; it has "
            f"{size:,} or more); send events in batches of at most NEXTBEST_MAX_BATCH_EVENTS"),
            [(b"connection", b"close")])


def _content_length(scope: Scope) -> int | None:
    value = header(scope, b"content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None

"""What the service's ASGI middleware share: the ASGI types, a request's header, a whole answer.

BentoML 1.4 runs every request through the middleware a service adds (``add_asgi_middleware``);
ours (CORS, errors, tokens, body limits, readable validation errors, the API docs, readiness)
each live in the module named for what they do, and speak ASGI through these few pieces.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGI = Callable[[Scope, Receive, Send], Awaitable[None]]


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of the request header ``name`` (given in lower case), or None."""
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value
    return None


async def respond(send: Send, status: int, body: bytes, media_type: str = "application/json",
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer ``body`` whole, with its type, its length and ``headers``."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", media_type.encode()),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})

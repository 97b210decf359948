"""Every error the service answers is JSON, in one shape: ``{"error": "..."}``.

Two kinds of error never reach our endpoints, and BentoML 1.4 (Starlette underneath) answers
them in plain text: an unknown path (404 "Not Found") and a wrong method (405 "Method Not
Allowed"). ``JsonErrors`` rewrites those into the documented shape with a sentence that says
what exists. It also refuses a POST whose body is not sent as JSON: BentoML reads a form-encoded
body (what ``curl -d`` sends without a content type) as a form, and the client got
``{"customer_id": "c0000042"}: Extra inputs are not permitted``, which names the whole body as
an unknown field.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from serving.asgi import ASGI, Message, Receive, Scope, Send, header, respond


class JsonErrors:
    """ASGI middleware; ``endpoints`` are the POST paths (for the messages)."""

    def __init__(self, app: ASGI, endpoints: Iterable[str]) -> None:
        self.app = app
        self.endpoints = tuple(endpoints)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope.get("method", ""), scope.get("path", "")
        if method == "POST" and path in self.endpoints:
            sent_as = (header(scope, b"content-type") or b"").decode("latin-1")
            media_type = sent_as.split(";")[0].strip().lower()
            if media_type and media_type != "application/json" and not media_type.endswith("+json"):
                await send_error(send, 415, (
                    f"the body must be JSON, sent with the header Content-Type: application/json "
                    f"(it came as {media_type}; with curl, add -H 'content-type: "
                    "application/json')"))
                return
        held: list[Message] = []

        async def rewriting_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] in (404, 405) \
                    and not _is_json(message):
                held.append(message)
                return
            if held and message["type"] == "http.response.body":
                if message.get("more_body"):
                    return
                status = held[0]["status"]
                await send_error(send, status, self._explain(status, method, path),
                                 _allow(held[0]))
                return
            await send(message)

        await self.app(scope, receive, rewriting_send)

    def _explain(self, status: int, method: str, path: str) -> str:
        if status == 405 and path in self.endpoints:
            return f"{path} takes POST with a JSON body, not {method}"
        if status == 405:
            return f"{path} does not take {method}"
        return (f"there is no endpoint {path}; the endpoints are POST "
                f"{', '.join(self.endpoints)}, and GET /livez, /readyz, /metrics, /docs "
                "(the OpenAPI page) and /openapi.json")


async def send_error(send: Send, status: int, error: str,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer ``{"error": error}`` with ``status``."""
    await respond(send, status, orjson.dumps({"error": error}), headers=headers)


def _is_json(start: Message) -> bool:
    return any(k.lower() == b"content-type" and b"json" in v for k, v in start.get("headers", []))


def _allow(start: Message) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in start.get("headers", []) if k.lower() == b"allow"]

"""Cross-origin requests from browsers: allowed only from the origins the shop names.

A storefront that calls the service from its pages' JavaScript (rather than from its own
server) needs CORS: the browser first sends a preflight ``OPTIONS /recommend`` and calls only if
the answer allows its origin. The origins come from ``NEXTBEST_CORS_ALLOW_ORIGINS`` (none by
default: a service that only servers call needs none). Starlette's ``CORSMiddleware`` answers
the preflights and adds the headers; a preflight from an origin not allowed gets a JSON 403 that
says how to allow it, instead of Starlette's plain-text 400.
"""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware

from features.settings import get_settings
from serving.asgi import ASGI, Receive, Scope, Send, header
from serving.workarounds.http_errors import send_error


class Cors:
    """ASGI middleware configured from the settings when the service's app is built."""

    def __init__(self, app: ASGI) -> None:
        self.origins = tuple(get_settings().cors_allow_origins)
        self.app = CORSMiddleware(app, allow_origins=list(self.origins),
                                  allow_methods=["GET", "POST"],
                                  allow_headers=["Content-Type", "Authorization"], max_age=600)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") == "OPTIONS":
            sent = header(scope, b"origin")
            origin = sent.decode("latin-1") if sent is not None else None
            if origin is not None and header(scope, b"access-control-request-method") is not None \
                    and "*" not in self.origins and origin not in self.origins:
                allowed = ", ".join(self.origins) or "none"
                await send_error(send, 403, (
                    f"origin {origin} may not call this service from a browser; allowed origins: "
                    f"{allowed}. Add it to NEXTBEST_CORS_ALLOW_ORIGINS (a JSON list, e.g. "
                    "[\"https://shop.example\"])"))
                return
        await self.app(scope, receive, send)

"""Who may call which endpoint: bearer tokens for writes and for reads, from the settings.

Without tokens configured, anyone who can reach the service may call it (the default suits a
service only the shop's own servers reach). With ``NEXTBEST_WRITE_TOKENS``, ``/events`` and
``/consent`` need ``Authorization: Bearer <token>`` with one of them; ``NEXTBEST_READ_TOKENS``
does the same for the endpoints that answer about customers. A list, so that a token can be
rotated without downtime. Tokens are compared as bytes in constant time (a non-ASCII token had
made ``hmac.compare_digest`` raise, a 500). ``admin_reload`` has its own token
(``NEXTBEST_ADMIN_TOKEN``), checked by the endpoint.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from features.settings import get_settings
from serving.asgi import ASGI, Receive, Scope, Send, header
from serving.workarounds.http_errors import send_error

WRITES = ("/events", "/consent")
READS = ("/recommend", "/similar_items", "/propensity", "/consent_status")


def token_matches(sent: str | bytes | None, tokens: Iterable[str]) -> bool:
    """Whether ``sent`` is one of ``tokens``; every token is compared, each in constant time."""
    if sent is None:
        return False
    sent_bytes = sent if isinstance(sent, bytes) else sent.encode()
    return any([hmac.compare_digest(sent_bytes, token.encode()) for token in tokens])


def bearer(scope: Scope) -> bytes | None:
    """The token of an ``Authorization: Bearer ...`` header, or None."""
    value = header(scope, b"authorization")
    return value[7:].strip() if value is not None and value[:7].lower() == b"bearer " else None


class TokenAuth:
    """ASGI middleware, configured from the settings when the service's app is built."""

    def __init__(self, app: ASGI) -> None:
        settings = get_settings()
        self.app = app
        self.protected = {path: (tokens, setting) for paths, tokens, setting in (
            (WRITES, settings.write_tokens, "NEXTBEST_WRITE_TOKENS"),
            (READS, settings.read_tokens, "NEXTBEST_READ_TOKENS")) if tokens for path in paths}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guard = self.protected.get(scope.get("path", "")) if scope["type"] == "http" else None
        if guard is not None and scope.get("method") == "POST":
            tokens, setting = guard
            sent = bearer(scope)
            if not token_matches(sent, tokens):
                why = "needs" if sent is None else "got a token that is not one of"
                await send_error(send, 401, (
                    f"{scope['path']} {why} the tokens in {setting}: send the header "
                    "Authorization: Bearer <token>"), [(b"www-authenticate", b"Bearer")])
                return
        await self.app(scope, receive, send)

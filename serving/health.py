"""What a worker says about itself at ``GET /readyz``: ready or not, and why.

BentoML's ``/readyz`` answers only a status from the service's ``__is_ready__``; an operator
whose service fell back to older models, or is not ready, had to read the logs to learn why.
The service keeps its worker's :data:`HEALTH` current, and :class:`Readiness` answers
``/readyz`` from it: 200 or 503, with ``detail`` (what is served and why, e.g. "versions
{...} do not load: ...; serving the last good versions {...}"), the model versions and where
they came from. One service runs per worker process, so one record per process.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import orjson

from serving.asgi import ASGI, Receive, Scope, Send, respond


@dataclass
class Health:
    ready: bool = False
    detail: str = "loading"
    versions: dict[str, str] = field(default_factory=dict)
    served_from: str | None = None
    """'registry', or 'cache' when serving the last good copy."""
    exposures: dict[str, int] = field(default_factory=dict)
    """The exposure log's counters: recorded, written, dropped, pending, write_errors."""


HEALTH = Health()
"""This worker's; written by the service, read by ``/readyz``."""


class Readiness:
    """ASGI middleware answering ``GET /readyz`` from :data:`HEALTH`."""

    def __init__(self, app: ASGI) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != "/readyz" \
                or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        await respond(send, 200 if HEALTH.ready else 503, orjson.dumps(asdict(HEALTH)))

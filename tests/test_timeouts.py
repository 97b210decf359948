"""BentoML's request timeout as the service applies it: a slow request still gets a 504, and
an answered one leaves no timer behind holding it."""

from __future__ import annotations

import asyncio

from bentoml._internal.server.http.traffic import TimeoutMiddleware

from serving.workarounds.timeouts import cancel_timers_when_answered

cancel_timers_when_answered()


class Watched(TimeoutMiddleware):
    """The middleware, counting how often its timer fires."""

    fired = 0

    def _set_timer_out(self, waiter: asyncio.Future) -> None:
        Watched.fired += 1
        super()._set_timer_out(waiter)


def app_taking(seconds: float):
    async def app(scope, receive, send) -> None:
        await asyncio.sleep(seconds)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})
    return app


def serve_once(middleware: TimeoutMiddleware, linger: float) -> list[dict]:
    """One request through ``middleware``, then ``linger`` seconds of the event loop."""
    sent: list[dict] = []

    async def run() -> None:
        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        await middleware({"type": "http", "method": "POST", "path": "/"}, receive, send)
        await asyncio.sleep(linger)

    asyncio.run(run())
    return sent


def test_an_answered_request_leaves_no_timer_running():
    Watched.fired = 0
    sent = serve_once(Watched(app_taking(0), timeout=0.05), linger=0.2)
    assert sent[0]["status"] == 200
    assert Watched.fired == 0  # BentoML's own middleware fires it after every request


def test_a_request_past_the_timeout_still_gets_a_504():
    Watched.fired = 0
    sent = serve_once(Watched(app_taking(1.0), timeout=0.05), linger=0)
    assert Watched.fired == 1
    assert sent[0]["status"] == 504
    assert b"0.05 seconds" in sent[1]["body"]

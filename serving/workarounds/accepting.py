"""Workers that take turns at accepting connections, so a client's connections reach all of them.

BentoML 1.4 runs every worker of a service on one shared listening socket, through uvicorn on
asyncio's event loop. asyncio drains the socket's whole accept queue on each wake-up (up to the
listen backlog, 2,048 here), so when a client opens its keep-alive connections at once (a load
balancer, a storefront's connection pool, a load test) the first worker to wake takes all of
them and the other workers idle: in the service benchmark all 16 connections went to one of two
workers in 2 of 3 rounds of one run and 4 of 4 of another (bentoml/BentoML#5426).

``accept_one_connection_per_turn`` makes each worker accept at most one connection per turn of
its event loop, as nginx does with ``multi_accept off``: the other workers, woken by the same
readiness, take the next ones, and a busy worker, which comes back to the socket later, takes
fewer. The listen backlog is unchanged (asyncio sets it separately), so a burst of connections
still queues in the kernel rather than being refused.

It applies to asyncio's selector event loop, the one BentoML's workers run on when uvloop is not
installed (nextbest does not install it); uvloop accepts in libuv and is left as it is, which
``warn_unless_spread`` says in the worker's log.
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import selector_events

log = logging.getLogger("nextbest.serving")

_ORIGINAL = getattr(selector_events.BaseSelectorEventLoop, "_accept_connection", None)
"""asyncio's own (a private method, as of Python 3.11-3.13: None if a later Python renames it)."""


def accept_one_connection_per_turn() -> None:
    """Apply to asyncio's selector event loops in this process (a worker's, once it starts).
    Where asyncio no longer has the method it wraps, nothing is changed, and a worker of a
    several-worker service says so (``warn_unless_spread``) rather than failing to start."""
    if _ORIGINAL is not None:
        selector_events.BaseSelectorEventLoop._accept_connection = _accept_one


def accepting_one_per_turn() -> bool:
    """Whether this process's selector event loops accept one connection per turn."""
    return selector_events.BaseSelectorEventLoop._accept_connection is _accept_one


def spreads_connections(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` accepts one connection per turn (an asyncio selector loop, patched)."""
    return accepting_one_per_turn() and isinstance(loop, selector_events.BaseSelectorEventLoop)


def warn_unless_spread(workers: int | str) -> None:
    """Log a warning when several workers serve from a loop that takes a client's connections
    all at once (uvloop, or the fix not applied): called in a worker, on its event loop."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not on an event loop (constructed in a script or a test)
        return
    if workers != 1 and not spreads_connections(loop):
        log.warning("NEXTBEST_WORKERS=%s on %s, which accepts every waiting connection at once: "
                    "a client's keep-alive connections may all go to one worker (uninstall "
                    "uvloop, or run one-worker replicas behind a load balancer)",
                    workers, type(loop).__name__)


def _accept_one(self, protocol_factory, sock, sslcontext=None, server=None, backlog=100,
                *args, **kwargs):
    """asyncio's ``_accept_connection`` with at most one ``accept()`` per readiness event; the
    ``backlog`` it is given is the listen backlog, which it otherwise uses as that limit."""
    return _ORIGINAL(self, protocol_factory, sock, sslcontext, server, 1, *args, **kwargs)

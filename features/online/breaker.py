"""A circuit breaker for the online store: after it fails, calls fail at once for a while.

When Redis accepts connections but never answers, each call waits out the socket timeout (2 s);
ten ``/events`` calls queued twenty seconds, and every endpoint behind them waited too. After a
failure the breaker answers the next calls with the same error at once, without asking the
store, for ``cooldown`` seconds; then one call tries again. ``recommend`` answers degraded in
the meantime, and the writing endpoints answer 503 with Retry-After, as they do on the first
failure.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from features.online.store import OnlineStateUnavailable

T = TypeVar("T")


class Breaker:
    def __init__(self, cooldown_seconds: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown = cooldown_seconds
        self.clock = clock
        self._open_until = 0.0
        self._reason = ""
        self._lock = threading.Lock()

    @property
    def open(self) -> bool:
        return self.clock() < self._open_until

    def call(self, work: Callable[[], T]) -> T:
        """``work()``, unless the store failed within the cooldown: then its error at once."""
        if self.open:
            left = max(self._open_until - self.clock(), 0.0)
            raise OnlineStateUnavailable(f"{self._reason} (not asked again for {left:.0f} s)")
        try:
            return work()
        except OnlineStateUnavailable as error:
            with self._lock:
                self._open_until = self.clock() + self.cooldown
                self._reason = str(error)
            raise

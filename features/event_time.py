"""Which times an event may carry: one rule for every way in (HTTP, file import, consent).

One view dated years ahead, once accepted, drives "because you viewed", pushes every training
cutoff past the last real event and makes every customer look years inactive. So an event is
refused when it is dated after now plus a small tolerance for clocks that disagree
(``NEXTBEST_FUTURE_TOLERANCE_MINUTES``), or before the earliest time a shop's history could
start (``NEXTBEST_EARLIEST_EVENT_TIME``). Every entry point words the refusal the same way, with
the value, the current time and the tolerance, so a sender can tell a typo from a skewed clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from features.settings import Settings, get_settings


@dataclass(frozen=True)
class TimeWindow:
    """The times accepted now: ``earliest <= t <= latest``, where latest is now + tolerance."""

    earliest: datetime
    now: datetime
    tolerance: timedelta

    @classmethod
    def current(cls, settings: Settings | None = None, now: datetime | None = None) -> TimeWindow:
        """The window as the settings define it, at ``now`` (default: the clock)."""
        settings = settings or get_settings()
        return cls(settings.earliest_event_time, now or datetime.now(UTC),
                   timedelta(minutes=settings.future_tolerance_minutes))

    @property
    def latest(self) -> datetime:
        return self.now + self.tolerance

    def problem(self, moment: datetime) -> str | None:
        """What would be right, when ``moment`` (timezone-aware) is outside the window."""
        if moment > self.latest:
            return self.too_late
        if moment < self.earliest:
            return self.too_early
        return None

    @property
    def too_late(self) -> str:
        minutes = self.tolerance / timedelta(minutes=1)
        return (f"a time no later than {_iso(self.latest)} (now, {_iso(self.now)}, plus the "
                f"{minutes:g}-minute tolerance of NEXTBEST_FUTURE_TOLERANCE_MINUTES): events are "
                "sent once they happened")

    @property
    def too_early(self) -> str:
        return (f"a time no earlier than {_iso(self.earliest)} (NEXTBEST_EARLIEST_EVENT_TIME)")

    def outside(self, times: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """Masks of the times after the window and before it (missing times are in neither)."""
        values = times.astype("datetime64[us, UTC]")
        late = (values > pd.Timestamp(self.latest)).fillna(False).to_numpy(dtype=bool)
        early = (values < pd.Timestamp(self.earliest)).fillna(False).to_numpy(dtype=bool)
        return late, early


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

"""The background worker: what runs once per deployment, beside however many API workers.

The journey scheduler (journeys and the contact policy's trigger rules) and the warehouse flush
(ingested events and logged exposures moved from the online store) must run once, not once per
API worker: two schedulers would race for the same due customers, and every worker flushing
the same store on its own clock only adds contention. So the API workers do neither, and one
process (``nextbest worker``; ``nextbest serve`` starts it beside the API, a Deployment with
one replica on Kubernetes) runs both on one loop:

* every ``journey_interval_seconds`` a pass over the customers with a journey step due;
* every ``flush_interval_seconds`` (0 = never) a flush of the online store to the warehouse;
* every ``reload_interval_seconds`` the journeys, policy and experiments files are read again
  when they changed, and the models when the serving alias moved.

Everything it does is exactly-once against the online store (the scheduler's firing keys, the
store's flush marks), so a worker killed mid-pass and started again repeats nothing.

It touches a heartbeat file on every pass, so that a supervisor can tell a stuck loop from a
busy one: ``python -m serving.background --max-age 120`` exits 1 when the last pass is older
(the Kubernetes liveness probe, deploy/kubernetes/worker.yaml).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from mlflow.exceptions import MlflowException

from features.config_files import file_stamp
from features.experiments import ExperimentsError, assign, load_plan, plan_path
from features.online import open_online_store
from features.settings import Settings
from features.warehouse import Warehouse
from serving.engagement.journeys import JourneysError, journeys_in_force, journeys_path
from serving.engagement.policy import load_policy, policy_path
from serving.engagement.scheduler import JourneyEngine
from serving.exposure_log import ExposureLog
from serving.models import RegistryUnavailable, VersionsRefused, resolve_versions
from serving.state import ServingState, build_state, load_state

log = logging.getLogger("nextbest.worker")

HEARTBEAT = Path(tempfile.gettempdir()) / "nextbest-worker.heartbeat"
"""Touched by every pass; local to the worker's machine (or container), as its probe is."""


@dataclass
class PassReport:
    """What one turn of the loop did, for the worker's console."""

    outcomes: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    moved_events: int = 0
    moved_exposures: int = 0
    notes: list[str] = field(default_factory=list)


class BackgroundWorker:
    """The journey engine, the flush and the reloads of one deployment (module docstring)."""

    def __init__(self, settings: Settings, interval: float | None = None) -> None:
        self.settings = settings
        self.interval = interval or settings.journey_interval_seconds
        self.store = open_online_store(settings)
        self.warehouse = Warehouse(settings.data_dir / "warehouse")
        self.state: ServingState | None = None
        self.waiting_for = self._load()
        """Why there are no models to run journeys with yet (None once there are)."""
        self.exposures = ExposureLog(self.store, settings.exposure_buffer,
                                     settings.exposure_flush_ms).start()
        self.experiments = load_plan(plan_path(settings))
        self.engine = JourneyEngine(journeys_in_force(settings),
                                    load_policy(policy_path(settings)), self.store,
                                    lambda: self.state, settings.max_category_share,
                                    self.exposures.record,
                                    lambda customer, now: assign(self.experiments, customer, now))
        self._files = [journeys_path(settings), policy_path(settings), plan_path(settings)]
        self._stamps = [file_stamp(f) for f in self._files]
        self._checked = self._flushed = time.monotonic()

    def turn(self, now: datetime | None = None) -> PassReport:
        """One pass of the scheduler, then the flush and the reloads when they are due."""
        started = time.perf_counter()
        report = PassReport()
        if self.state is not None:  # journeys need models; the flush does not
            report.outcomes.update(o.status for o in self.engine.tick(now or datetime.now(UTC)))
        every = self.settings.flush_interval_seconds
        if every > 0 and time.monotonic() - self._flushed >= every:
            self._flushed = time.monotonic()
            report.moved_events, report.moved_exposures = self.flush()
        if time.monotonic() - self._checked >= self.settings.reload_interval_seconds:
            self._checked = time.monotonic()
            report.notes += self.reload()
        report.seconds = time.perf_counter() - started
        HEARTBEAT.touch()
        return report

    def flush(self) -> tuple[int, int]:
        """Move ingested events and logged exposures to the warehouse; a failure is logged and
        retried at the next flush (they stay in the online store until then)."""
        try:
            return (self.store.flush_to(self.warehouse),
                    self.store.flush_exposures_to(self.warehouse))
        except Exception as error:  # noqa: BLE001 - events stay logged and are retried
            log.error("warehouse flush failed, will retry: %s", error)
            return 0, 0

    def reload(self) -> list[str]:
        """Read the changed files again and follow the alias; a bad file keeps the previous."""
        notes = []
        stamps = [file_stamp(f) for f in self._files]
        if stamps != self._stamps:
            self._stamps = stamps
            try:
                self.engine.plan = journeys_in_force(self.settings)
                self.engine.policy = load_policy(policy_path(self.settings))
                self.experiments = load_plan(plan_path(self.settings))
                notes.append("journeys, policy and experiments read again")
            except (JourneysError, ExperimentsError, ValueError) as error:
                notes.append(f"a changed file was not applied, still running the previous "
                             f"ones: {error}")
        if self.state is None:
            self.waiting_for = self._load()
            notes.append(f"models loaded: {self.state.models.versions}" if self.state is not None
                         else f"still no models, journeys wait: {self.waiting_for}")
            return notes
        try:
            moved = resolve_versions(self.settings, self.settings.serving_alias) != \
                self.state.models.versions
            if moved:
                self.state = load_state(self.settings)
                notes.append(f"models now {self.state.models.versions}")
        except (MlflowException, OSError, RegistryUnavailable, VersionsRefused) as error:
            notes.append(f"kept models {self.state.models.versions}: {error}")
        return notes

    def _load(self) -> str | None:
        """Load the models the alias names (or the last good ones); why not, when neither."""
        try:
            self.state = build_state(self.settings)
        except (RegistryUnavailable, VersionsRefused) as error:
            return str(error)
        return None

    def run(self, once: bool = False, show: Callable[[PassReport], None] = lambda _: None,
            ) -> Counter:
        """Turn until interrupted (or once); returns the outcomes of every pass. The flush runs
        once more on the way out, so a stopped worker leaves nothing behind it could move."""
        totals: Counter = Counter()
        try:
            while True:
                report = self.turn()
                totals.update(report.outcomes)
                show(report)
                if once:
                    break
                time.sleep(self.interval)
        except KeyboardInterrupt:
            pass
        finally:
            self.exposures.close()
            if self.settings.flush_interval_seconds > 0:
                self.flush()
        return totals


def heartbeat_age(heartbeat: Path) -> float:
    """Seconds since the worker's last pass; infinite when it never made one here."""
    try:
        return time.time() - heartbeat.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def main(argv: list[str] | None = None) -> int:
    """The liveness check: 0 when the last pass is at most --max-age seconds old, else 1."""
    parser = argparse.ArgumentParser(prog="python -m serving.background",
                                     description="Is the background worker's loop turning?")
    parser.add_argument("--max-age", type=float, default=120.0,
                        help="Seconds a pass may be ago (default 120).")
    age = heartbeat_age(HEARTBEAT)
    limit = parser.parse_args(argv).max_age
    print(f"last pass {age:.1f} s ago (at most {limit:g} s)" if age < float("inf")
          else f"no pass yet ({HEARTBEAT} does not exist)")
    return 0 if age <= limit else 1


if __name__ == "__main__":
    sys.exit(main())

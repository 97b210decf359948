"""The exposure log's writer: every answer and message is recorded without holding it up.

``record`` appends to a bounded in-memory buffer and returns (a deque append: under a
microsecond); a writer thread wakes every ``exposure_flush_ms`` and writes what the buffer holds
to the online store's exposure log as one batch (one SQLite transaction or one Redis entry),
from where the flush moves it to the warehouse. What this costs and what it can lose:

* a killed worker loses what its buffer held: the exposures of at most its last flush interval
  (plus the one batch being written, if the kill lands mid-write), never an older one
  (``tests/test_exposures.py`` kills a real process with SIGKILL and checks this bound);
* while the store is down, batches stay in the buffer and are retried; when the buffer is full,
  new exposures are dropped and counted (``dropped``, in ``/readyz`` and the log), and the
  answer goes out as usual: measurement never fails or slows a customer's page.

The buffer holds the answers themselves (built once, never changed after) and the writer thread
turns them into exposure records, so the request path does no extra work beyond the append.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import deque
from collections.abc import Callable

from features.contracts import ExposureStatus, ExposureType, ItemKind
from features.exposures import Exposure
from features.online.store import OnlineStateUnavailable, OnlineStore

log = logging.getLogger("nextbest.exposures")
KINDS = (("products", ItemKind.PRODUCT.value), ("content", ItemKind.CONTENT.value),
         ("offers", ItemKind.OFFER.value), ("buy_again", ItemKind.PRODUCT.value))
MAX_BATCH = 5_000
"""Most exposures in one write: a larger backlog (after an outage) goes in several."""


def placement(request) -> str:
    """Where a ``recommend`` request was shown: its placement, else its page type, else
    'default'."""
    return request.placement or request.context.page_type or "default"


def answer_exposure(answer: dict, channel: str, placement: str, at: float,
                    latency_ms: float | None = None) -> Exposure:
    """A ``recommend`` answer as an exposure: its id, who, where, when, versions and items."""
    context = {"degraded_reason": answer["degraded_reason"]} if answer.get("degraded") else None
    return {"exposure_id": answer["recommendation_id"],
            "exposure_type": ExposureType.RECOMMENDATION.value,
            "customer_id": answer["customer_id"], "at": at, "channel": channel,
            "placement": placement, "status": ExposureStatus.SHOWN.value, "rule": None,
            "model_versions": answer["model_versions"],
            "items": [(kind, entry["item_id"], entry["source"], entry.get("team"))
                      for key, kind in KINDS for entry in answer.get(key, ())],
            "context": context, "variants": answer.get("experiments") or {},
            "latency_ms": latency_ms}


def failed_exposure(customer_id: str, channel: str, placement: str, at: float,
                    variants: dict[str, str], error: BaseException) -> Exposure:
    """A request whose ranking raised: no items, the error kept, its variants named (the
    error-rate guardrail counts these per variant)."""
    return {"exposure_id": f"{random.getrandbits(128):032x}",
            "exposure_type": ExposureType.RECOMMENDATION.value, "customer_id": customer_id,
            "at": at, "channel": channel, "placement": placement,
            "status": ExposureStatus.FAILED.value, "rule": None, "model_versions": {},
            "items": [], "context": {"error": f"{type(error).__name__}: {error}"[:300]},
            "variants": variants, "latency_ms": None}


def decision_exposure(decision: dict, at: float) -> Exposure:
    """A message decision (written to the outbox) as an exposure."""
    return {"exposure_id": decision["decision_id"],
            "exposure_type": ExposureType.MESSAGE.value,
            "customer_id": decision["customer_id"], "at": at, "channel": decision["channel"],
            "placement": decision["trigger"], "status": ExposureStatus.SENT.value,
            "rule": None, "model_versions": decision.get("model_versions") or {},
            "items": [(item["kind"], item["item_id"], item["source"])
                      for item in decision["items"]],
            "context": {"reason": decision["reason"], "step": decision.get("step")},
            "variants": decision.get("experiments") or {}}


def suppressed_exposure(exposure_id: str, customer_id: str, journey: str, channel: str,
                        rule: str, detail: str, at: float,
                        variants: dict[str, str] | None = None,
                        step: str | None = None) -> Exposure:
    """A message a journey wanted to send and the contact policy (or the customer's place in
    an experiment) stopped, by ``rule``."""
    return {"exposure_id": exposure_id, "exposure_type": ExposureType.MESSAGE.value,
            "customer_id": customer_id, "at": at, "channel": channel, "placement": journey,
            "status": ExposureStatus.SUPPRESSED.value, "rule": rule, "model_versions": {},
            "items": [], "context": {"reason": detail, "step": step},
            "variants": variants or {}}


def consent_exposure(customer_id: str, channel: str, granted: bool, at: float) -> Exposure:
    """A consent given or withdrawn, as the log keeps it (what the opt-out guardrail counts)."""
    return {"exposure_id": f"{random.getrandbits(128):032x}",
            "exposure_type": ExposureType.CONSENT.value, "customer_id": customer_id, "at": at,
            "channel": channel, "placement": "consent",
            "status": (ExposureStatus.GRANTED if granted else ExposureStatus.WITHDRAWN).value,
            "rule": None, "model_versions": {}, "items": [], "context": None, "variants": {},
            "latency_ms": None}


def journey_exposure(journey: str, customer_id: str, status: str, at: float,
                     variants: dict[str, str], step: str | None = None,
                     reason: str | None = None, channel: str = "email") -> Exposure:
    """A customer entering, converting in, exiting or finishing a journey."""
    return {"exposure_id": f"{random.getrandbits(128):032x}",
            "exposure_type": ExposureType.JOURNEY.value, "customer_id": customer_id, "at": at,
            "channel": channel, "placement": journey, "status": status, "rule": None,
            "model_versions": {}, "items": [], "context": {"step": step, "reason": reason},
            "variants": variants, "latency_ms": None}


class ExposureLog:
    """A bounded buffer of exposures and the thread that writes it to the online store."""

    def __init__(self, store: OnlineStore, capacity: int = 10_000, flush_ms: float = 200.0,
                 counters: dict | None = None) -> None:
        self.store = store
        self.capacity = capacity
        self.interval = flush_ms / 1000
        self._buffer: deque[Exposure | Callable[[], Exposure]] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.counters = counters if counters is not None else {}
        self.counters.update(recorded=0, written=0, dropped=0, pending=0, write_errors=0)
        self._reported_drops = 0

    def record(self, exposure: Exposure | Callable[[], Exposure]) -> None:
        """Buffer an exposure (or a function that builds it, called by the writer); never
        blocks. Beyond the capacity it is dropped and counted."""
        if len(self._buffer) >= self.capacity:
            self.counters["dropped"] += 1
            return
        self._buffer.append(exposure)
        self.counters["recorded"] += 1

    def start(self) -> ExposureLog:
        self._thread = threading.Thread(target=self._run, name="exposure-writer", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop the writer after one last write of what is buffered."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.write()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.write()

    def write(self) -> int:
        """Write what the buffer holds now, in batches; return how many were written. On a
        store error the batch goes back to the front of the buffer for the next try."""
        written = 0
        while self._buffer:
            taken = []
            while self._buffer and len(taken) < MAX_BATCH:
                taken.append(self._buffer.popleft())
            batch = [entry() if callable(entry) else entry for entry in taken]
            try:
                self.store.log_exposures(batch)
            except OnlineStateUnavailable as error:
                self._buffer.extendleft(reversed(batch))
                self.counters["write_errors"] += 1
                log.warning("exposures kept in memory, the online store is unavailable: %s",
                            error)
                break
            written += len(batch)
        self.counters["written"] += written
        self.counters["pending"] = len(self._buffer)
        self._report_drops()
        return written

    def _report_drops(self) -> None:
        dropped = self.counters["dropped"]
        if dropped > self._reported_drops:
            log.warning("%d exposure(s) dropped since the last report: the buffer "
                        "(NEXTBEST_EXPOSURE_BUFFER=%d) was full; %d dropped in all",
                        dropped - self._reported_drops, self.capacity, dropped)
            self._reported_drops = dropped

"""The online store: one interface over the embedded (SQLite) and the Redis backend.

Everything that must be all-or-nothing is one call here, done in one transaction by the backend:

* ``ingest``: drop events already seen (by ``event_id``), record the new ones durably in a log
  that waits for the warehouse, and update each customer's state — so an acknowledged event is
  never lost and a retried one is never counted twice;
* ``record_decision``: write a trigger's decision to the outbox, mark the firing and count the
  contact — or do nothing if this firing was written before (exactly once per firing);
* ``flush_to``: move logged events into the warehouse. The warehouse's append is idempotent by
  ``event_id``, so a crash between the append and forgetting the log only repeats a no-op;
* ``log_exposures`` / ``flush_exposures_to``: the same for exposures (what was shown or sent),
  logged a batch per entry; the warehouse keeps the last log position it stored with the rows,
  so a repeated move stores nothing twice.

Backends raise :class:`OnlineStateUnavailable` when their storage cannot be reached, and then
have written nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import orjson
import pandas as pd

from features.contracts import EVENTS
from features.exposures import Exposure, exposure_rows
from features.online.state import CustomerState, apply_consent, apply_event, record_contact
from features.warehouse import Warehouse


class OnlineStateUnavailable(RuntimeError):
    """The online store cannot be reached; nothing was written."""


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int
    customers: tuple[str, ...]
    states: dict[str, CustomerState] = field(default_factory=dict)
    """The customers' states as this call left them (what the triggers evaluate next)."""


class OnlineStore(ABC):
    """Customer state, the event log awaiting the warehouse, and the decision outbox."""

    name: str
    reads_over_network: bool
    """Whether a read waits on a network round trip (the serving loop hands those to a thread)."""

    # ------------------------------------------------------------------ events
    def ingest(self, events: Sequence[dict]) -> IngestResult:
        """Record valid, normalized events (see ``features.ingest``) and update state."""
        unique: dict[str, dict] = {}
        for event in events:
            unique.setdefault(event["event_id"], event)
        fresh, states = self._commit_events(list(unique.values()))
        customers = tuple(dict.fromkeys(e["customer_id"] for e in fresh))
        return IngestResult(len(fresh), len(events) - len(fresh), customers, states)

    @abstractmethod
    def _commit_events(self, events: list[dict]) -> tuple[list[dict], dict[str, CustomerState]]:
        """In one transaction: keep the events not seen before, log them, apply them to their
        customers' states (with :func:`update_states`); return the kept ones and the states of
        their customers."""

    # ------------------------------------------------------------------ customers
    def customer(self, customer_id: str) -> CustomerState:
        """The customer's state; an empty one for a customer with no online events."""
        return self.customers([customer_id])[customer_id]

    @abstractmethod
    def customers(self, customer_ids: list[str]) -> dict[str, CustomerState]:
        """The states of many customers in one read (empty ones for those with no events)."""

    @abstractmethod
    def open_carts(self, idle_since: float) -> list[str]:
        """Customers whose cart is not empty and last grew at or before ``idle_since``."""

    # ------------------------------------------------------------------ decisions
    def record_decision(self, decision: dict, now: float) -> bool:
        """Write ``decision`` to the outbox unless its ``firing_key`` was written before."""
        def change(state: CustomerState) -> list[dict] | None:
            if decision["firing_key"] in state.fired:
                return None
            record_contact(state, decision["channel"], decision["trigger"],
                           [item["item_id"] for item in decision["items"]],
                           decision["firing_key"], now)
            return [decision]
        return self.commit(decision["customer_id"], change) is not None

    def commit(self, customer_id: str, change: Callable[[CustomerState], list[dict] | None]
               ) -> list[dict] | None:
        """In one transaction: run ``change`` on the customer's state as stored now; unless it
        returns None, store the state and append the decisions it returns to the outbox.
        Return what ``change`` returned. A journey step is executed exactly once this way:
        ``change`` checks that the run is still where the scheduler read it."""
        return self.commit_many([customer_id], change).get(customer_id)

    @abstractmethod
    def commit_many(self, customer_ids: list[str],
                    change: Callable[[CustomerState], list[dict] | None]
                    ) -> dict[str, list[dict]]:
        """``commit`` for many customers in one transaction (one commit, one disk sync, or one
        Redis EXEC): what the journey scheduler needs to advance thousands of customers a
        second. Returns the customers ``change`` stored, with their decisions."""

    @abstractmethod
    def due_journeys(self, now: float, limit: int = 10_000) -> list[str]:
        """Customers with a journey run due at or before ``now`` (``journey_due``), earliest
        first."""

    def record_consent(self, customer_id: str, channel: str, granted: bool, at: float
                       ) -> CustomerState:
        """Durably note a consent given or withdrawn on a contact channel; it applies to the
        next contact decision and ``recommend`` at once, ahead of the customers table."""
        return self._commit_state(
            customer_id, lambda state: apply_consent(state, channel, granted, at))

    @abstractmethod
    def _commit_state(self, customer_id: str, change) -> CustomerState:
        """In one transaction: run ``change`` on the customer's state and store it if it
        returns True; return the state."""

    @abstractmethod
    def outbox(self, after: str | None = None, limit: int = 100) -> list[tuple[str, dict]]:
        """Decisions in the order written, after the position ``after``: (position, decision)."""

    # ------------------------------------------------------------------ warehouse
    @abstractmethod
    def pending_events(self, limit: int) -> tuple[list[str], list[dict]]:
        """Logged events not yet in the warehouse, oldest first, with their log positions."""

    @abstractmethod
    def forget_events(self, positions: list[str]) -> None:
        """Drop logged events that are now in the warehouse."""

    def flush_to(self, warehouse: Warehouse, batch: int = 50_000) -> int:
        """Append every logged event to the warehouse (exactly once); return how many moved."""
        moved = 0
        while True:
            positions, events = self.pending_events(batch)
            if not events:
                return moved
            frame = pd.DataFrame(events, columns=EVENTS.column_names)
            frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
            warehouse.append_events(frame)
            self.forget_events(positions)
            moved += len(events)

    # ------------------------------------------------------------------ exposures
    @property
    @abstractmethod
    def log_id(self) -> str:
        """This store's identity, made when its storage was: log positions count within it, so
        the warehouse's "moved up to position N" applies to this store and no other (a new
        embedded file starts counting again from 1)."""

    @abstractmethod
    def log_exposures(self, exposures: list[Exposure]) -> None:
        """Durably append one batch of exposures to the log awaiting the warehouse."""

    @abstractmethod
    def pending_exposures(self, limit: int) -> list[tuple[int, list[Exposure]]]:
        """Logged batches, oldest first, until about ``limit`` exposures: (position, batch),
        positions increasing."""

    @abstractmethod
    def forget_exposures(self, through: int) -> None:
        """Drop logged batches up to and including position ``through``."""

    def flush_exposures_to(self, warehouse: Warehouse, batch: int = 20_000) -> int:
        """Move every logged exposure to the warehouse (exactly once); return how many rows
        (one per item shown) were stored."""
        stored = 0
        while True:
            batches = self.pending_exposures(batch)
            if not batches:
                return stored
            through = batches[-1][0]
            stored += warehouse.append_exposures(exposure_rows(batches), self.log_id, through)
            self.forget_exposures(through)

    # ------------------------------------------------------------------ health
    @abstractmethod
    def ping(self) -> None:
        """Raise :class:`OnlineStateUnavailable` unless the store answers."""

    def close(self) -> None:  # noqa: B027 - optional for backends that hold nothing
        """Release connections."""


def update_states(states: dict[str, CustomerState], events: list[dict]) -> None:
    """Apply events, in time order, to the states of their customers (created when missing)."""
    for event in sorted(events, key=lambda e: e["at"]):
        customer = event["customer_id"]
        state = states.get(customer)
        if state is None:
            state = states[customer] = CustomerState(customer)
        apply_event(state, event)


def logged_event(event: dict) -> str:
    """The event as the warehouse will store it: the contract's columns only."""
    return orjson.dumps({name: event.get(name) for name in _COLUMNS}).decode()


_COLUMNS = tuple(EVENTS.column_names)

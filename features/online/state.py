"""What the shop knows about one customer right now, and how one event changes it.

Both online backends store a :class:`CustomerState` per customer and change it only through
:func:`apply_event`, so the embedded and the Redis backend cannot disagree on what an event
means. The state holds what serving and the triggers read on every request or tick: recent
views, the cart, purchases, redemptions, what was shown or sent (cross-channel memory), contacts
made (frequency caps), trigger firings (exactly once), and where the customer is in each
journey (``journeys``: a step is executed exactly once because the store commits it with this
state). Every collection in it is bounded
(``LIMITS``: the newest entries are kept) and old contacts, firings and showings are pruned, so
a state stays small whatever a customer sends: a state is read on every ``recommend`` for that
customer, on the event loop, and 50,000 distinct items added to one cart had made it 1.2 MB and
that customer's answer 20 times slower. A property test holds every sequence of events to the
limits.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import orjson

from features.contracts import CONTACT_CHANNELS, EventType

MAX_VIEWS = 50
LIMITS = {"views": MAX_VIEWS, "cart": 200, "purchased": 500, "redemptions": 200, "shown": 500,
          "contacts": 200, "fired": 200}
"""Most entries each collection keeps; beyond them the oldest go. The cart's limit is the request's
(``context.cart_items``); older purchases and redemptions are in the warehouse, which the
service's snapshot reads at each reload."""
CONTACT = frozenset(c.value for c in CONTACT_CHANNELS)
JOURNEY_RUN = ("step", "due", "entered", "key", "status", "ended", "held_out")
"""A journey run's fields: the index of the step to run next, when it is due (None: waiting for
an event only), when and why (``key``, the situation) the customer entered, active / converted /
exited / finished, when it ended, and whether the customer is in the journey's holdout."""
RETENTION_SECONDS = 90 * 86400
"""Contacts, firings and shown items older than this are forgotten (longer than any cap)."""


@dataclass
class CustomerState:
    customer_id: str
    views: list[tuple[str, float]] = field(default_factory=list)
    """(item, when) for the latest view events, newest first; repeats kept (triggers count them)."""
    cart: dict[str, float] = field(default_factory=dict)
    """Items in the cart now -> when they were added."""
    cart_updated: float | None = None
    """Last time something was added to the cart; None when the cart is empty."""
    purchased: dict[str, float] = field(default_factory=dict)
    last_purchase: float | None = None
    redemptions: dict[str, int] = field(default_factory=dict)
    shown: dict[str, tuple[str, float]] = field(default_factory=dict)
    """Item or offer -> (channel, when) it was last shown or sent, on any channel."""
    contacts: list[tuple[str, str, float]] = field(default_factory=list)
    """(channel, trigger, when) for each message sent by a trigger, oldest first."""
    fired: dict[str, float] = field(default_factory=dict)
    """Firing key -> when: a trigger fires at most once per key."""
    counts: dict[str, int] = field(default_factory=dict)
    last_event: float | None = None
    consent: dict[str, tuple[bool, float]] = field(default_factory=dict)
    """Contact channel -> (granted, when) as the shop last told us (``OnlineStore.record_consent``):
    newer than any customers table the service has loaded, so it wins over it. Never pruned."""
    last_seen: dict[str, float] = field(default_factory=dict)
    """Event type -> when the latest one happened (journeys' goals and branches)."""
    engaged: dict[str, float] = field(default_factory=dict)
    """Contact channel -> the latest event the customer sent from it (opened or clicked a
    message there): journeys' best channel and ``engaged`` branches."""
    journeys: dict[str, dict] = field(default_factory=dict)
    """Journey name -> the customer's run (``JOURNEY_RUN``); finished runs stay, for the
    re-entry rule; one per journey, so bounded by the journeys file."""
    attributes: dict[str, str] = field(default_factory=dict)
    """Set by journeys' update steps; read by their branches."""
    journey_check: float | None = None
    """When an event arrived that the journeys have not looked at yet (it may enter the
    customer, reach a goal or end a wait): makes the customer due at once."""

    # ------------------------------------------------------------------ reading
    @property
    def journey_due(self) -> float | None:
        """When the earliest active journey run is due next: the store indexes customers by
        it, so the scheduler finds due customers without reading everyone."""
        if not self.journeys:
            return self.journey_check
        due = [run["due"] for run in self.journeys.values()
               if run["status"] == "active" and run["due"] is not None]
        if self.journey_check is not None:
            due.append(self.journey_check)
        return min(due) if due else None

    def recent_views(self, limit: int = 20) -> list[str]:
        """Distinct viewed items, newest first."""
        seen: dict[str, None] = {}
        for item_id, _ in self.views:
            seen.setdefault(item_id, None)
            if len(seen) == limit:
                break
        return list(seen)

    def contacts_since(self, channel: str, since: float) -> int:
        return sum(1 for c, _, when in self.contacts if c == channel and when >= since)

    # ------------------------------------------------------------------ storing
    def to_json(self) -> str:
        return orjson.dumps(self).decode()  # orjson: this runs for every customer in every batch

    @classmethod
    def from_json(cls, text: str | bytes) -> CustomerState:
        """The state ``to_json`` stored. Every write stores every field, so the decoded dict
        becomes the instance's attributes as it is; a state stored before a field existed
        goes through ``__init__``, which fills in the defaults (at twice the cost: a state is
        decoded per customer in every ingested batch)."""
        data = orjson.loads(text)
        data["views"] = list(map(tuple, data["views"]))
        if data["shown"]:
            data["shown"] = {k: tuple(v) for k, v in data["shown"].items()}
        if data["contacts"]:
            data["contacts"] = list(map(tuple, data["contacts"]))
        if data.get("consent"):  # states written before consent was recorded lack the key
            data["consent"] = {k: tuple(v) for k, v in data["consent"].items()}
        if len(data) != len(_FIELDS):
            return cls(**data)
        state = cls.__new__(cls)
        state.__dict__ = data
        return state


_FIELDS = tuple(CustomerState.__dataclass_fields__)


def apply_event(state: CustomerState, event: dict) -> None:
    """Fold one accepted event into the customer's state (``event['at']`` is epoch seconds).

    Events may arrive a little out of order (a phone comes back online); views are kept in time
    order, and a cart is only emptied by a purchase or removal that happened after the add.
    """
    kind, item, at, channel = event["event_type"], event["item_id"], event["at"], event["channel"]
    state.counts[kind] = state.counts.get(kind, 0) + 1
    state.last_event = max(at, state.last_event or at)
    state.last_seen[kind] = max(at, state.last_seen.get(kind, at))
    state.journey_check = min(at, state.journey_check or at)
    if channel in CONTACT:
        state.engaged[channel] = max(at, state.engaged.get(channel, at))
    if kind in (EventType.VIEW, EventType.CLICK):
        # After the views at the same time or later: where a stable sort, newest first, puts it
        state.views.insert(bisect.bisect_right(state.views, -at, key=_newest_first), (item, at))
        del state.views[MAX_VIEWS:]
    elif kind == EventType.ADD_TO_CART:
        state.cart[item] = max(at, state.cart.get(item, at))
        state.cart_updated = max(at, state.cart_updated or at)
    elif kind == EventType.REMOVE_FROM_CART:
        if item in state.cart and state.cart[item] <= at:
            del state.cart[item]
    elif kind == EventType.PURCHASE:
        state.purchased[item] = max(at, state.purchased.get(item, at))
        state.last_purchase = max(at, state.last_purchase or at)
        if item in state.cart and state.cart[item] <= at:
            del state.cart[item]
    elif kind == EventType.OFFER_REDEEMED:
        state.redemptions[item] = state.redemptions.pop(item, 0) + 1  # the newest last
    elif kind in (EventType.OFFER_SHOWN, EventType.IMPRESSION):
        state.shown[item] = (channel, at)
    if not state.cart:
        state.cart_updated = None
    bound(state)


def _newest_first(view: tuple[str, float]) -> float:
    return -view[1]


def record_contact(state: CustomerState, channel: str, trigger: str, items: list[str],
                   firing_key: str, now: float) -> None:
    """Remember a message sent: it counts against caps and blocks its items elsewhere."""
    state.contacts.append((channel, trigger, now))
    state.fired[firing_key] = now
    for item in items:
        state.shown[item] = (channel, now)
    prune(state, now)
    bound(state)


def apply_consent(state: CustomerState, channel: str, granted: bool, at: float) -> bool:
    """Note the customer's consent on a contact channel unless a later one is noted already (a
    change that arrives late does not undo a newer one); True if it changed the state."""
    known = state.consent.get(channel)
    if known is not None and known[1] > at:
        return False
    state.consent[channel] = (granted, at)
    return True


def prune(state: CustomerState, now: float) -> None:
    horizon = now - RETENTION_SECONDS
    state.contacts = [c for c in state.contacts if c[2] >= horizon]
    state.fired = {k: t for k, t in state.fired.items() if t >= horizon}
    state.shown = {k: v for k, v in state.shown.items() if v[1] >= horizon}


def bound(state: CustomerState) -> None:
    """Keep each collection within ``LIMITS``, dropping its oldest entries."""
    if len(state.cart) > LIMITS["cart"]:
        state.cart = _newest(state.cart, LIMITS["cart"], lambda when: when)
    if len(state.purchased) > LIMITS["purchased"]:
        state.purchased = _newest(state.purchased, LIMITS["purchased"], lambda when: when)
    if len(state.shown) > LIMITS["shown"]:
        state.shown = _newest(state.shown, LIMITS["shown"], lambda seen: seen[1])
    if len(state.fired) > LIMITS["fired"]:
        state.fired = _newest(state.fired, LIMITS["fired"], lambda when: when)
    if len(state.redemptions) > LIMITS["redemptions"]:  # no times: the last noted are newest
        state.redemptions = dict(list(state.redemptions.items())[-LIMITS["redemptions"]:])
    del state.contacts[:-LIMITS["contacts"]]  # oldest first


def _newest(entries: dict, limit: int, when) -> dict:
    kept = sorted(entries.items(), key=lambda entry: when(entry[1]))[-limit:]
    return dict(kept)

"""The journey engine: enters customers into the journeys of ``serving.engagement.journeys`` and moves
each one's run step by step, exactly once.

Everything about one customer happens in one pass over their state, which holds their runs
(``CustomerState.journeys``), inside a transaction of the online store; a scheduler pass
commits customers 200 at a time (:meth:`JourneyEngine.advance_many`,
``OnlineStore.commit_many``). In each customer's pass:

1. a run whose goal event happened since it entered ends as ``converted``;
2. journeys the customer's situation calls for (an abandoned cart, an event, lapsing, ...) that
   they are not in, and may re-enter, start a run (holdout drawn by hash, as experiments are);
3. every active run that is due executes its steps until one waits or the run ends.

Because the store re-reads the state inside the transaction and writes the run's new step
together with the messages it decided (to the outbox), a step is executed exactly once however
many schedulers look at the customer and wherever one crashes: a crash before the commit leaves
the run where it was, to be executed again; after it, the step is done. The store indexes
customers by when their next step is due (``journey_due``; an event makes its customer due at
once), so the scheduler reads only the customers with something to do.

At most one journey message goes to a customer per slot (``slot_minutes``): the journey of
highest priority due first sends, and a message another journey wants within the slot is
recorded as suppressed with the rule ``priority``. Messages obey the contact policy (consent,
quiet hours and fatigue, cross-channel memory); quiet hours postpone a message, the other
rules suppress it. Every entry, end and message sent or suppressed is logged as an exposure,
with the customer's group (``journey.<name>=treatment`` or ``=holdout``): what
``training.journey_report`` reads.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pandas as pd

from features.contracts import ExposureStatus, ItemKind
from features.experiments import BUCKETS, Assignment, bucket
from features.exposures import Exposure
from features.online.state import CustomerState, record_contact
from features.online.store import OnlineStore
from serving.engagement.journeys import Condition, Journey, JourneyPlan, Message, Step, channels_for
from serving.engagement.policy import ContactPolicy, contact_verdict, recently_shown, verdict_rule
from serving.engagement.situations import Situation, abandoned_cart, category_interest
from serving.exposure_log import decision_exposure, journey_exposure, suppressed_exposure
from serving.pipeline import Candidate, rank_offers, rank_products, with_live_state
from serving.schemas import RecommendRequest
from serving.state import ServingState

BATCH = 200
"""Customers advanced in one transaction: many per disk sync, and the write lock held for a
bounded time (a message step ranks inside it)."""
QUIET_RETRY = timedelta(minutes=15)
"""A message due in quiet hours is looked at again this much later."""
CART_SWEEP, LAPSING_SWEEP = timedelta(minutes=1), timedelta(hours=1)
"""How often a pass also looks at idle carts and lapsed customers (see ``_sweep``)."""
ENGAGED_DAYS = 30
"""How far back an event from a contact channel counts as engagement on it."""


@dataclass(frozen=True)
class JourneyOutcome:
    journey: str
    customer_id: str
    status: str
    """entered | sent | suppressed | waiting | converted | exited | finished"""
    step: str | None = None
    detail: str = ""
    decision: dict | None = None


@dataclass
class _Pass:
    """One look at one customer: what the engine reads, and what it decided and will log."""

    live: CustomerState
    state: ServingState
    now: datetime
    placed: Assignment | None
    outcomes: list[JourneyOutcome] = field(default_factory=list)
    exposures: list[Exposure] = field(default_factory=list)
    decisions: list[dict] = field(default_factory=list)

    def variants(self, journey: Journey, run: dict) -> dict[str, str]:
        """The customer's experiment variants, and their group in this journey."""
        labels = self.placed.labels() if self.placed is not None else {}
        return {**labels, f"journey.{journey.name}": "holdout" if run["held_out"]
                else "treatment"}


class JourneyEngine:
    def __init__(self, plan: JourneyPlan, policy: ContactPolicy, store: OnlineStore,
                 serving_state: Callable[[], ServingState | None],
                 max_category_share: float = 0.5,
                 record: Callable[[Exposure], None] | None = None,
                 assignment: Callable[[str, datetime], Assignment] | None = None,
                 slot_minutes: float = 60.0) -> None:
        self.plan = plan
        self.policy = policy
        self.store = store
        self.serving_state = serving_state
        self.max_category_share = max_category_share
        self.record = record
        """Where each message sent or suppressed goes (the exposure log); None: nowhere."""
        self.assignment = assignment
        """The customer's place in the experiments: the global holdout, and variants that turn
        messages off, get none (recorded as suppressed, rule ``holdout`` or ``experiment``)."""
        self.slot = slot_minutes * 60
        self._swept: dict[str, datetime] = {}
        """When each sweep (``_sweep``) last ran."""

    # ------------------------------------------------------------------ entry points
    def tick(self, now: datetime, limit: int = 10_000) -> list[JourneyOutcome]:
        """Every customer with something to do now: runs due (events make their customer due
        at once), carts abandoned long enough, customers lapsing."""
        state = self.serving_state()
        if state is None:
            return []
        customers = dict.fromkeys(self.store.due_journeys(now.timestamp(), limit))
        carts = [j.entry.after_minutes for j in self.plan.journeys
                 if j.entry.when == "cart_abandoned"]
        if carts and self._sweep("carts", now, CART_SWEEP):
            customers.update(dict.fromkeys(
                self.store.open_carts(now.timestamp() - min(carts) * 60)))
        lapsing = [j.entry.days_without_purchase for j in self.plan.journeys
                   if j.entry.when == "lapsing"]
        if lapsing and self._sweep("lapsing", now, LAPSING_SWEEP):
            horizon = now.timestamp() - min(lapsing) * 86400
            customers.update(dict.fromkeys(
                c for c, at in state.shop.last_purchase.items() if at <= horizon))
        ids = list(customers)
        outcomes = []
        for first in range(0, len(ids), BATCH):
            outcomes.extend(self.advance_many(ids[first:first + BATCH], now, state))
        return outcomes

    def _sweep(self, what: str, now: datetime, every: timedelta) -> bool:
        """Whether the situations that time alone creates (carts going idle, customers
        lapsing) are due for a look: they change slowly and their customers stay in the sweep
        until they act, so every pass (5 a second) reading them all would be wasted work."""
        last = self._swept.get(what)
        if last is not None and now - last < every:
            return False
        self._swept[what] = now
        return True

    def advance(self, customer: str, now: datetime, state: ServingState | None = None
                ) -> list[JourneyOutcome]:
        """Goals, entries and due steps of one customer, committed in one transaction."""
        return self.advance_many([customer], now, state)

    def advance_many(self, customers: list[str], now: datetime,
                     state: ServingState | None = None) -> list[JourneyOutcome]:
        """``advance`` for a batch of customers, committed together (one transaction)."""
        state = state or self.serving_state()
        if state is None:
            return []
        placed = ({c: self.assignment(c, now) for c in customers}
                  if self.assignment is not None else {})
        passes: dict[str, _Pass] = {}

        def change(live: CustomerState) -> list[dict] | None:
            passes[live.customer_id] = p = _Pass(live, state, now,  # a retry starts over
                                                 placed.get(live.customer_id))
            return self._change(p)

        done = self.store.commit_many(customers, change)
        outcomes = []
        for customer in done:
            if self.record is not None:
                for exposure in passes[customer].exposures:
                    self.record(exposure)
            outcomes.extend(passes[customer].outcomes)
        return outcomes

    # ------------------------------------------------------------------ one customer
    def _change(self, p: _Pass) -> list[dict] | None:
        live, moment = p.live, p.now.timestamp()
        changed = live.journey_check is not None
        live.journey_check = None
        for journey in self.plan.journeys:
            run = live.journeys.get(journey.name)
            if run is not None and run["status"] == "active" and self._goal_reached(
                    journey, run, live):
                self._end(journey, run, "converted", p)
                changed = True
        for journey in self.plan.by_priority:
            changed |= self._enter(journey, p)
        for journey in self.plan.by_priority:
            run = live.journeys.get(journey.name)
            if run is not None and run["status"] == "active" and (
                    run["due"] is None or run["due"] <= moment or _event_came(journey, run, live)):
                self._run_steps(journey, run, p)
                changed = True
        return p.decisions if changed else None

    def _goal_reached(self, journey: Journey, run: dict, live: CustomerState) -> bool:
        if journey.goal is None:
            return False
        return live.last_seen.get(journey.goal.event.value, float("-inf")) >= run["entered"]

    def _enter(self, journey: Journey, p: _Pass) -> bool:
        live = p.live
        run = live.journeys.get(journey.name)
        if run is not None and (run["status"] == "active" or not _may_reenter(journey, run,
                                                                               p.now)):
            return False
        found = self._situation(journey, live, p.state, p.now)
        if found is None:
            return False
        key, started, reason, category = found
        if run is not None and run["key"] == key:
            return False  # this very situation went through the journey already
        if p.now.timestamp() > started + journey.entry.expires_after_hours * 3600:
            return False
        if not self._audience(journey, live.customer_id, p.state):
            return False
        held_out = bucket(f"journey:{journey.name}", live.customer_id) < journey.holdout * BUCKETS
        run = live.journeys[journey.name] = {
            "step": 0, "due": p.now.timestamp(), "entered": p.now.timestamp(), "key": key,
            "status": "active", "ended": None, "held_out": held_out, "started": None,
            "reason": reason, "category": category}
        self._log(journey, run, ExposureStatus.ENTERED.value, p, None, reason)
        return True

    def _end(self, journey: Journey, run: dict, status: str, p: _Pass,
             step: str | None = None, detail: str = "") -> None:
        run.update(status=status, ended=p.now.timestamp(), due=None)
        self._log(journey, run, status, p, step, detail)

    def _log(self, journey: Journey, run: dict, status: str, p: _Pass, step: str | None,
             detail: str) -> None:
        """An outcome for the caller, and the journey row the report counts."""
        p.outcomes.append(JourneyOutcome(journey.name, p.live.customer_id, status, step,
                                         detail + (" (holdout)" if run["held_out"] and
                                                   status == "entered" else "")))
        p.exposures.append(journey_exposure(
            journey.name, p.live.customer_id, status, p.now.timestamp(),
            p.variants(journey, run), step, detail or None, _first_channel(journey)))

    def _situation(self, journey: Journey, live: CustomerState, state: ServingState,
                   now: datetime) -> Situation | None:
        """The entry's situation if it holds now (``serving.engagement.situations.Situation``)."""
        entry = journey.entry
        if entry.when == "cart_abandoned":
            found = abandoned_cart(entry.after_minutes, live, now)
            return None if found is None else (f"cart:{found[0]}", *found[1:])
        if entry.when == "category_browsing":
            found = category_interest(entry.views, entry.within_days, live, state, now)
            return None if found is None else (f"browsed:{found[0]}", *found[1:])
        if entry.when == "event":
            at = live.last_seen.get(entry.event.value)
            return None if at is None else (f"{entry.event.value}:{at:.3f}", at,
                                            f"{entry.event.value} at {_when(at)}", None)
        if entry.when == "first_purchase":
            at = live.last_seen.get("purchase")
            if at is None or live.customer_id in state.shop.last_purchase \
                    or live.counts.get("purchase", 0) != 1:
                return None
            return "first_purchase", at, "first purchase", None
        last = max(state.shop.last_purchase.get(live.customer_id, float("-inf")),
                   live.last_purchase or float("-inf"))
        if last == float("-inf"):
            return None  # never bought: not lapsing, just not a customer yet
        lapsed = last + entry.days_without_purchase * 86400
        if now.timestamp() < lapsed:
            return None
        return (f"lapsing:{last:.0f}", now.timestamp(),  # it holds as long as they stay away
                f"no purchase for {(now.timestamp() - last) / 86400:.0f} days", None)

    def _audience(self, journey: Journey, customer: str, state: ServingState) -> bool:
        entry = journey.entry
        if entry.segments and state.shop.segments.get(customer) not in entry.segments:
            return False
        if entry.propensity_deciles is not None:
            decile = _decile(state, customer)
            low, high = entry.propensity_deciles
            return decile is not None and low <= decile <= high
        return True

    # ------------------------------------------------------------------ steps
    def _run_steps(self, journey: Journey, run: dict, p: _Pass) -> None:
        """Execute a due run's steps from where it is until one waits or the run ends."""
        for _ in range(len(journey.steps) + 1):  # a goto loop cannot spin within one pass
            if run["step"] >= len(journey.steps):
                self._end(journey, run, ExposureStatus.FINISHED.value, p)
                return
            step = journey.steps[run["step"]]
            if step.wait is not None:
                if not self._waited(step, run, p):
                    return
                _next(run)
            elif step.branch is not None:
                target = next((case.goto for case in step.branch
                               if self._holds(case.if_, run, p)), None)
                run["step"] = journey.index(target) if target else run["step"] + 1
                run["started"] = None
            elif step.update is not None:
                p.live.attributes.update(step.update)
                _next(run)
            elif step.exit:
                self._end(journey, run, ExposureStatus.EXITED.value, p, step.name)
                return
            else:
                if not self._message(journey, step, run, p):
                    return  # postponed (quiet hours)
                _next(run)
        self._end(journey, run, ExposureStatus.EXITED.value, p, None,
                  "its branches loop without a wait")

    def _waited(self, step: Step, run: dict, p: _Pass) -> bool:
        """Whether the wait is over; when it starts, set when the run is due next."""
        wait = step.wait
        moment = p.now.timestamp()
        if run["started"] is None:
            run["started"] = moment
            if wait.until_local is not None:
                zone = self.policy.zone_of(p.state.shop.timezones.get(p.live.customer_id))
                run["due"] = _next_local(p.now, wait.until_local, ZoneInfo(zone)).timestamp()
            elif wait.until_event is not None:
                run["due"] = moment + wait.timeout_hours * 3600
            else:
                run["due"] = moment + wait.seconds
            return run["due"] <= moment
        if wait.until_event is not None and p.live.last_seen.get(
                wait.until_event.value, float("-inf")) >= run["started"]:
            return True
        return run["due"] <= moment

    def _holds(self, condition: Condition, run: dict, p: _Pass) -> bool:
        live = p.live
        if condition.segment_in is not None:
            return p.state.shop.segments.get(live.customer_id) in condition.segment_in
        if condition.propensity_decile is not None:
            decile = _decile(p.state, live.customer_id)
            low, high = condition.propensity_decile
            return decile is not None and low <= decile <= high
        if condition.event_since_entry is not None:
            return live.last_seen.get(condition.event_since_entry.value,
                                      float("-inf")) >= run["entered"]
        if condition.attribute is not None:
            return all(live.attributes.get(k) == v for k, v in condition.attribute.items())
        return live.engaged.get(condition.engaged, float("-inf")) >= \
            p.now.timestamp() - ENGAGED_DAYS * 86400

    def _message(self, journey: Journey, step: Step, run: dict, p: _Pass) -> bool:
        """Send the step's message, or record why not; False when quiet hours postpone it."""
        live, state, now = p.live, p.state, p.now
        message = step.message
        firing_key = f"{journey.name}:{live.customer_id}:{run['entered']:.3f}:{step.name}"
        variants = p.variants(journey, run)

        def suppressed(rule: str, detail: str, channel: str) -> bool:
            p.outcomes.append(JourneyOutcome(journey.name, live.customer_id, "suppressed",
                                             step.name, f"{rule}: {detail}"))
            p.exposures.append(suppressed_exposure(
                uuid.uuid5(uuid.NAMESPACE_URL, f"suppressed:{firing_key}").hex,
                live.customer_id, journey.name, channel, rule, detail, now.timestamp(),
                variants, step.name))
            return True

        channels = self._channel_order(message, live, state)
        if run["held_out"]:
            return suppressed("holdout", "in the journey's holdout", channels[0])
        if p.placed is not None and not p.placed.messages:
            why = "holdout" if p.placed.held_out else "experiment"
            return suppressed(why, f"the customer is in the {why} ("
                              + ", ".join(f"{e}={v}" for e, v in p.placed.labels().items())
                              + ")", channels[0])
        holder = self._slot_holder(live, journey, now, p.decisions)
        if holder is not None:
            return suppressed("priority", f"{holder} holds this customer's message slot",
                              channels[0])
        consents = state.shop.consents.get(live.customer_id, frozenset())
        verdicts = {}
        chosen = None
        for channel in channels:
            verdict = contact_verdict(self.policy, live, consents, channel, now,
                                      state.shop.timezones.get(live.customer_id))
            if verdict is None:
                chosen = channel
                break
            verdicts[channel] = verdict
        if chosen is None:
            detail = "; ".join(f"{c}: {v}" for c, v in verdicts.items())
            if any(v.startswith("quiet hours") for v in verdicts.values()):
                run["due"] = (now + QUIET_RETRY).timestamp()
                p.outcomes.append(JourneyOutcome(journey.name, live.customer_id, "waiting",
                                                 step.name, detail))
                return False
            rules = "|".join(sorted({verdict_rule(v) for v in verdicts.values()}))
            return suppressed(rules, detail, channels[0])
        items = self._payload(message, run.get("category"), live, state, chosen, now)
        if not items:
            return suppressed("nothing_to_send", "nothing eligible to send", chosen)
        kind = {"offer": ItemKind.OFFER.value,
                "content": ItemKind.CONTENT.value}.get(message.send, ItemKind.PRODUCT.value)
        decision = {
            "decision_id": uuid.uuid4().hex, "firing_key": firing_key, "trigger": journey.name,
            "journey": journey.name, "step": step.name, "customer_id": live.customer_id,
            "channel": chosen, "action": message.send,
            "items": [{"item_id": c.item_id, "title": state.shop.items[c.item_id].title,
                       "kind": kind, "score": round(c.score, 6), "reason": c.reason,
                       "source": c.source} for c in items],
            "reason": message.reason or run.get("reason") or journey.name,
            "recommendation_id": uuid.uuid4().hex,
            "model_versions": dict(state.models.versions), "created_at": now.isoformat(),
            "experiments": variants}
        record_contact(live, chosen, journey.name, [c.item_id for c in items], firing_key,
                       now.timestamp())
        p.decisions.append(decision)
        p.exposures.append(decision_exposure(decision, now.timestamp()))
        p.outcomes.append(JourneyOutcome(journey.name, live.customer_id, "sent", step.name,
                                         decision["reason"], decision))
        return True

    def _channel_order(self, message: Message, live: CustomerState,
                       state: ServingState) -> list[str]:
        """The step's channel; for ``best``: the channels the customer reacted on, latest
        first; then their segment's most engaged channels; then the configured order."""
        channels = channels_for(message)
        if message.channel != "best":
            return channels
        own = sorted((c for c in channels if c in live.engaged),
                     key=lambda c: -live.engaged[c])
        segment = state.shop.segment_channels.get(
            state.shop.segments.get(live.customer_id, ""), ())
        return list(dict.fromkeys([*own, *(c for c in segment if c in channels), *channels]))

    def _slot_holder(self, live: CustomerState, journey: Journey, now: datetime,
                     decisions: list[dict]) -> str | None:
        """The journey that already has this customer's message slot, if another one does."""
        if decisions:
            return decisions[0]["journey"]
        names = {j.name for j in self.plan.journeys} - {journey.name}
        since = now.timestamp() - self.slot
        recent = [(when, name) for _, name, when in live.contacts
                  if name in names and when >= since]
        return max(recent)[1] if recent else None

    def _payload(self, message: Message, category: str | None, live: CustomerState,
                 state: ServingState, channel: str, now: datetime) -> list[Candidate]:
        shown = recently_shown(self.policy, live, now)
        request = RecommendRequest(customer_id=live.customer_id, channel=channel,
                                   n={ItemKind(k): 0 for k in ItemKind}, exclude=sorted(shown))
        behaviour, request = with_live_state(state.shop.customer(live.customer_id), request,
                                             live)
        if message.send == "cart":
            return _cart(state, live, message.items)
        if message.send == "offer":
            return rank_offers(state, request, behaviour, pd.Timestamp(now), message.items)
        if message.send == "products":
            return rank_products(state, request, behaviour, message.items,
                                 self.max_category_share, live)
        return _content(state, category, shown | set(behaviour.recent_views), message.items)


# ---------------------------------------------------------------------------- helpers
def _cart(state: ServingState, live: CustomerState, n: int) -> list[Candidate]:
    """The products in the customer's cart that can still be bought, latest added first."""
    items = state.shop.items
    kept = [i for i, _ in sorted(live.cart.items(), key=lambda entry: -entry[1])
            if i in items and items[i].kind == ItemKind.PRODUCT.value and items[i].in_stock]
    return [Candidate(i, 1.0, "still in your cart", "cart") for i in kept[:n]]


def _content(state: ServingState, category: str | None, exclude: set[str],
             n: int) -> list[Candidate]:
    """The most read articles about ``category`` (the one a browsing customer was looking
    at), or across the catalog without one."""
    popularity = dict(state.shop.popular_content)
    if category is not None:
        pool = state.shop.content_by_top.get(category, [])
        reason, source = f"about {category}, which you have been browsing", "category"
    else:
        pool = [i for i in state.shop.items.values() if i.kind == ItemKind.CONTENT.value]
        reason, source = "popular with customers", "popular"
    ranked = sorted((i for i in pool if i.item_id not in exclude),
                    key=lambda i: -popularity.get(i.item_id, 0.0))[:n]
    return [Candidate(i.item_id, popularity.get(i.item_id, 0.0), reason, source)
            for i in ranked]


def _next(run: dict) -> None:
    run["step"] += 1
    run["started"] = None


def _first_channel(journey: Journey) -> str:
    """The channel a journey's rows name: where it first speaks to the customer."""
    first = next((s.message for s in journey.steps if s.message is not None), None)
    channels = channels_for(first) if first is not None else []
    return channels[0] if channels else "email"


def _may_reenter(journey: Journey, run: dict, now: datetime) -> bool:
    after = journey.reentry.after_days
    return after is not None and now.timestamp() >= (run["ended"] or 0) + after * 86400


def _event_came(journey: Journey, run: dict, live: CustomerState) -> bool:
    """Whether the event a run waits for has happened since the wait began."""
    if run["step"] >= len(journey.steps) or run["started"] is None:
        return False
    wait = journey.steps[run["step"]].wait
    return wait is not None and wait.until_event is not None and live.last_seen.get(
        wait.until_event.value, float("-inf")) >= run["started"]


def _decile(state: ServingState, customer: str) -> int | None:
    if state.propensity is None:
        return None
    found = state.propensity.deciles.get(customer)
    return None if found is None or pd.isna(found) else int(found)


def _next_local(now: datetime, at, zone: ZoneInfo) -> datetime:
    local = now.astimezone(zone)
    target = local.replace(hour=at.hour, minute=at.minute, second=0, microsecond=0)
    return target if target > local else target + timedelta(days=1)


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")

"""Behavioural triggers: rules from the policy file, evaluated as events arrive and on a timer.

A rule that holds for a customer picks a channel (the first in the rule's list the customer
consented to, outside quiet hours and within its cap), picks what to send with the same ranking
pipeline the storefront uses (leaving out what was shown on any channel within the cross-channel
memory), and writes one decision to the outbox. Each firing has a key naming the situation that
caused it (this customer's cart as of when it last grew, say); the store writes a key once, so a
firing is written exactly once however many workers or ticks evaluate it.

Every evaluation returns an :class:`Outcome` that says what happened and why, for logs, metrics
and ``nextbest triggers run``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from features.contracts import EventType, ItemKind
from features.experiments import Assignment
from features.exposures import Exposure
from features.online.state import CustomerState
from features.online.store import OnlineStore
from features.policy import (
    CartAbandoned,
    CategoryBrowsing,
    ContactPolicy,
    contact_verdict,
    recently_shown,
    verdict_rule,
)
from serving.exposure_log import decision_exposure, suppressed_exposure
from serving.pipeline import (
    Candidate,
    ServingState,
    rank_offers,
    rank_products,
    with_live_state,
)
from serving.schemas import RecommendRequest
from serving.situations import abandoned_cart, category_interest


@dataclass(frozen=True)
class Outcome:
    trigger: str
    customer_id: str
    status: str
    """fired | already_fired | cooling_down | waiting (quiet hours) | suppressed | expired"""
    detail: str = ""
    decision: dict | None = None


ACTION_KIND = {"offer": ItemKind.OFFER.value, "products": ItemKind.PRODUCT.value,
               "content": ItemKind.CONTENT.value}
SUPPRESSIONS_REMEMBERED = 100_000
"""Suppressed firings a worker remembers having logged, so that a cart re-evaluated every tick
is logged once, not once a minute (another worker or a restart may log it again: KPIs count
distinct exposure ids)."""


class TriggerEngine:
    def __init__(self, policy: ContactPolicy, store: OnlineStore,
                 serving_state: Callable[[], ServingState | None], max_category_share: float = 0.5,
                 record: Callable[[Exposure], None] | None = None,
                 assignment: Callable[[str, datetime], Assignment] | None = None) -> None:
        self.policy = policy
        self.store = store
        self.serving_state = serving_state
        self.max_category_share = max_category_share
        self.record = record
        """Where each message decided or suppressed goes (the exposure log); None: nowhere."""
        self.assignment = assignment
        """The customer's place in the experiments: the holdout, and variants that turn
        messages off, get none (recorded as suppressed, rule ``holdout`` or ``experiment``)."""
        self._suppressions_logged: dict[str, None] = {}

    @property
    def event_types(self) -> frozenset[str]:
        """Event types that can make an event-driven rule true; others need no evaluation."""
        if any(isinstance(r, CategoryBrowsing) for r in self.policy.triggers):
            return frozenset({EventType.VIEW.value, EventType.CLICK.value})
        return frozenset()

    # ------------------------------------------------------------------ entry points
    def on_events(self, customers: Iterable[str] | dict[str, CustomerState],
                  now: datetime) -> list[Outcome]:
        """Rules that events can make true at once (category browsing), for these customers —
        given as ids, or as the states their ingestion just left them in (saves a read)."""
        rules = [r for r in self.policy.triggers if isinstance(r, CategoryBrowsing)]
        if not rules:
            return []
        states = (customers if isinstance(customers, dict)
                  else self.store.customers(list(customers)))  # one read for the whole batch
        return [outcome for customer, live in states.items() for rule in rules
                if (outcome := self.evaluate(rule, customer, now, live)) is not None]

    def tick(self, now: datetime) -> list[Outcome]:
        """Rules that become true with time passing (cart abandonment)."""
        outcomes = []
        for rule in self.policy.triggers:
            if isinstance(rule, CartAbandoned):
                idle_since = now.timestamp() - rule.after_minutes * 60
                for customer in self.store.open_carts(idle_since):
                    outcome = self.evaluate(rule, customer, now)
                    if outcome is not None:
                        outcomes.append(outcome)
        return outcomes

    # ------------------------------------------------------------------ one rule, one customer
    def evaluate(self, rule: CartAbandoned | CategoryBrowsing, customer: str, now: datetime,
                 live: CustomerState | None = None) -> Outcome | None:
        """None when the rule does not hold for the customer; otherwise what was done.
        ``live`` is the customer's state if the caller read it already."""
        state = self.serving_state()
        if state is None:
            return None
        live = live if live is not None else self.store.customer(customer)
        situation = (abandoned_cart(rule.after_minutes, live, now)
                     if isinstance(rule, CartAbandoned)
                     else category_interest(rule.views, rule.within_days, live, state, now))
        if situation is None:
            return None
        key, started, reason, category = situation
        key = f"{rule.name}:{live.customer_id}:{key}"
        if now.timestamp() > started + rule.expires_after_hours * 3600:
            return Outcome(rule.name, customer, "expired", f"{reason}; too late to send")
        if key in live.fired:
            return Outcome(rule.name, customer, "already_fired", key)
        cooling = [t for k, t in live.fired.items() if k.startswith(rule.name + ":")
                   and t > now.timestamp() - rule.cooldown_hours * 3600]
        if cooling:
            return Outcome(rule.name, customer, "cooling_down",
                           f"fired {(now.timestamp() - max(cooling)) / 3600:.1f} h ago")
        placed = self.assignment(customer, now) if self.assignment is not None else None
        if placed is not None and not placed.messages:
            why = "holdout" if placed.held_out else "experiment"
            return self._suppressed(rule, customer, key, rule.channels[0].value, why,
                                    f"the customer is in the {why} "
                                    f"({', '.join(f'{e}={v}' for e, v in placed.labels().items())})",
                                    now, placed.labels())
        channel, verdicts = self._channel(rule, live, state, customer, now)
        if channel is None:
            # consent is checked before quiet hours: a quiet-hours verdict means "later"
            waiting = any(v.startswith("quiet hours") for v in verdicts.values())
            detail = "; ".join(f"{c}: {v}" for c, v in verdicts.items())
            if waiting:
                return Outcome(rule.name, customer, "waiting", detail)
            rules = "|".join(sorted({verdict_rule(v) for v in verdicts.values()}))
            return self._suppressed(rule, customer, key, rule.channels[0].value, rules, detail,
                                    now, placed.labels() if placed else None)
        chosen = self._payload(rule, live, state, customer, channel, category, now)
        if not chosen:
            return self._suppressed(rule, customer, key, channel, "nothing_to_send",
                                    "nothing eligible to send", now,
                                    placed.labels() if placed else None)
        kind = ACTION_KIND[rule.action]
        decision = {
            "decision_id": uuid.uuid4().hex, "firing_key": key, "trigger": rule.name,
            "customer_id": customer, "channel": channel, "action": rule.action,
            "items": [{"item_id": c.item_id, "title": state.shop.items[c.item_id].title,
                       "kind": kind, "score": round(c.score, 6), "reason": c.reason,
                       "source": c.source} for c in chosen],
            "reason": reason, "recommendation_id": uuid.uuid4().hex,
            "model_versions": dict(state.models.versions), "created_at": now.isoformat(),
            "experiments": placed.labels() if placed is not None else {}}
        if not self.store.record_decision(decision, now.timestamp()):
            return Outcome(rule.name, customer, "already_fired", key)
        if self.record is not None:
            self.record(decision_exposure(decision, now.timestamp()))
        return Outcome(rule.name, customer, "fired", reason, decision)

    def _suppressed(self, rule, customer: str, key: str, channel: str, rules: str, detail: str,
                    now: datetime, variants: dict[str, str] | None = None) -> Outcome:
        """Outcome and exposure of a message the policy stopped (logged once per firing)."""
        if self.record is not None and key not in self._suppressions_logged:
            self._suppressions_logged[key] = None
            if len(self._suppressions_logged) > SUPPRESSIONS_REMEMBERED:
                del self._suppressions_logged[next(iter(self._suppressions_logged))]
            exposure_id = uuid.uuid5(uuid.NAMESPACE_URL, f"suppressed:{key}").hex
            self.record(suppressed_exposure(exposure_id, customer, rule.name, channel, rules,
                                            detail, now.timestamp(), variants))
        return Outcome(rule.name, customer, "suppressed", detail)

    def _channel(self, rule, live: CustomerState, state: ServingState, customer: str,
                 now: datetime) -> tuple[str | None, dict[str, str]]:
        consents = state.shop.consents.get(customer, frozenset())
        verdicts = {}
        for channel in rule.channels:
            verdict = contact_verdict(self.policy, live, consents, channel.value, now)
            if verdict is None:
                return channel.value, verdicts
            verdicts[channel.value] = verdict
        return None, verdicts

    def _payload(self, rule, live: CustomerState, state: ServingState, customer: str,
                 channel: str, category: str | None, now: datetime) -> list[Candidate]:
        shown = recently_shown(self.policy, live, now)
        request = RecommendRequest(customer_id=customer, channel=channel,
                                   n={ItemKind(k): 0 for k in ItemKind}, exclude=sorted(shown))
        behaviour, request = with_live_state(state.shop.customer(customer), request, live)
        moment = pd.Timestamp(now)
        if rule.action == "offer":
            return rank_offers(state, request, behaviour, moment, rule.items)
        if rule.action == "products":
            return rank_products(state, request, behaviour, rule.items, self.max_category_share,
                                 live)
        return _content_about(state, category, shown | set(behaviour.recent_views), rule.items)


def _content_about(state: ServingState, category: str | None, exclude: set[str],
                   n: int) -> list[Candidate]:
    popularity = dict(state.shop.popular_content)
    articles = [i for i in state.shop.content_by_top.get(category or "", [])
                if i.item_id not in exclude]
    ranked = sorted(articles, key=lambda i: -popularity.get(i.item_id, 0.0))[:n]
    return [Candidate(i.item_id, popularity.get(i.item_id, 0.0), f"about {category}, which you "
                      "have been browsing", "category") for i in ranked]


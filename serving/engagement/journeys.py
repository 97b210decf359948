"""Journeys as data: multi-step, cross-channel sequences a marketer declares in a YAML file.

A journey says who enters (``entry``), what happens to them step by step (``steps``), what ends
it early as a success (``goal``), how often a customer may go through it again (``reentry``),
which journey wins when two want the same customer's attention (``priority``), and what share
of entrants is held out to measure it (``holdout``). The engine that runs them is
``serving.engagement.scheduler``; the per-customer progress it keeps is ``features.online.state.JourneyRun``.

Steps run in order unless a ``branch`` jumps (``goto`` names a step) or an ``exit`` ends the
journey; running past the last step ends it too. Step kinds:

* ``wait``: a duration (``minutes``/``hours``/``days``), or ``until_event`` (an event type,
  with ``timeout_hours``: the journey moves on at whichever comes first), or ``until_local``:
  the next time the customer's local clock shows ``HH:MM``;
* ``branch``: the first case whose condition holds jumps to its ``goto``; none: the next step.
  Conditions: ``segment_in``, ``propensity_decile`` (``[low, high]``; 1 is the tenth most
  likely to buy, as in the propensity export), ``event_since_entry`` (an event type),
  ``attribute`` (``{name: value}`` set by an ``update`` step), ``engaged`` (a channel the
  customer opened or clicked a message on);
* ``message``: a ``channel`` (or ``best``: the customer's most engaged channel), what to
  ``send`` (``offer``, ``products`` or ``content`` from the ranking pipeline, or the ``cart``'s
  own products), how many
  ``items``, and the ``reason`` shown with it; the contact policy (consent, quiet hours, caps)
  applies, and a message it stops is recorded as suppressed;
* ``update``: set journey attributes on the customer (``{vip: "yes"}``), for later branches;
* ``exit``: end the journey here.

The shipped journeys (``journeys.default.yaml``) work on the built-in shop: cart recovery, VIP
early access, win-back for lapsing customers, and post-purchase cross-sell.
"""

from __future__ import annotations

from datetime import time
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from features.config_files import file_in_force, load_model, unique_names
from features.contracts import CONTACT_CHANNELS, EventType
from features.settings import Settings
from serving.engagement.policy import CartAbandoned, CategoryBrowsing, load_policy, policy_path
from training.journey_report import JourneyOutline

DEFAULT_JOURNEYS = Path(__file__).with_name("journeys.default.yaml")
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------- entry
class Entry(_Strict):
    """Who enters, and when."""

    when: Literal["event", "cart_abandoned", "category_browsing", "first_purchase", "lapsing"]
    event: EventType | None = Field(None, description="when: event — the event type that "
                                                      "enters the customer.")
    after_minutes: float = Field(30.0, gt=0, description="cart_abandoned: the cart last grew "
                                                         "this long ago, nothing bought since.")
    views: int = Field(3, ge=1, description="category_browsing: views in one top-level "
                                            "category ...")
    within_days: float = Field(7.0, gt=0, description="... this recently, nothing bought in it.")
    days_without_purchase: float = Field(60.0, gt=0, description="lapsing: no purchase for this "
                                                                 "long (after at least one).")
    segments: list[str] = Field(default_factory=list, description="Only customers of these "
                                                                  "segments; empty: everyone.")
    propensity_deciles: tuple[int, int] | None = Field(
        None, description="Only customers whose purchase-propensity decile (1..10, 1 the tenth "
                          "most likely to buy, as the propensity export has it) is within "
                          "[low, high].")
    expires_after_hours: float = Field(24.0, gt=0, description="A situation older than this "
                                                               "does not enter anyone.")

    @model_validator(mode="after")
    def _event_named_when_needed(self) -> Entry:
        if self.when == "event" and self.event is None:
            raise ValueError("when: event needs 'event', the event type that enters a customer "
                             f"({', '.join(e.value for e in EventType)})")
        if self.propensity_deciles is not None:
            low, high = self.propensity_deciles
            if not 1 <= low <= high <= 10:
                raise ValueError(f"propensity_deciles must be [low, high] with 1 <= low <= high "
                                 f"<= 10, got [{low}, {high}]")
        return self


class Reentry(_Strict):
    after_days: float | None = Field(7.0, ge=0, description="A customer may enter again this "
                                     "long after their last run ended; null: never again.")


class Goal(_Strict):
    event: EventType = Field(EventType.PURCHASE, description="Reaching it ends the journey as "
                                                             "converted.")
    within_days: float | None = Field(None, gt=0, le=365, description="Conversion deadline: "
                                      "the report counts a run as converted when its customer "
                                      "reaches the goal this many days after entering at most "
                                      "(default: NEXTBEST_PURCHASE_WINDOW_DAYS).")


# ---------------------------------------------------------------------------- steps
class Wait(_Strict):
    minutes: float = Field(0, ge=0)
    hours: float = Field(0, ge=0)
    days: float = Field(0, ge=0)
    until_event: EventType | None = None
    timeout_hours: float | None = Field(None, gt=0)
    until_local: time | None = Field(None, description="The next time the customer's local "
                                                       "clock shows this, e.g. '09:00'.")

    @model_validator(mode="after")
    def _one_kind_of_wait(self) -> Wait:
        duration = self.minutes or self.hours or self.days
        kinds = [name for name, used in (("a duration", duration),
                                         ("until_event", self.until_event is not None),
                                         ("until_local", self.until_local is not None)) if used]
        if len(kinds) != 1:
            raise ValueError("a wait is one of: a duration (minutes, hours, days), until_event "
                             f"(with timeout_hours) or until_local; this one has "
                             f"{' and '.join(kinds) or 'none'}")
        if self.until_event is not None and self.timeout_hours is None:
            raise ValueError("until_event needs timeout_hours: how long to wait at most")
        return self

    @property
    def seconds(self) -> float:
        return self.minutes * 60 + self.hours * 3600 + self.days * 86400


class Condition(_Strict):
    segment_in: list[str] | None = None
    propensity_decile: tuple[int, int] | None = None
    event_since_entry: EventType | None = None
    attribute: dict[str, str] | None = None
    engaged: Literal["email", "sms", "push"] | None = Field(
        None, description="The customer opened or clicked a message on this channel in the "
                          "last 30 days.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Condition:
        named = [k for k, v in self.__dict__.items() if v is not None]
        if len(named) != 1:
            raise ValueError("a condition names exactly one of segment_in, propensity_decile, "
                             f"event_since_entry, attribute, engaged; got {named or 'none'}")
        return self


class Case(_Strict):
    if_: Condition = Field(alias="if")
    goto: Name


CONTACT = tuple(c.value for c in CONTACT_CHANNELS)


class Message(_Strict):
    channel: str | list[str] = Field(
        description="A contact channel; a list of them, the first one the policy allows is used; "
                    "or best: the ones this customer engages with, most recent first.")
    send: Literal["offer", "products", "content", "cart"] = Field(
        description="offer, products or content from the ranking pipeline; cart: the products "
                    "in the customer's cart, latest added first.")
    items: int = Field(3, ge=1, le=20)
    reason: str | None = Field(None, max_length=200, description="Said with the message; "
                               "default: the journey's entry reason.")

    @field_validator("channel", mode="before")
    @classmethod
    def _contact_channels(cls, value):
        """One error in the file's words, not one per branch of the type."""
        named = value if isinstance(value, list) else [value]
        wrong = [v for v in named if v not in CONTACT and not (v == "best" and value == "best")]
        if wrong or not named:
            raise ValueError(f"channel must be one of {', '.join(CONTACT)} or best, or a list "
                             f"of {', '.join(CONTACT)}; got {value!r}")
        return value


class Step(_Strict):
    name: Name | None = None
    wait: Wait | None = None
    branch: list[Case] | None = None
    message: Message | None = None
    update: dict[str, str] | None = None
    exit: bool | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        kinds = [k for k in ("wait", "branch", "message", "update", "exit")
                 if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a step is exactly one of wait, branch, message, update, exit; "
                             f"this one has {', '.join(kinds) or 'none'}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("wait", "branch", "message", "update", "exit")
                    if getattr(self, k) is not None)


# ---------------------------------------------------------------------------- journeys
class Journey(_Strict):
    name: Name
    priority: int = Field(0, description="When journeys want the same customer in the same "
                                         "slot, the higher priority sends; the other is "
                                         "recorded as suppressed (rule: priority).")
    holdout: float = Field(0.0, ge=0, lt=1, description="Share of entrants held out: they enter "
                           "(and are counted) but get no message, to measure the journey's lift.")
    entry: Entry
    reentry: Reentry = Field(default_factory=Reentry)
    goal: Goal | None = Field(default_factory=Goal)
    steps: list[Step] = Field(min_length=1)

    @field_validator("steps")
    @classmethod
    def _named_steps(cls, steps: list[Step]) -> list[Step]:
        """Every step gets a name (``step<N>``, from 1, when the file gives none); names are
        unique and every goto names one."""
        named = [s if s.name else s.model_copy(update={"name": f"step{i}"})
                 for i, s in enumerate(steps, 1)]
        names = unique_names([s.name for s in named], "step")
        for step in named:
            for case in step.branch or []:
                if case.goto not in names:
                    raise ValueError(f"step {step.name!r}: goto {case.goto!r} names no step; the "
                                     f"steps are {', '.join(names)}")
        return named

    def index(self, step: str) -> int:
        return next(i for i, s in enumerate(self.steps) if s.name == step)

    @property
    def channels(self) -> set[str]:
        return {s.message.channel for s in self.steps if s.message is not None}

    def outline(self) -> JourneyOutline:
        """What its report reads (``training.journey_report``)."""
        return JourneyOutline(self.name, self.goal.event if self.goal else EventType.PURCHASE,
                              tuple(s.name for s in self.steps if s.message is not None),
                              self.holdout, self.goal.within_days if self.goal else None)


class JourneyPlan(_Strict):
    journeys: list[Journey] = Field(default_factory=list)

    @field_validator("journeys")
    @classmethod
    def _unique(cls, value: list[Journey]) -> list[Journey]:
        unique_names([j.name for j in value], "journey")
        return value

    def journey(self, name: str) -> Journey:
        for journey in self.journeys:
            if journey.name == name:
                return journey
        raise ValueError(f"no journey {name!r}; the journeys file has: "
                         f"{', '.join(j.name for j in self.journeys) or 'none'} "
                         "('nextbest journeys show')")

    @property
    def by_priority(self) -> list[Journey]:
        """Highest priority first; ties in file order."""
        return sorted(self.journeys, key=lambda j: -j.priority)


class JourneysError(ValueError):
    """The journeys file is missing or wrong; the message names the file, journey, step and
    field."""


def journeys_path(settings: Settings) -> Path:
    return file_in_force(settings.journeys_file, settings.data_dir, "journeys.yaml",
                         DEFAULT_JOURNEYS)


def load_journeys(path: Path) -> JourneyPlan:
    return load_model(path, JourneyPlan, JourneysError, "journeys file")


def channels_for(message: Message) -> list[str]:
    """The contact channels a message step may use, in the order to try (before ``best``
    reorders them by the customer's engagement)."""
    if isinstance(message.channel, list):
        return list(message.channel)
    if message.channel != "best":
        return [message.channel]
    return [c.value for c in CONTACT_CHANNELS]


def from_trigger(rule: CartAbandoned | CategoryBrowsing) -> Journey:
    """A contact policy's trigger rule as the one-step journey it is: enter on the situation,
    send once, enter again after the cooldown."""
    entry = {"when": rule.when, "expires_after_hours": rule.expires_after_hours}
    if isinstance(rule, CartAbandoned):
        entry["after_minutes"] = rule.after_minutes
    else:
        entry.update(views=rule.views, within_days=rule.within_days)
    return Journey.model_validate({
        "name": rule.name, "entry": entry, "goal": None,
        "reentry": {"after_days": rule.cooldown_hours / 24},
        "steps": [{"name": "send", "message": {
            "channel": [c.value for c in rule.channels], "send": rule.action,
            "items": rule.items}}]})


def journeys_in_force(settings: Settings) -> JourneyPlan:
    """The journeys file's journeys and the contact policy's trigger rules (one-step journeys):
    what the scheduler runs. A trigger named like a journey is an error that names both files."""
    plan = load_journeys(journeys_path(settings))
    path = policy_path(settings)
    triggers = [from_trigger(rule) for rule in load_policy(path).triggers]
    clash = sorted({j.name for j in plan.journeys} & {t.name for t in triggers})
    if clash:
        raise JourneysError(f"{path} has trigger(s) named like journeys of "
                            f"{journeys_path(settings)}: {', '.join(clash)}; rename one")
    return JourneyPlan(journeys=[*plan.journeys, *triggers])

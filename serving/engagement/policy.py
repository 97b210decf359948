"""Contact policy and trigger rules: what marketers set in a YAML file, checked as data.

One policy is shared by the journeys and the service: frequency caps per channel and window,
daily caps and quiet hours on each customer's own clock, consent per channel, fatigue, and
cross-channel memory (an offer shown in the app is not pushed again by email for a while).
:func:`contact_verdict` answers "may we send this customer this item on this channel now?" with
the rule that says no.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from features.config_files import file_in_force, load_model, unique_names
from features.contracts import CONTACT_CHANNELS, Channel
from features.online.state import CustomerState
from features.settings import Settings

DEFAULT_POLICY = Path(__file__).with_name("policy.default.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QuietHours(_Strict):
    start: time = Field(description="Local time quiet hours begin, e.g. '21:00'.")
    end: time = Field(description="Local time they end; may be past midnight, e.g. '08:00'.")
    timezone: str = Field("UTC", description="IANA zone the hours are in, e.g. 'Europe/London'.")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as "
                             "'Europe/London' or 'UTC'") from None
        return value

    def contains(self, moment: datetime, zone: str | None = None) -> bool:
        """Whether ``moment`` falls in the quiet hours on the customer's clock (``zone``, from
        their profile), else on the policy's."""
        local = moment.astimezone(ZoneInfo(zone or self.timezone)).time()
        if self.start <= self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end  # wraps past midnight


class Cap(_Strict):
    max: int = Field(ge=0, description="Most messages on this channel in the window.")
    per_days: float = Field(gt=0, description="Length of the sliding window, in days.")


class _Trigger(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    action: Literal["offer", "content", "products"] = Field(
        description="What to send: the next best offer, content, or products.")
    channels: list[Channel] = Field(min_length=1, description="Preferred first; contact channels only.")
    expires_after_hours: float = Field(24.0, gt=0, description="Too late to send after this long.")
    cooldown_hours: float = Field(72.0, ge=0, description="At most one firing per customer this often.")
    items: int = Field(3, ge=1, le=20, description="How many items or offers the message carries.")

    @field_validator("channels")
    @classmethod
    def _contact_channels(cls, value: list[Channel]) -> list[Channel]:
        wrong = [c.value for c in value if c not in CONTACT_CHANNELS]
        if wrong:
            raise ValueError(f"{', '.join(wrong)} cannot carry a message; use "
                             f"{', '.join(c.value for c in CONTACT_CHANNELS)}")
        return value


class CartAbandoned(_Trigger):
    """A cart that last grew ``after_minutes`` ago with nothing bought since."""

    when: Literal["cart_abandoned"]
    after_minutes: float = Field(30.0, gt=0)


class CategoryBrowsing(_Trigger):
    """``views`` views in one top-level category within ``within_days``, no purchase in it since."""

    when: Literal["category_browsing"]
    views: int = Field(3, ge=1)
    within_days: float = Field(7.0, gt=0)


Trigger = Annotated[CartAbandoned | CategoryBrowsing, Field(discriminator="when")]


class Fatigue(_Strict):
    """A customer who stops reacting on a channel is rested on it: after ``after_unanswered``
    messages in a row on the channel with no event from it since (no open, no click), at most
    one more per ``rest_days``; any event from the channel restores the usual caps."""

    after_unanswered: int = Field(3, ge=1, description="Unanswered messages in a row on a "
                                                       "channel before it is rested.")
    rest_days: float = Field(14.0, gt=0, description="While rested, at most one message per "
                                                     "this many days on that channel.")


ALL_CHANNELS = "all"
"""The ``daily_caps`` key that counts messages on every channel together."""


class ContactPolicy(_Strict):
    quiet_hours: QuietHours | None = None
    caps: dict[Channel, Cap] = Field(default_factory=dict)
    daily_caps: dict[Channel | Literal["all"], int] = Field(
        default_factory=dict, description="Most messages per calendar day on the customer's own "
        "clock (the customers table's timezone, else the quiet hours' zone, else UTC), per "
        "channel, or on all channels together ('all').")
    fatigue: Fatigue | None = None
    cross_channel_memory_hours: float = Field(72.0, ge=0)
    triggers: list[Trigger] = Field(default_factory=list)

    @field_validator("daily_caps")
    @classmethod
    def _contact_channels(cls, value: dict) -> dict:
        wrong = [str(getattr(c, "value", c)) for c, most in value.items()
                 if c != ALL_CHANNELS and c not in CONTACT_CHANNELS]
        if wrong:
            raise ValueError(f"{', '.join(wrong)} cannot carry a message; cap "
                             f"{', '.join(c.value for c in CONTACT_CHANNELS)} or all")
        negative = [f"{getattr(c, 'value', c)}: {most}" for c, most in value.items() if most < 0]
        if negative:
            raise ValueError(f"{', '.join(negative)}: a daily cap is a count of messages, 0 or more")
        return value

    def zone_of(self, zone: str | None) -> str:
        """The clock a customer's day and quiet hours run on: their own, else the policy's."""
        return zone or (self.quiet_hours.timezone if self.quiet_hours else "UTC")

    @field_validator("triggers")
    @classmethod
    def _unique_names(cls, value: list) -> list:
        unique_names([t.name for t in value], "trigger")
        return value


class PolicyError(ValueError):
    """The policy file is missing or wrong; the message names the file and the field."""


def policy_path(settings: Settings) -> Path:
    return file_in_force(settings.policy_file, settings.data_dir, "policy.yaml", DEFAULT_POLICY)


def load_policy(path: Path) -> ContactPolicy:
    return load_model(path, ContactPolicy, PolicyError, "policy file")


def consent_in_force(state: CustomerState, consents: frozenset[str], channel: str
                     ) -> tuple[bool, float | None]:
    """Whether the customer agreed to be contacted on ``channel``, and since when (POSIX
    seconds): the last consent they sent (``state.consent``) wins over the customers table's
    ``consents``, which carry no time (None)."""
    live = state.consent.get(channel)
    return live if live is not None else (channel in consents, None)


def contact_verdict(policy: ContactPolicy, state: CustomerState, consents: frozenset[str],
                    channel: str, now: datetime, zone: str | None = None) -> str | None:
    """Why this customer may not be contacted on ``channel`` now, or None if they may.

    ``consents`` are the channels the loaded customers table allows; a consent the shop sent
    since (``state.consent``) wins over it. ``zone`` is the customer's time zone, if known."""
    granted, when = consent_in_force(state, consents, channel)
    if not granted:
        return f"consent for {channel} withdrawn" if when is not None else f"no consent for {channel}"
    if policy.quiet_hours is not None and policy.quiet_hours.contains(now, zone):
        q = policy.quiet_hours
        return f"quiet hours ({q.start:%H:%M}-{q.end:%H:%M} {zone or q.timezone})"
    cap = policy.caps.get(Channel(channel))
    if cap is not None:
        sent = state.contacts_since(channel, now.timestamp() - cap.per_days * 86400)
        if sent >= cap.max:
            return f"cap reached: {sent} {channel} message(s) in {cap.per_days:g} days (max {cap.max})"
    daily = _daily_cap(policy, state, channel, now, zone)
    if daily is not None:
        return daily
    if policy.fatigue is not None:
        return _fatigued(policy.fatigue, state, channel, now)
    return None


def local_midnight(now: datetime, zone: str) -> datetime:
    """The start of ``now``'s calendar day in ``zone``."""
    tz = ZoneInfo(zone)
    return datetime.combine(now.astimezone(tz).date(), time(0), tzinfo=tz)


def _daily_cap(policy: ContactPolicy, state: CustomerState, channel: str, now: datetime,
               zone: str | None) -> str | None:
    if not policy.daily_caps:
        return None
    local = policy.zone_of(zone)
    midnight = local_midnight(now, local)
    since = midnight.timestamp()
    for key in (channel, ALL_CHANNELS):
        most = policy.daily_caps.get(key)
        if most is None:
            continue
        sent = sum(1 for c, _, when in state.contacts
                   if when >= since and (key == ALL_CHANNELS or c == channel))
        if sent >= most:
            where = "message(s) on all channels" if key == ALL_CHANNELS else f"{channel} message(s)"
            return (f"cap reached: {sent} {where} today (max {most} a day, {local}); "
                    f"the next day starts {midnight + timedelta(days=1):%Y-%m-%d %H:%M %Z}")
    return None


def unanswered(state: CustomerState, channel: str) -> list[float]:
    """When each message on ``channel`` since the customer's last event from it was sent:
    the messages they have not reacted to, in a row."""
    reacted = state.engaged.get(channel, float("-inf"))
    return [when for sent_on, _, when in state.contacts if sent_on == channel and when > reacted]


def _fatigued(rule: Fatigue, state: CustomerState, channel: str, now: datetime) -> str | None:
    ignored = unanswered(state, channel)
    if len(ignored) < rule.after_unanswered:
        return None
    rested_until = max(ignored) + rule.rest_days * 86400
    if now.timestamp() >= rested_until:
        return None
    return (f"fatigue: {len(ignored)} {channel} message(s) in a row without a reaction; "
            f"resting {channel} until {datetime.fromtimestamp(rested_until, UTC):%Y-%m-%d %H:%M} UTC")


def verdict_rule(verdict: str) -> str:
    """The policy rule a ``contact_verdict`` names: consent, quiet_hours, cap or fatigue (what the
    exposure log records for a suppressed message)."""
    if verdict.startswith("quiet hours"):
        return "quiet_hours"
    if verdict.startswith("cap reached"):
        return "cap"
    if verdict.startswith("fatigue"):
        return "fatigue"
    return "consent"


def recently_shown(policy: ContactPolicy, state: CustomerState, now: datetime) -> set[str]:
    """Items and offers shown or sent on any channel within the cross-channel memory."""
    since = now.timestamp() - policy.cross_channel_memory_hours * 3600
    return {item for item, (_, when) in state.shown.items() if when >= since}

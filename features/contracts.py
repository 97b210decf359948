"""The data contracts: what an event, a catalog item and a customer look like.

Each table is declared once, as data, so that validation, storage, the CLI's help and the docs
all read the same definition. Values that have a fixed vocabulary are ``StrEnum``s so that code
can name them (``EventType.PURCHASE``) and files can spell them (``purchase``).

Lists inside one cell (an offer's eligible segments, say) are written ``a|b|c`` in every format,
so that a CSV file and a Parquet file of the same table hold the same text.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import pyarrow as pa

ColumnType = Literal["string", "timestamp", "int", "float", "bool"]

LIST_SEPARATOR = "|"


class EventType(StrEnum):
    """What a customer did. The first five are the shopping funnel; ``return`` takes back a
    purchased line (a return or a cancellation: its revenue is reversed); the rest feed
    attribution."""

    VIEW = "view"
    CLICK = "click"
    ADD_TO_CART = "add_to_cart"
    REMOVE_FROM_CART = "remove_from_cart"
    PURCHASE = "purchase"
    RETURN = "return"
    IMPRESSION = "impression"
    OFFER_SHOWN = "offer_shown"
    OFFER_REDEEMED = "offer_redeemed"


class Channel(StrEnum):
    """Where an event happened, or where a customer can be reached."""

    WEB = "web"
    APP = "app"
    EMAIL = "email"
    SMS = "sms"
    PUSH = "push"
    STORE = "store"


CONTACT_CHANNELS: tuple[Channel, ...] = (Channel.EMAIL, Channel.SMS, Channel.PUSH)
"""Channels a shop pushes messages through, and so needs the customer's consent for."""


class ItemKind(StrEnum):
    """Everything the storefront can recommend is an item of one of these kinds."""

    PRODUCT = "product"
    CONTENT = "content"
    OFFER = "offer"


class LoyaltyTier(StrEnum):
    NONE = "none"
    BRONZE = "bronze"
    SILVER = "silver"
    GOLD = "gold"


@dataclass(frozen=True)
class Column:
    """One column of a table contract.

    ``required`` columns must be present in every file; optional ones are filled with
    ``default`` when absent. ``allowed`` restricts a string (or, with ``is_list``, every element
    of a ``|``-separated list) to a vocabulary. A timestamp ``in_event_window`` must lie in the
    times events may carry (``features.event_time``): not in the future, not before any shop.
    A ``time_zone`` string must name an IANA zone.
    """

    name: str
    type: ColumnType
    description: str
    required: bool = True
    nullable: bool = False
    allowed: tuple[str, ...] | None = None
    is_list: bool = False
    min_value: float | None = None
    default: object = None
    in_event_window: bool = False
    time_zone: bool = False
    """The value must be an IANA time zone name (``zoneinfo``), such as Europe/London."""


@dataclass(frozen=True)
class TableContract:
    """A table: its columns, its key, and the column that keeps columns the contract lacks."""

    name: str
    key: str
    description: str
    columns: tuple[Column, ...]
    extras_column: str

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"table '{self.name}' has no column '{name}'")

    @property
    def column_names(self) -> list[str]:
        return [column.name for column in self.columns]


def _values(enum: type[StrEnum]) -> tuple[str, ...]:
    return tuple(member.value for member in enum)


EVENTS = TableContract(
    name="events",
    key="event_id",
    description="Everything customers did, one row per event, append-only.",
    extras_column="context",
    columns=(
        Column("event_id", "string", "Unique id of the event; re-sending an event is harmless."),
        Column("customer_id", "string", "Who did it."),
        Column("item_id", "string", "Which product, content item or offer it was about."),
        Column("event_type", "string", "What happened.", allowed=_values(EventType)),
        Column(
            "timestamp",
            "timestamp",
            "When it happened: timezone-aware, stored in UTC (e.g. 2024-05-01T12:00:00Z); "
            "not in the future.",
            in_event_window=True,
        ),
        Column("channel", "string", "Where it happened.", allowed=_values(Channel)),
        Column(
            "session_id",
            "string",
            "The visit it belongs to; empty for events outside a visit (an email open, say).",
            required=False,
            nullable=True,
        ),
        Column(
            "quantity",
            "int",
            "Units involved (purchase, cart); 1 for everything else.",
            required=False,
            min_value=1,
            default=1,
        ),
        Column(
            "price",
            "float",
            "Unit price paid or shown, in the shop's currency; empty if not known.",
            required=False,
            nullable=True,
            min_value=0,
        ),
        Column(
            "recommendation_id",
            "string",
            "The recommendation_id of the answer the customer acted on (a click on a shelf, "
            "say); attributes the event to that answer directly.",
            required=False,
            nullable=True,
        ),
        Column(
            "decision_id",
            "string",
            "The decision_id of the message the customer acted on (a link in an email).",
            required=False,
            nullable=True,
        ),
        Column(
            "context",
            "string",
            "Free-form JSON object: page, referrer, rating, and any column the contract lacks.",
            required=False,
            nullable=True,
        ),
    ),
)

ITEMS = TableContract(
    name="items",
    key="item_id",
    description="The catalog: products, content (articles, guides, videos) and offers.",
    extras_column="attributes",
    columns=(
        Column("item_id", "string", "Unique id of the item."),
        Column("kind", "string", "product, content or offer.", allowed=_values(ItemKind)),
        Column("title", "string", "Name shown to customers."),
        Column("description", "string", "Longer text; feeds content similarity.", required=False,
               nullable=True),
        Column("category", "string",
               "Category path from general to specific, e.g. 'home/kitchen/knives'.",
               required=False, default="uncategorized"),
        Column("brand", "string", "Brand or publisher.", required=False, nullable=True),
        Column("price", "float", "Current unit price; empty for content and offers.",
               required=False, nullable=True, min_value=0),
        Column("stock", "int", "Units in stock; empty when the shop does not track stock.",
               required=False, nullable=True, min_value=0),
        Column("in_stock", "bool", "Whether it can be bought now.", required=False, default=True),
        Column("repeatable", "bool",
               "Whether customers buy it again (consumables); non-repeatable items are not "
               "recommended to someone who already bought them.", required=False, default=False),
        Column("created_at", "timestamp", "When the item entered the catalog.", required=False,
               nullable=True),
        Column("offer_value", "float", "Offers: what the offer is worth to the customer.",
               required=False, nullable=True, min_value=0),
        Column("valid_from", "timestamp", "Offers: first moment it can be used.", required=False,
               nullable=True),
        Column("valid_to", "timestamp", "Offers: last moment it can be used.", required=False,
               nullable=True),
        Column("eligible_segments", "string",
               "Offers: segments that may get it, 'a|b'; empty means everyone.",
               required=False, nullable=True, is_list=True),
        Column("min_basket", "float", "Offers: minimum basket value to redeem it.",
               required=False, nullable=True, min_value=0),
        Column("eligible_channels", "string",
               "Offers: channels it may be shown on, 'web|app'; empty means all.",
               required=False, nullable=True, is_list=True, allowed=_values(Channel)),
        Column("redemption_limit", "int", "Offers: how many times one customer may redeem it.",
               required=False, nullable=True, min_value=1),
        Column("attributes", "string", "JSON object of any column the contract lacks.",
               required=False, nullable=True),
    ),
)

CUSTOMERS = TableContract(
    name="customers",
    key="customer_id",
    description="Who the shop's customers are and how they may be contacted.",
    extras_column="attributes",
    columns=(
        Column("customer_id", "string", "Unique id of the customer."),
        Column("first_seen", "timestamp", "When the customer first appeared (UTC); not in the "
               "future.", in_event_window=True),
        Column("segment", "string", "Marketing segment, as the shop names them.",
               required=False, default="default"),
        Column("loyalty_tier", "string", "Loyalty programme tier.", required=False,
               default=LoyaltyTier.NONE.value, allowed=_values(LoyaltyTier)),
        Column("region", "string", "Where the customer lives (country, state, ...).",
               required=False, nullable=True),
        Column("timezone", "string", "The customer's IANA time zone, e.g. Europe/London: "
               "journeys keep quiet hours and local-time waits in it; empty: the contact "
               "policy's zone.", required=False, nullable=True, time_zone=True),
        *(
            Column(f"consent_{channel.value}", "bool",
                   f"Whether the customer agreed to be contacted by {channel.value}.",
                   required=False, default=False)
            for channel in CONTACT_CHANNELS
        ),
        Column("attributes", "string", "JSON object of any column the contract lacks.",
               required=False, nullable=True),
    ),
)

class ExposureType(StrEnum):
    """What put items in front of a customer: a ``recommend`` answer, or a message a journey
    decided; or a consent the customer gave or withdrew, logged beside them so that the opt-outs
    what nextbest showed and sent may have caused can be counted (experiments' opt-out
    guardrail)."""

    RECOMMENDATION = "recommendation"
    MESSAGE = "message"
    CONSENT = "consent"
    JOURNEY = "journey"
    """A customer's run through a journey: entered, converted, exited or finished (the
    journey report's entries and funnel)."""


class ExposureStatus(StrEnum):
    SHOWN = "shown"
    """A recommend answer was returned (shown, as far as nextbest can know)."""
    SENT = "sent"
    """A message was decided and written to the outbox for the shop's sender."""
    SUPPRESSED = "suppressed"
    """A journey wanted to send but a rule stopped the message (``rule`` says which)."""
    FAILED = "failed"
    """The ranking failed for this request (the caller got a 5xx): what the error-rate
    guardrail counts."""
    GRANTED = "granted"
    """A consent row: the customer agreed to be contacted on ``channel``."""
    WITHDRAWN = "withdrawn"
    """A consent row: the customer withdrew consent on ``channel`` (an opt-out)."""
    ENTERED = "entered"
    CONVERTED = "converted"
    """A journey row: the run reached its goal."""
    EXITED = "exited"
    FINISHED = "finished"
    """A journey row: the run went past its last step."""


EXPOSURES = TableContract(
    name="exposures",
    key="exposure_id",
    description="What nextbest put in front of each customer: one row per item of each answer or "
                "message (one row with no item when there was none), and one row per consent "
                "given or withdrawn; written by nextbest itself.",
    extras_column="context",
    columns=(
        Column("exposure_id", "string", "The answer's recommendation_id, or the message's "
               "decision_id: what outcome events carry to be attributed directly."),
        Column("exposure_type", "string", "recommendation, message, consent (a consent "
               "given or withdrawn through POST /consent), or journey (a customer entering, "
               "converting in, exiting or finishing a journey).",
               allowed=_values(ExposureType)),
        Column("customer_id", "string", "Who it was shown or sent to."),
        Column("timestamp", "timestamp", "When it was answered or decided (UTC)."),
        Column("channel", "string", "Where it was shown or sent (for consent: the contact "
               "channel).", allowed=_values(Channel)),
        Column("placement", "string", "The page or slot that asked (the request's placement, "
               "else its page_type, else 'default'); for messages and journey rows the journey's "
               "name; 'consent' for consent rows."),
        Column("status", "string", "shown, sent, suppressed, or failed (the ranking raised; the "
               "caller got an error); granted or withdrawn for consent rows; entered, converted, "
               "exited or finished for journey rows.",
               allowed=_values(ExposureStatus)),
        Column("rule", "string", "Suppressed messages: the rule that stopped it (consent, "
               "quiet_hours, cap, holdout, experiment, priority, nothing_to_send).",
               required=False, nullable=True),
        Column("model_versions", "string", "Registered model versions that answered, "
               "'name=version' joined by '|', e.g. 'recommender=3|propensity=2'.",
               required=False, nullable=True),
        Column("variants", "string", "Experiments the customer was in and their variant, "
               "'experiment=variant' joined by '|'; 'holdout=holdout' for the global holdout; "
               "'journey.<name>=treatment' or '=holdout' on a journey's rows; empty when in "
               "none.", required=False, nullable=True),
        Column("item_kind", "string", "product, content or offer; empty on a row with no item.",
               required=False, nullable=True, allowed=_values(ItemKind)),
        Column("item_id", "string", "The item shown or sent; empty on a row with no item.",
               required=False, nullable=True),
        Column("position", "int", "Its place in its kind's list, from 1.", required=False,
               nullable=True, min_value=1),
        Column("source", "string", "What placed it: for_you, similar, new, popular (products); "
               "context, category, popular (content); expected_value (offers); messages' items "
               "the same way, and cart for a journey's reminder of the cart.", required=False,
               nullable=True),
        Column("latency_ms", "float", "How long nextbest took to rank the answer, in "
               "milliseconds (recommend answers; experiments' latency guardrail).",
               required=False, nullable=True, min_value=0),
        Column("team", "string", "In an interleaving experiment, the ranker that placed the "
               "item (A or B, the experiment's first and second variant).", required=False,
               nullable=True, allowed=("A", "B")),
        Column("context", "string", "JSON object: degraded answers say why, and anything else "
               "worth keeping.", required=False, nullable=True),
    ),
)

CONTRACTS: dict[str, TableContract] = {c.name: c for c in (EVENTS, ITEMS, CUSTOMERS)}
"""The tables a shop sends (imported from files or posted); ``EXPOSURES`` is nextbest's own."""


def contract_for(table: str) -> TableContract:
    """The contract named ``table``, or an error that lists the ones that exist."""
    try:
        return CONTRACTS[table]
    except KeyError:
        raise ValueError(
            f"unknown table '{table}'; expected one of: {', '.join(CONTRACTS)}"
        ) from None


_ARROW_TYPES = {
    "string": pa.string(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
}


def arrow_schema(contract: TableContract) -> pa.Schema:
    """The Parquet schema of a contract table, so every file of it has identical column types."""
    return pa.schema(
        [pa.field(c.name, _ARROW_TYPES[c.type], nullable=c.nullable or not c.required)
         for c in contract.columns]
    )

"""The service's HTTP contract: every request and every answer, as typed models.

Requests are validated against these models by BentoML before any code of ours runs, strictly
where a lax reading would accept nonsense: numbers and booleans must be JSON numbers and
booleans (``"n": {"product": "5"}`` or ``true`` is a 400, not 5 or 1), and unknown fields are
refused. Answers
are written by the endpoints themselves (orjson, for speed) in exactly these shapes: the OpenAPI
spec (``serving.openapi``) is generated from these models, and a test validates real answers of
every endpoint against that spec. Every error, whatever its status, is an :class:`ErrorAnswer`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    create_model,
    field_validator,
    model_validator,
)

from features.contracts import CONTACT_CHANNELS, EVENTS, Channel, ItemKind
from features.event_time import TimeWindow

MAX_N = 100
DEFAULT_N: dict[ItemKind, int] = {ItemKind.PRODUCT: 10, ItemKind.CONTENT: 3, ItemKind.OFFER: 2}
"""How many items of each kind a request gets when it does not say."""
ContactChannel = Literal[tuple(c.value for c in CONTACT_CHANNELS)]  # email, sms, push


def _json_integer(value: Any) -> Any:
    """A JSON integer: 5 or 5.0 (JSON Schema counts both), never "5" nor true."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("Input should be a valid integer (a JSON number, not a string or a "
                         "boolean)")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("Input should be a whole number")
    return int(value)


def json_int(minimum: int, maximum: int) -> Any:
    """An integer as JSON writes one, within bounds the spec shows (pydantic's lax int takes
    "5" and true, its strict int not 5.0; the bounds must come before the validator for pydantic
    to write them into the schema)."""
    return Annotated[int, Field(ge=minimum, le=maximum), BeforeValidator(_json_integer)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------- recommend
class Context(_Request):
    current_item: str | None = Field(None, max_length=128, description="Item on the page, if any.")
    cart_items: list[str] = Field(default_factory=list, max_length=200,
                                  description="Items in the customer's cart now.")
    page_type: str | None = Field(None, max_length=64, description="home, product, cart, ...")


class Filters(_Request):
    category: str | None = Field(None, max_length=256,
                                 description="Only items whose category path starts with this.")
    min_price: float | None = Field(None, ge=0, strict=True, description="Lowest product price.")
    max_price: float | None = Field(None, ge=0, strict=True,
                                    description="Highest product price.")
    in_stock_only: bool = Field(True, strict=True,
                                description="Leave out products that are out of stock.")

    @model_validator(mode="after")
    def _a_range_that_can_match(self) -> Filters:
        if (self.min_price is not None and self.max_price is not None
                and self.min_price > self.max_price):
            raise ValueError(f"min_price {self.min_price:g} is above max_price "
                             f"{self.max_price:g}: no product could match; swap them")
        return self


class RecommendRequest(_Request):
    """What the storefront asks; see docs/service.md for every field and limit."""

    customer_id: str = Field(min_length=1, max_length=128)
    channel: Channel = Channel.WEB
    placement: str | None = Field(
        None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:/-]+$",
        description="The slot asking (home_hero, product_page, cart, ...), kept with the "
                    "exposure so KPIs break down by it; default: context.page_type, else "
                    "'default'.")
    n: dict[ItemKind, json_int(0, MAX_N)] = Field(
        default_factory=lambda: dict(DEFAULT_N),
        description=f"How many items of each kind (0..{MAX_N}); kinds not named keep their "
                    "defaults (product 10, content 3, offer 2).")
    context: Context = Field(default_factory=Context)
    filters: Filters = Field(default_factory=Filters)
    exclude: list[str] = Field(default_factory=list, max_length=1000,
                               description="Item ids never to return.")
    buy_again: json_int(0, MAX_N) = Field(
        0, description=f"How many of the customer's own past purchases to propose buying again "
        f"(0..{MAX_N}), those due by their own or the item's cycle, in the answer's "
        "``buy_again``; 0: none.")

    @field_validator("n")
    @classmethod
    def _defaults_for_the_kinds_not_named(cls, value: dict[ItemKind, int]) -> dict[ItemKind, int]:
        return {**DEFAULT_N, **value}


class RecommendedItem(_Answer):
    item_id: str
    title: str
    category: str
    score: float
    reason: str = Field(description="Why it is shown, in words a customer could read.")
    source: str = Field(description="What placed it: for_you, similar, new or popular "
                        "(products); context, category or popular (content); expected_value "
                        "(offers); buy_again (the buy-again shelf).")
    team: Literal["A", "B"] | None = Field(
        None, description="In an interleaving experiment: which of the two rankers placed it.")


class ContactVerdict(_Answer):
    channel: ContactChannel
    allowed: bool = Field(description="Whether the contact policy allows this channel now.")
    reason: str | None = Field(description="Why not, when it does not.")


class RecommendAnswer(_Answer):
    recommendation_id: str = Field(description="Send it back with clicks and purchases.")
    customer_id: str
    known_customer: bool
    model_versions: dict[str, str] = Field(description="Registered model -> version used.")
    served_from: Literal["registry", "cache"]
    experiments: dict[str, str] = Field(
        description="Experiment -> variant this customer is in ({\"holdout\": \"holdout\"} for "
                    "the global holdout, answered without personalization); empty when none.")
    contact: ContactVerdict | None = Field(
        None, description="On a contact channel (email, sms, push) only.")
    products: list[RecommendedItem]
    content: list[RecommendedItem]
    offers: list[RecommendedItem]
    buy_again: list[RecommendedItem] = Field(
        default_factory=list, description="Asked for with ``buy_again``: products the customer "
        "bought before and is due to buy again, with the cycle as the reason (source "
        "buy_again).")
    degraded: bool = Field(description="True when the customer's live state could not be read.")
    degraded_reason: str | None = Field(None, description="Why, when degraded.")


# ---------------------------------------------------------------------------- events
def _event_model() -> type[BaseModel]:
    """One event as the event contract declares it (``features.contracts.EVENTS``), so that the
    spec shows, and a client or a fuzzer can see, its fields; ``/events`` checks them with the
    contract's own rules (``features.ingest``), which say more than a schema can."""
    kinds = {"string": str, "timestamp": datetime, "int": int, "float": float, "bool": bool}
    fields: dict[str, Any] = {}
    for column in EVENTS.columns:
        kind: Any = Literal[column.allowed] if column.allowed else kinds[column.type]
        if column.name == EVENTS.extras_column:
            kind = dict[str, Any] | str
        if column.required:
            fields[column.name] = (kind, Field(description=column.description))
        else:
            fields[column.name] = (kind | None, Field(None, description=column.description))
    return create_model("Event", __config__=ConfigDict(extra="allow"), **fields)


Event = _event_model()


class EventsBatch(_Request):
    events: list[Event] = Field(  # type: ignore[valid-type]  (a model made from the contract)
        description="The events, each as the contract says (at most NEXTBEST_MAX_BATCH_EVENTS).")
    atomic: bool = Field(False, description="Reject the whole batch if any event is bad.")


class EventsBody(BaseModel):
    """One event as a flat object (the event contract's fields), or ``{"events": [...]}``."""

    model_config = ConfigDict(extra="allow")
    events: list[Any] | None = Field(
        None, description="A batch of events; leave out to send one event as the whole body.")
    atomic: bool = Field(
        False, strict=True, description="Batch only: reject the whole batch if any event is bad "
        "(default: accept the good ones and list the bad ones with their index).")

    @model_validator(mode="after")
    def _a_batch_has_no_other_fields(self) -> EventsBody:
        if self.events is not None and self.model_extra:
            raise ValueError(f"a batch is {{\"events\": [...], \"atomic\": ...}}; it has no field "
                             f"{', '.join(repr(k) for k in self.model_extra)} (send each event's "
                             "fields inside its object in events)")
        return self


class EventProblem(_Answer):
    index: int
    field: str | None
    value: str | None
    expected: str
    message: str


class EventsAnswer(_Answer):
    accepted: int
    duplicates: int
    rejected: list[int] = Field(description="Indexes of the events that were not recorded.")
    problems: list[EventProblem]
    error: str | None = Field(None, description="With a 400: why nothing was recorded.")


# ---------------------------------------------------------------------------- consent
class ConsentRequest(_Request):
    """A customer gave or withdrew consent to be contacted on a channel."""

    customer_id: str = Field(min_length=1, max_length=128)
    channel: ContactChannel
    granted: bool = Field(strict=True, description="true or false (JSON booleans only).")
    timestamp: datetime | None = Field(
        None, description="When the customer decided (ISO 8601; no zone means UTC; default: "
        "now). Not in the future. A change older than the one recorded last is ignored.")

    @field_validator("timestamp")
    @classmethod
    def _in_the_event_window(cls, value: datetime | None) -> datetime | None:
        """The same window as events' timestamps (``features.event_time``)."""
        if value is None:
            return None
        value = value if value.tzinfo else value.replace(tzinfo=UTC)
        problem = TimeWindow.current().problem(value)
        if problem:
            raise ValueError(f"expected {problem}")
        return value


class ConsentAnswer(_Answer):
    customer_id: str
    channel: ContactChannel
    granted: bool
    as_of: str = Field(description="When the consent in force was given or withdrawn.")
    recorded: bool = Field(description="False when a later decision was already recorded.")


class ConsentStatusRequest(_Request):
    customer_id: str = Field(min_length=1, max_length=128)


class ChannelConsent(_Answer):
    granted: bool
    as_of: str | None = Field(description="When it was given or withdrawn (null: the customers "
                                          "table's value, which has no time).")
    source: Literal["consent", "customers table"] = Field(
        description="consent: sent to /consent; customers table: the shop's customer record.")


class ConsentStatusAnswer(_Answer):
    customer_id: str
    known_customer: bool
    channels: dict[ContactChannel, ChannelConsent]


# ---------------------------------------------------------------------------- the rest
class SimilarItemsRequest(_Request):
    item_id: str = Field(min_length=1, max_length=128)
    n: json_int(1, 100) = 10


class SimilarItem(_Answer):
    item_id: str
    title: str
    score: float


class SimilarItemsAnswer(_Answer):
    item_id: str
    model_versions: dict[str, str]
    items: list[SimilarItem]


class PropensityRequest(_Request):
    customer_ids: list[str] = Field(min_length=1, max_length=1000,
                                    description="Customers to score (1 to 1000).")


class CustomerScore(_Answer):
    customer_id: str
    score: float = Field(gt=0, lt=1, description="Calibrated P(purchase within the horizon).")
    decile: int = Field(ge=1, le=10, description="1 = the top 10% of all customers.")
    reasons: list[str] = Field(max_length=3)


class PropensityAnswer(_Answer):
    model_version: str
    scored_as_of: str
    scores: list[CustomerScore]
    unknown: list[str] = Field(description="Ids the model has no features for.")


class ReloadRequest(_Request):
    token: str | None = Field(None, min_length=1, max_length=512, description=(
        "The admin token (NEXTBEST_ADMIN_TOKEN); or send it as 'Authorization: Bearer ...'."))


class ReloadAnswer(_Answer):
    swapped: bool
    versions: dict[str, str]
    detail: str


class ReadinessAnswer(_Answer):
    """GET /readyz (``serving/health.py``)."""

    ready: bool
    detail: str = Field(description="What is served and why, or why nothing is.")
    versions: dict[str, str]
    served_from: Literal["registry", "cache"] | None = Field(
        description="cache: the last good versions, kept locally (the detail says why).")
    exposures: dict[Literal["recorded", "written", "dropped", "pending", "write_errors"], int] = (
        Field(description="This worker's exposure log: answers and messages recorded, written "
                          "to the online store, dropped (buffer full), waiting, and failed "
                          "writes (retried). Empty when NEXTBEST_EXPOSURE_LOGGING is off."))


class ErrorAnswer(_Answer):
    """Every error the service answers, whatever the status."""

    error: str = Field(description="What was wrong and what would be right, in words.")
    detail: list[dict[str, Any]] | None = Field(
        None, description="With a 400 for a request that does not match its schema: each "
        "problem as pydantic reports it (loc, msg, type).")

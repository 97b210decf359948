"""One typed settings object for the whole project, overridable from the environment.

Every knob lives here so that an operator can see, in one place, what can be configured and
what the defaults are. Each field can be set with an environment variable ``NEXTBEST_<FIELD>``
(for example ``NEXTBEST_DATA_DIR=/srv/nextbest``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Project-wide configuration. Construct directly in tests, or use :func:`get_settings`."""

    model_config = SettingsConfigDict(env_prefix="NEXTBEST_", extra="ignore")

    data_dir: Path = Field(
        Path(".nextbest"),
        description="Root of the local warehouse: Parquet tables, features, quarantine files.",
    )
    max_reported_errors: int = Field(
        100,
        ge=1,
        description="How many validation problems a report lists before it stops counting them one by one.",
    )
    abandoned_cart_after_minutes: int = Field(
        30,
        ge=1,
        description="A cart with no purchase this long after its session's last event counts as abandoned.",
    )
    recent_items: int = Field(
        10, ge=1, le=200, description="How many recently viewed items the features keep per customer."
    )
    future_tolerance_minutes: float = Field(
        10.0, ge=0, description="Events, imported rows and consents dated more than this after the "
        "current time are refused (clock skew between senders is allowed for, a typo is not).")
    earliest_event_time: datetime = Field(
        datetime(1990, 1, 1, tzinfo=UTC), description="Events and imported rows dated before this "
        "(ISO 8601, UTC) are refused: no shop's history starts earlier.")
    max_skipped_share: float = Field(
        0.3, ge=0, le=1, description="A transaction import that skips more than this share of its "
        "rows says so prominently, with examples of what failed.")

    # --- tracking and registry (training) ---
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI: a server (http://host:5000) or a database URI. "
        "Default: a local SQLite store, <data_dir>/mlflow.db.",
    )
    experiment: str = Field(
        "nextbest", description="Prefix of the MLflow experiments training runs log to: "
        "<experiment>-recommender and <experiment>-propensity.")
    recommender_name: str = Field("recommender", description="Registered model of the recommender.")
    promotion_metric: str = Field(
        "ndcg@10", description="Holdout metric a challenger must beat the champion on."
    )
    promotion_margin: float = Field(
        0.0, ge=0, description="Relative margin: promote only if challenger >= champion x (1 + margin)."
    )
    test_days: float = Field(14.0, gt=0, description="Days after the cutoff that form the holdout.")
    propensity_name: str = Field(
        "propensity", description="Registered purchase-propensity model; other kinds add -<kind>."
    )
    propensity_metric: str = Field(
        "roc_auc", description="Test-snapshot metric a propensity challenger must beat the champion on."
    )
    horizon_days: float = Field(30.0, gt=0, description="Propensity: buy within this many days.")

    # --- serving ---
    serving_alias: str = Field("champion", description="Alias of the versions the service loads.")
    workers: int | Literal["cpu_count"] = Field(
        1, description="API worker processes of the service (each loads the models): a number, or "
        "cpu_count for one per core. Read when the service module is imported.")
    reload_interval_seconds: float = Field(
        30.0, ge=0, description="How often the service checks whether the alias moved; 0 = never."
    )
    huge_pages: bool = Field(
        True, description="Put each service worker's heap on transparent huge pages (sets "
        "PYTHONMALLOC=malloc and glibc's malloc.hugetlb tunable for the workers): a recommend "
        "request reads objects scattered over gigabytes. Read when the service module is imported.")
    cors_allow_origins: list[str] = Field(
        default_factory=list, description="Origins whose web pages may call the service from a "
        "browser (CORS), as a JSON list, e.g. [\"https://shop.example\"]; none by default.")
    write_tokens: list[str] = Field(
        default_factory=list, description="Bearer tokens that may call /events and /consent "
        "(a JSON list); empty: anyone who reaches the service may. Several at once let a token "
        "be rotated: add the new one, move the clients, remove the old one.")
    read_tokens: list[str] = Field(
        default_factory=list, description="Bearer tokens that may call /recommend, "
        "/similar_items, /propensity and /consent_status (a JSON list); empty: anyone may.")
    host: str = Field(
        "127.0.0.1", description="Interface 'nextbest serve' listens on: this machine only by "
        "default; 0.0.0.0 for every interface (in a container, behind a load balancer).")
    admin_token: str | None = Field(
        None, description="Bearer token for the service's admin_reload endpoint; unset = disabled."
    )
    neighbour_table_max_items: int = Field(
        250_000, ge=0, description="Precompute every item's nearest items at load for factor models up "
        "to this many items (about a minute at 100k); larger catalogs score similarity per request.")
    max_category_share: float = Field(
        0.5, gt=0, le=1, description="Most of a product list one top-level category may take."
    )

    # --- real time: ingestion, online state, triggers ---
    online_backend: Literal["embedded", "redis"] = Field(
        "embedded", description="Where customer state lives: embedded (SQLite file <data_dir>/online.db,"
        " one machine) or redis (several workers or instances).")
    online_sync: Literal["full", "normal"] = Field(
        "full", description="Embedded store: full = each acknowledged event is on disk (survives a power "
        "cut); normal = survives a killed process, the OS flushes later (faster single events).")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for online_backend=redis.")
    redis_prefix: str = Field("nextbest:", description="Prefix of every Redis key nextbest writes.")
    stream_url: str | None = Field(
        None, description="NATS server whose JetStream events 'nextbest events consume' reads "
        "(e.g. nats://127.0.0.1:4222); unset: events arrive over HTTP only.")
    stream_name: str = Field("NEXTBEST_EVENTS", pattern=r"^[A-Za-z0-9_-]+$",
                             description="JetStream stream holding the events (created if missing).")
    stream_subject: str = Field("nextbest.events", min_length=1,
                                description="Subject the storefront publishes events on.")
    stream_consumer: str = Field("nextbest-ingest", pattern=r"^[A-Za-z0-9_-]+$",
                                 description="Durable consumer name shared by the consumers.")
    stream_dead_letter: str = Field(
        "nextbest.events.dead", min_length=1,
        description="Subject a message or event that cannot be recorded is published on, with "
        "the reason.")
    stream_batch: int = Field(2000, ge=1, le=10_000, description="Messages fetched, recorded "
                              "in one transaction and acknowledged at a time.")
    dedup_window_days: float = Field(
        7.0, gt=0, description="A re-sent event_id is recognised online this long; the warehouse "
        "deduplicates forever.")
    max_batch_events: int = Field(10_000, ge=1, description="Most events one /events call may send.")
    max_body_bytes: int = Field(
        10_000_000, ge=1024, description="Largest request body the service reads; a larger one is "
        "a 413, answered before the rest is read.")
    max_json_depth: int = Field(
        32, ge=4, le=200, description="Deepest nesting of objects and lists a request body may "
        "have; deeper is a 400.")
    max_context_bytes: int = Field(
        4096, ge=64, description="Largest context (the JSON of an event's extra fields) one event "
        "may carry, sent or imported.")
    max_cell_bytes: int = Field(
        65_536, ge=256, description="Largest cell an imported file may have (a longer CSV line "
        "than the header's columns could hold is refused before it is read).")
    flush_interval_seconds: float = Field(
        60.0, ge=0, description="How often the background worker ('nextbest worker') moves ingested "
        "events and exposures to the warehouse; 0 = never (use 'nextbest events flush').")
    background_worker: bool = Field(
        True, description="Whether 'nextbest serve' starts the background worker (journeys, trigger "
        "rules, warehouse flush) beside the API workers; false where it runs elsewhere ('nextbest "
        "worker': one per deployment).")
    journey_interval_seconds: float = Field(
        0.2, gt=0, description="How often the journey scheduler looks for customers with a step "
        "due (an event makes its customer due at once).")
    exposure_logging: bool = Field(
        True, description="Record every recommend answer and message decision as an exposure "
        "(what attribution and KPIs count); off only to measure what it costs.")
    exposure_buffer: int = Field(
        10_000, ge=100, description="Exposures a service worker holds while its writer is busy or "
        "the online store is down; beyond that new ones are dropped and counted (never blocking an "
        "answer).")
    exposure_flush_ms: float = Field(
        200.0, ge=10, le=60_000, description="How often a worker writes its buffered exposures to "
        "the online store: what a killed worker can lose is the exposures of its last interval.")
    click_window_hours: float = Field(
        24.0, gt=0, description="Attribution: a click without a recommendation_id counts for an "
        "exposure of the same item to the same customer at most this long before it.")
    purchase_window_days: float = Field(
        7.0, gt=0, description="Attribution: an add-to-cart or purchase without an id counts for an "
        "exposure of the item to the customer at most this long before it.")
    attribution_rule: Literal["last_touch", "first_touch"] = Field(
        "last_touch", description="Which exposure in the window gets an outcome: the latest "
        "(last_touch) or the earliest (first_touch).")
    experiments_file: Path | None = Field(
        None, description="Experiments and the global holdout (YAML, docs/experiments.md). "
        "Default: <data_dir>/experiments.yaml; no file, no experiments.")
    journeys_file: Path | None = Field(
        None, description="Customer journeys (YAML, docs/journeys.md). Default: "
        "<data_dir>/journeys.yaml if it exists, else the shipped examples "
        "(serving/engagement/journeys.default.yaml).")
    policy_file: Path | None = Field(
        None, description="Contact policy and trigger rules (YAML). Default: <data_dir>/policy.yaml if it "
        "exists, else the built-in policy (serving/engagement/policy.default.yaml).")

    @field_validator("earliest_event_time")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        """A time written without a zone is UTC, as everywhere else in nextbest."""
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def resolved_tracking_uri(self) -> str:
        """The configured tracking URI, or the embedded SQLite store under the data directory."""
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings read from the environment once per process."""
    return Settings()

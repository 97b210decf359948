"""One typed settings object for the whole project, overridable from the environment.

Every knob lives here so that an operator can see, in one place, what can be configured and
what the defaults are. Each field can be set with an environment variable ``NEXTBEST_<FIELD>``
(for example ``NEXTBEST_DATA_DIR=/srv/nextbest``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
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

    # --- tracking and registry (training) ---
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI: a server (http://host:5000) or a database URI. "
        "Default: a local SQLite store, <data_dir>/mlflow.db.",
    )
    experiment: str = Field("nextbest", description="MLflow experiment that training runs log to.")
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
    reload_interval_seconds: float = Field(
        30.0, ge=0, description="How often the service checks whether the alias moved; 0 = never."
    )
    admin_token: str | None = Field(
        None, description="Bearer token for the service's admin_reload endpoint; unset = disabled."
    )
    max_category_share: float = Field(
        0.5, gt=0, le=1, description="Most of a product list one top-level category may take."
    )

    def resolved_tracking_uri(self) -> str:
        """The configured tracking URI, or the embedded SQLite store under the data directory."""
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings read from the environment once per process."""
    return Settings()

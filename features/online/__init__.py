"""Online customer state: what each customer just did, shared by serving and the triggers."""

from __future__ import annotations

from features.online.state import CustomerState, apply_event
from features.online.store import IngestResult, OnlineStateUnavailable, OnlineStore
from features.settings import Settings

__all__ = ["CustomerState", "IngestResult", "OnlineStateUnavailable", "OnlineStore",
           "apply_event", "open_online_store"]


def open_online_store(settings: Settings) -> OnlineStore:
    """The backend the settings name: embedded SQLite under the data directory, or Redis."""
    if settings.online_backend == "redis":
        from features.online.redis_store import RedisStore

        return RedisStore(settings.redis_url, settings.redis_prefix, settings.dedup_window_days)
    from features.online.embedded import EmbeddedStore

    return EmbeddedStore(settings.data_dir / "online.db", settings.dedup_window_days,
                         settings.online_sync)

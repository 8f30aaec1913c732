"""App config: registers checks and the settings hook; no queries, no network."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core.signals import setting_changed

# Settings that change where events go, and how the publisher connects to Redis.
_ROUTING = {
    "CHANNEL_LAYERS",
    "BROADCAST_CHANNEL_LAYER",
    "BROADCAST_GROUP_PREFIX",
    "BROADCAST_FAST_PATHS",
    "BROADCAST_REDIS_CLUSTER",
}
_CONNECTIONS = {
    "CHANNEL_LAYERS",
    "BROADCAST_REDIS_CLUSTER",
    "BROADCAST_CHANNEL_LAYER",
    "BROADCAST_REDIS_TIMEOUT",
    "BROADCAST_FAST_PATHS",
}


def _settings_changed(setting: str, **kwargs: Any) -> None:
    if setting.startswith("BROADCAST_"):
        from . import conf

        conf.forget()
    if setting in _ROUTING:
        from .transport.routes import forget_routes

        forget_routes()
    if setting in _CONNECTIONS:
        from .publish import publisher
        from .web import positions

        publisher.reset()
        positions.forget()
    if setting in {"CACHES", "BROADCAST_CACHE_ALIAS"}:
        from .instance.cache import is_in_memory

        is_in_memory.cache_clear()
    if setting == "BROADCAST_FEED_SIZE":
        from .instance.feed import feed

        feed.reset()


class BroadcastAppConfig(AppConfig):
    name = "broadcast_app"
    verbose_name = "Broadcast"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)

        setting_changed.connect(_settings_changed, dispatch_uid="broadcast_app.settings")

"""Every setting of broadcast_app, read at access time (so ``override_settings`` works).

Each property is one Django setting; the default is inline and the docstring is its
one-line meaning. The README's configuration reference mirrors this file.
"""

from __future__ import annotations

import os
import socket

from django.conf import settings


def _default_instance_id() -> str:
    # Cached per process (a fork gets its own pid): it is read on every publish.
    pid = os.getpid()
    if _instance_id_cache.get("pid") != pid:
        _instance_id_cache.update(pid=pid, id=f"{socket.gethostname()}:{pid}")
    return str(_instance_id_cache["id"])


_instance_id_cache: dict[str, object] = {}


class Settings:
    """Typed access to the ``BROADCAST_*`` settings."""

    @property
    def BROADCAST_ENABLED(self) -> bool:
        """Master switch: when False, saves are not captured and nothing is published."""
        return bool(getattr(settings, "BROADCAST_ENABLED", True))

    @property
    def BROADCAST_CHANNEL_LAYER(self) -> str:
        """Alias in ``CHANNEL_LAYERS`` of the RedisPubSubChannelLayer events travel on."""
        return str(getattr(settings, "BROADCAST_CHANNEL_LAYER", "default"))

    @property
    def BROADCAST_GROUP_PREFIX(self) -> str:
        """Prefix of the channel-layer group (one per model) and of the Redis keys."""
        return str(getattr(settings, "BROADCAST_GROUP_PREFIX", "broadcast"))

    @property
    def BROADCAST_CACHE_ALIAS(self) -> str:
        """Alias in ``CACHES`` of the per-instance broadcast cache."""
        return str(getattr(settings, "BROADCAST_CACHE_ALIAS", "default"))

    @property
    def BROADCAST_CACHE_TIMEOUT(self) -> int | None:
        """Seconds a broadcast cache entry lives (None: until evicted)."""
        value = getattr(settings, "BROADCAST_CACHE_TIMEOUT", 3600)
        return None if value is None else int(value)

    @property
    def BROADCAST_INSTANCE_ID(self) -> str:
        """This process's id, the ``origin`` of its events (default: env var, else host:pid)."""
        value = getattr(settings, "BROADCAST_INSTANCE_ID", None) or os.environ.get(
            "BROADCAST_INSTANCE_ID"
        )
        return str(value) if value else _default_instance_id()

    @property
    def BROADCAST_REDIS_TIMEOUT(self) -> float:
        """Seconds the publisher waits on Redis (connect and reply) before giving up."""
        return float(getattr(settings, "BROADCAST_REDIS_TIMEOUT", 0.5))

    @property
    def BROADCAST_DELIVERY(self) -> str:
        """``"best_effort"`` (events wait in memory for Redis) or ``"outbox"`` (events are
        written to a table in the saving transaction and relayed from it)."""
        return str(getattr(settings, "BROADCAST_DELIVERY", "best_effort"))

    @property
    def BROADCAST_OUTBOX_RELAY(self) -> bool:
        """Whether each instance runs the outbox relay beside its listener (outbox mode)."""
        return bool(getattr(settings, "BROADCAST_OUTBOX_RELAY", True))

    @property
    def BROADCAST_OUTBOX_INTERVAL(self) -> float:
        """Seconds between two outbox relay passes when nothing wakes the relay sooner."""
        return float(getattr(settings, "BROADCAST_OUTBOX_INTERVAL", 1.0))

    @property
    def BROADCAST_QUEUE_SIZE(self) -> int:
        """Events a process holds for its publisher thread; more are dropped (and counted)."""
        return int(getattr(settings, "BROADCAST_QUEUE_SIZE", 10_000))

    @property
    def BROADCAST_OUTAGE_BUFFER(self) -> int:
        """Events a process keeps while Redis is down; beyond, the oldest are dropped and
        their models' subscribers get ``reset``."""
        return int(getattr(settings, "BROADCAST_OUTAGE_BUFFER", 10_000))

    @property
    def BROADCAST_FLUSH_TIMEOUT(self) -> float:
        """Seconds a process waits at exit for queued events to be published."""
        return float(getattr(settings, "BROADCAST_FLUSH_TIMEOUT", 2.0))

    @property
    def BROADCAST_LOG_MAXLEN(self) -> int:
        """Approximate number of events kept per model in the Redis stream that assigns ids."""
        return int(getattr(settings, "BROADCAST_LOG_MAXLEN", 10_000))

    @property
    def BROADCAST_RECOVERY_INTERVAL(self) -> float:
        """Seconds between two checks that this instance missed no event (gap repair)."""
        return float(getattr(settings, "BROADCAST_RECOVERY_INTERVAL", 5.0))

    @property
    def BROADCAST_LOG_MAX_AGE(self) -> float:
        """Seconds an event stays in its model's log for resume (approximately; 0: no limit)."""
        return float(getattr(settings, "BROADCAST_LOG_MAX_AGE", 3600))

    @property
    def BROADCAST_MAX_FRAME_BYTES(self) -> int:
        """Largest websocket frame accepted from a client; larger ones get ``too_large``."""
        return int(getattr(settings, "BROADCAST_MAX_FRAME_BYTES", 4096))

    @property
    def BROADCAST_MAX_SUBSCRIPTIONS(self) -> int:
        """Subscriptions one websocket connection may hold at once."""
        return int(getattr(settings, "BROADCAST_MAX_SUBSCRIPTIONS", 100))

    @property
    def BROADCAST_SEND_QUEUE_SIZE(self) -> int:
        """Frames queued per websocket connection; past it, its events become ``reset``s."""
        return int(getattr(settings, "BROADCAST_SEND_QUEUE_SIZE", 1000))

    @property
    def BROADCAST_SEND_TIMEOUT(self) -> float:
        """Seconds a client may take no data while frames wait; then it is closed (4008)."""
        return float(getattr(settings, "BROADCAST_SEND_TIMEOUT", 10.0))

    @property
    def BROADCAST_HEARTBEAT_INTERVAL(self) -> float:
        """Seconds between two heartbeats by which an instance reports itself in Redis."""
        return float(getattr(settings, "BROADCAST_HEARTBEAT_INTERVAL", 5.0))

    @property
    def BROADCAST_HEARTBEAT_TTL(self) -> float:
        """Seconds after its last heartbeat that an instance drops off the dashboard."""
        return float(getattr(settings, "BROADCAST_HEARTBEAT_TTL", 15.0))

    @property
    def BROADCAST_FEED_SIZE(self) -> int:
        """Latest events (metadata only) each instance keeps in memory for the dashboard."""
        return int(getattr(settings, "BROADCAST_FEED_SIZE", 50))

    @property
    def BROADCAST_DASHBOARD_REFRESH(self) -> float:
        """Seconds between two refreshes of the staff dashboard (it polls status.json)."""
        return float(getattr(settings, "BROADCAST_DASHBOARD_REFRESH", 2.0))


conf = Settings()

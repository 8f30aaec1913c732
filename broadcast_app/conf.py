"""Every setting of broadcast_app, read when first used and remembered until a setting
changes (``override_settings`` and pytest-django's ``settings`` send Django's
``setting_changed``, which clears what was remembered).

Each property is one Django setting; the default is inline and the docstring is its
one-line meaning. The README's configuration reference mirrors this file.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from django.conf import settings

# Read on every save: a setting left at its default would otherwise cost an
# AttributeError raised and caught inside Django's settings object each time.
_read: dict[str, Any] = {}
# Taken on a miss and by forget(): a value read before a change cannot be stored after
# the change was signalled (the signal always follows the change).
_lock = threading.Lock()


def _setting(name: str, default: Any) -> Any:
    try:
        return _read[name]
    except KeyError:
        return _remember(name, lambda: getattr(settings, name, default))


def _remember(key: str, compute: Callable[[], Any]) -> Any:
    """Work out a value on a miss and remember it, under the lock (see ``_lock``)."""
    with _lock:
        value = _read[key] = compute()
    return value


def forget() -> None:
    """Read every setting again at its next use (a setting changed)."""
    with _lock:
        _read.clear()


#: where the resolved instance id is remembered among the settings read
_INSTANCE_ID = "BROADCAST_INSTANCE_ID (resolved)"


def _instance_id() -> str:
    # Resolved once per process and settings change: it is read for every published
    # event, and os.environ.get() of a missing key raises and catches a KeyError.
    try:
        return str(_read[_INSTANCE_ID])
    except KeyError:
        return str(_remember(_INSTANCE_ID, _resolve_instance_id))


def _resolve_instance_id() -> str:
    value = getattr(settings, "BROADCAST_INSTANCE_ID", None) or os.environ.get(
        "BROADCAST_INSTANCE_ID"
    )
    return str(value) if value else f"{socket.gethostname()}:{os.getpid()}"


def _after_fork() -> None:
    global _lock
    # The child has one thread: a lock some other thread of the parent held stays held
    # in the child unless replaced. And the child's default instance id has its pid.
    _lock = threading.Lock()
    _read.pop(_INSTANCE_ID, None)


os.register_at_fork(after_in_child=_after_fork)


class Settings:
    """Typed access to the ``BROADCAST_*`` settings."""

    @property
    def BROADCAST_ENABLED(self) -> bool:
        """Master switch: when False, saves are not captured and nothing is published."""
        return bool(_setting("BROADCAST_ENABLED", True))

    @property
    def BROADCAST_CHANNEL_LAYER(self) -> str:
        """Alias in ``CHANNEL_LAYERS`` of the RedisPubSubChannelLayer events travel on."""
        return str(_setting("BROADCAST_CHANNEL_LAYER", "default"))

    @property
    def BROADCAST_GROUP_PREFIX(self) -> str:
        """Prefix of the channel-layer group (one per model) and of the Redis keys."""
        return str(_setting("BROADCAST_GROUP_PREFIX", "broadcast"))

    @property
    def BROADCAST_CACHE_ALIAS(self) -> str:
        """Alias in ``CACHES`` of the per-instance broadcast cache."""
        return str(_setting("BROADCAST_CACHE_ALIAS", "default"))

    @property
    def BROADCAST_CACHE_TIMEOUT(self) -> int | None:
        """Seconds a broadcast cache entry lives (None: until evicted)."""
        value = _setting("BROADCAST_CACHE_TIMEOUT", 3600)
        return None if value is None else int(value)

    @property
    def BROADCAST_INSTANCE_ID(self) -> str:
        """This process's id, the ``origin`` of its events (default: env var, else host:pid)."""
        return _instance_id()

    @property
    def BROADCAST_PUBLISH_IN_TESTS(self) -> bool:
        """Whether events reach Redis while Django's test environment is set up."""
        return bool(_setting("BROADCAST_PUBLISH_IN_TESTS", False))

    @property
    def BROADCAST_REDIS_TIMEOUT(self) -> float:
        """Seconds the publisher waits on Redis (connect and reply) before giving up."""
        return float(_setting("BROADCAST_REDIS_TIMEOUT", 0.5))

    @property
    def BROADCAST_DELIVERY(self) -> str:
        """``"best_effort"`` (events wait in memory for Redis) or ``"outbox"`` (events are
        written to a table in the saving transaction and relayed from it)."""
        return str(_setting("BROADCAST_DELIVERY", "best_effort"))

    @property
    def BROADCAST_OUTBOX_RELAY(self) -> bool:
        """Whether each instance runs the outbox relay beside its listener (outbox mode)."""
        return bool(_setting("BROADCAST_OUTBOX_RELAY", True))

    @property
    def BROADCAST_OUTBOX_INTERVAL(self) -> float:
        """Seconds between two outbox relay passes when nothing wakes the relay sooner."""
        return float(_setting("BROADCAST_OUTBOX_INTERVAL", 1.0))

    @property
    def BROADCAST_QUEUE_SIZE(self) -> int:
        """Events a process holds for its publisher thread; more are dropped (and counted)."""
        return int(_setting("BROADCAST_QUEUE_SIZE", 10_000))

    @property
    def BROADCAST_OUTAGE_BUFFER(self) -> int:
        """Events a process keeps while Redis is down; beyond, the oldest are dropped and
        their models' subscribers get ``reset``."""
        return int(_setting("BROADCAST_OUTAGE_BUFFER", 10_000))

    @property
    def BROADCAST_FLUSH_TIMEOUT(self) -> float:
        """Seconds a process waits at exit for queued events to be published."""
        return float(_setting("BROADCAST_FLUSH_TIMEOUT", 2.0))

    @property
    def BROADCAST_LOG_MAXLEN(self) -> int:
        """Approximate number of events kept per model in the Redis stream that assigns ids."""
        return int(_setting("BROADCAST_LOG_MAXLEN", 10_000))

    @property
    def BROADCAST_RECOVERY_INTERVAL(self) -> float:
        """Seconds between two checks that this instance missed no event (gap repair)."""
        return float(_setting("BROADCAST_RECOVERY_INTERVAL", 5.0))

    @property
    def BROADCAST_LOG_MAX_AGE(self) -> float:
        """Seconds an event stays in its model's log for resume (approximately; 0: no limit)."""
        return float(_setting("BROADCAST_LOG_MAX_AGE", 3600))

    @property
    def BROADCAST_MAX_FRAME_BYTES(self) -> int:
        """Largest websocket frame accepted from a client; larger ones get ``too_large``."""
        return int(_setting("BROADCAST_MAX_FRAME_BYTES", 4096))

    @property
    def BROADCAST_MAX_SUBSCRIPTIONS(self) -> int:
        """Subscriptions one websocket connection may hold at once."""
        return int(_setting("BROADCAST_MAX_SUBSCRIPTIONS", 100))

    @property
    def BROADCAST_RESUME_MAX_EVENTS(self) -> int:
        """Most events one resume (``since``) replays; more after ``since`` is a ``reset``."""
        return int(_setting("BROADCAST_RESUME_MAX_EVENTS", 1000))

    @property
    def BROADCAST_RESUME_RATE(self) -> int:
        """Resumes a connection may start per ``BROADCAST_RESUME_WINDOW``; more are ``reset``."""
        return int(_setting("BROADCAST_RESUME_RATE", 20))

    @property
    def BROADCAST_RESUME_WINDOW(self) -> float:
        """Seconds in which a connection's ``BROADCAST_RESUME_RATE`` resumes come back."""
        return float(_setting("BROADCAST_RESUME_WINDOW", 10.0))

    @property
    def BROADCAST_RESUME_CONCURRENCY(self) -> int:
        """Resumes one instance reads and replays at once (waiting longer for a turn: ``busy``)."""
        return int(_setting("BROADCAST_RESUME_CONCURRENCY", 1))

    @property
    def BROADCAST_SEND_QUEUE_SIZE(self) -> int:
        """Frames queued per websocket connection; past it, its events become ``reset``s."""
        return int(_setting("BROADCAST_SEND_QUEUE_SIZE", 1000))

    @property
    def BROADCAST_SEND_TIMEOUT(self) -> float:
        """Seconds a client may take no data while frames wait; then it is closed (4008)."""
        return float(_setting("BROADCAST_SEND_TIMEOUT", 10.0))

    @property
    def BROADCAST_HEARTBEAT_INTERVAL(self) -> float:
        """Seconds between two heartbeats by which an instance reports itself in Redis."""
        return float(_setting("BROADCAST_HEARTBEAT_INTERVAL", 5.0))

    @property
    def BROADCAST_HEARTBEAT_TTL(self) -> float:
        """Seconds after its last heartbeat that an instance drops off the dashboard."""
        return float(_setting("BROADCAST_HEARTBEAT_TTL", 15.0))

    @property
    def BROADCAST_FEED_SIZE(self) -> int:
        """Latest events (metadata only) each instance keeps in memory for the dashboard."""
        return int(_setting("BROADCAST_FEED_SIZE", 50))

    @property
    def BROADCAST_DASHBOARD_REFRESH(self) -> float:
        """Seconds between two refreshes of the staff dashboard (it polls status.json)."""
        return float(_setting("BROADCAST_DASHBOARD_REFRESH", 2.0))

    @property
    def BROADCAST_REVALIDATE_INTERVAL(self) -> float:
        """Seconds between two checks that each open websocket's user is still logged in,
        active and allowed to see its subscriptions (the bound on revocation)."""
        return float(_setting("BROADCAST_REVALIDATE_INTERVAL", 5.0))

    @property
    def BROADCAST_CONFIRM_TIMEOUT(self) -> float:
        """Seconds an instance may go without confirming that it still receives from
        Redis; past it, it serves no cache hits and sends ``reset`` (``disconnected``)."""
        return float(_setting("BROADCAST_CONFIRM_TIMEOUT", 5.0))

    @property
    def BROADCAST_WRAP_QUERYSETS(self) -> bool:
        """Wrap ``QuerySet.update/bulk_create/bulk_update/delete`` so bulk writes of
        registered models broadcast; False leaves QuerySet alone (use ``publish_changes``)."""
        return bool(_setting("BROADCAST_WRAP_QUERYSETS", True))

    @property
    def BROADCAST_FAST_PATHS(self) -> bool | frozenset[str]:
        """Other libraries' undocumented fast paths allowed (True: all, False: none, or a
        collection of names; see docs/architecture.md): each is also checked at use."""
        value = _setting("BROADCAST_FAST_PATHS", True)
        return value if isinstance(value, bool) else frozenset(value)

    @property
    def BROADCAST_FILTER_MAX_CONDITIONS(self) -> int:
        """Conditions one filtered subscription's ``where`` may hold."""
        return int(_setting("BROADCAST_FILTER_MAX_CONDITIONS", 10))

    @property
    def BROADCAST_FILTER_MAX_VALUES(self) -> int:
        """Values one ``__in`` condition of a ``where`` may list."""
        return int(_setting("BROADCAST_FILTER_MAX_VALUES", 100))

    @property
    def BROADCAST_FILTER_MAX_TEXT(self) -> int:
        """Characters one string value of a ``where`` may hold."""
        return int(_setting("BROADCAST_FILTER_MAX_TEXT", 200))

    @property
    def BROADCAST_SNAPSHOT_MAX_ROWS(self) -> int:
        """Most rows one snapshot (``subscribe`` with ``snapshot``) sends."""
        return int(_setting("BROADCAST_SNAPSHOT_MAX_ROWS", 1000))

    @property
    def BROADCAST_SNAPSHOT_MAX_SCAN(self) -> int:
        """Most rows one snapshot reads from the database (a filter the database cannot
        answer, or rows an ``object_check`` refuses, are read and skipped)."""
        return int(_setting("BROADCAST_SNAPSHOT_MAX_SCAN", 10000))


conf = Settings()

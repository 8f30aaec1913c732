"""Every setting of broadcast_app, read when first used and remembered until a setting
changes (``override_settings`` and pytest-django's ``settings`` send Django's
``setting_changed``, which clears what was remembered).

:data:`SETTINGS` is the one table of every setting: its default, its kind (what
``checks.py`` validates it as) and its one-line meaning. The typed properties of
:class:`Settings` read their defaults from it, and tests hold the README's configuration
reference and the properties to it.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

from django.conf import settings

#: How a setting is validated by ``checks.py`` (each kind has its check and id there).
Kind = Literal[
    "flag",  # True or False
    "text",  # a string
    "instance_id",  # a string, or None for the environment variable, else host:pid
    "positive",  # a finite number above 0
    "positive_or_zero",  # a finite number, 0 or above (0 has a documented meaning)
    "positive_or_none",  # a finite number above 0, or None (None has a documented meaning)
    "delivery",  # one of DELIVERY_MODES
    "fast_paths",  # True, False or a collection of fast path names
    "callable",  # a callable, or the dotted path of one
    "cluster_nodes",  # None, or a non-empty list of "host:port" strings
]

DELIVERY_MODES = ("best_effort", "outbox")


class Setting(NamedTuple):
    """One setting: its default, how it is validated, and what it means."""

    default: Any
    kind: Kind
    meaning: str
    #: how the default reads in the docs when it is not a literal value
    shown: str | None = None


SETTINGS: dict[str, Setting] = {
    "BROADCAST_ENABLED": Setting(
        True,
        "flag",
        "Master switch: when False, saves are not captured and nothing is published.",
    ),
    "BROADCAST_CHANNEL_LAYER": Setting(
        "default",
        "text",
        "Alias in ``CHANNEL_LAYERS`` of the RedisPubSubChannelLayer events travel on.",
    ),
    "BROADCAST_GROUP_PREFIX": Setting(
        "broadcast",
        "text",
        "Prefix of the channel-layer group (one per model) and of the Redis keys.",
    ),
    "BROADCAST_CACHE_ALIAS": Setting(
        "default",
        "text",
        "Alias in ``CACHES`` of the per-instance broadcast cache.",
    ),
    "BROADCAST_CACHE_TIMEOUT": Setting(
        3600,
        "positive_or_none",
        "Seconds a broadcast cache entry lives (None: until evicted).",
    ),
    "BROADCAST_INSTANCE_ID": Setting(
        None,
        "instance_id",
        "This process's id, the ``origin`` of its events (default: env var, else host:pid).",
        shown="env `BROADCAST_INSTANCE_ID`, else `host:pid`",
    ),
    "BROADCAST_DELIVERY": Setting(
        "best_effort",
        "delivery",
        '``"best_effort"`` (events wait in memory for Redis) or ``"outbox"`` (events are '
        "written to a table in the saving transaction and relayed from it).",
    ),
    "BROADCAST_OUTBOX_RELAY": Setting(
        True,
        "flag",
        "Whether each instance runs the outbox relay beside its listener (outbox mode).",
    ),
    "BROADCAST_OUTBOX_INTERVAL": Setting(
        1.0,
        "positive",
        "Seconds between two outbox relay passes when nothing wakes the relay sooner.",
    ),
    "BROADCAST_PUBLISH_IN_TESTS": Setting(
        False,
        "flag",
        "Whether events reach Redis while Django's test environment is set up.",
    ),
    "BROADCAST_REDIS_TIMEOUT": Setting(
        0.5,
        "positive",
        "Seconds the publisher waits on Redis (connect and reply) before giving up.",
    ),
    "BROADCAST_REDIS_CLUSTER": Setting(
        None,
        "cluster_nodes",
        'Redis Cluster (or Valkey cluster mode) startup nodes, ``["host:port", ...]``: '
        "events are logged, published and listened to (sharded pub/sub) through the cluster "
        "instead of the channel layer's hosts (None: not a cluster).",
    ),
    "BROADCAST_QUEUE_SIZE": Setting(
        10_000,
        "positive",
        "Events a process holds for its publisher thread; more are dropped (and counted).",
    ),
    "BROADCAST_FLUSH_TIMEOUT": Setting(
        2.0,
        "positive",
        "Seconds a process waits at exit for queued events to be published.",
    ),
    "BROADCAST_OUTAGE_BUFFER": Setting(
        10_000,
        "positive",
        "Events a process keeps while Redis is down; beyond, the oldest are dropped and their"
        " models' subscribers get ``reset``.",
    ),
    "BROADCAST_RECOVERY_INTERVAL": Setting(
        5.0,
        "positive",
        "Seconds between two checks that this instance missed no event (gap repair).",
    ),
    "BROADCAST_LOG_MAXLEN": Setting(
        10_000,
        "positive",
        "Events kept per model in the Redis stream that assigns ids (up to 1.5 times as many).",
    ),
    "BROADCAST_LOG_MAX_AGE": Setting(
        3600,
        "positive_or_zero",
        "Seconds an event stays in its model's log for resume (approximately; 0: no limit).",
    ),
    "BROADCAST_MAX_FRAME_BYTES": Setting(
        4096,
        "positive",
        "Largest websocket frame accepted from a client; larger ones get ``too_large``.",
    ),
    "BROADCAST_MAX_SUBSCRIPTIONS": Setting(
        100,
        "positive",
        "Subscriptions one websocket connection may hold at once.",
    ),
    "BROADCAST_RESUME_MAX_EVENTS": Setting(
        1000,
        "positive",
        "Most events one resume (``since``) replays; more after ``since`` is a ``reset``.",
    ),
    "BROADCAST_RESUME_RATE": Setting(
        20,
        "positive",
        "Resumes a connection may start per ``BROADCAST_RESUME_WINDOW``; more are ``reset``.",
    ),
    "BROADCAST_RESUME_WINDOW": Setting(
        10.0,
        "positive",
        "Seconds in which a connection's ``BROADCAST_RESUME_RATE`` resumes come back.",
    ),
    "BROADCAST_RESUME_CONCURRENCY": Setting(
        1,
        "positive",
        "Resumes one instance reads and replays at once (waiting longer for a turn: ``busy``).",
    ),
    "BROADCAST_SEND_QUEUE_SIZE": Setting(
        1000,
        "positive",
        "Frames queued per websocket connection; past it, its events become ``reset``s.",
    ),
    "BROADCAST_SEND_TIMEOUT": Setting(
        10.0,
        "positive",
        "Seconds a client may take no data while frames wait; then it is closed (4008).",
    ),
    "BROADCAST_HEARTBEAT_INTERVAL": Setting(
        5.0,
        "positive",
        "Seconds between two heartbeats by which an instance reports itself in Redis.",
    ),
    "BROADCAST_HEARTBEAT_TTL": Setting(
        15.0,
        "positive",
        "Seconds after its last heartbeat that an instance drops off the dashboard.",
    ),
    "BROADCAST_CONFIRM_TIMEOUT": Setting(
        5.0,
        "positive",
        "Seconds an instance may go without confirming that it still receives from Redis; "
        "past it, it serves no cache hits and sends ``reset`` (``disconnected``).",
    ),
    "BROADCAST_FEED_SIZE": Setting(
        50,
        "positive",
        "Latest events (metadata only) each instance keeps in memory for the dashboard.",
    ),
    "BROADCAST_DASHBOARD_REFRESH": Setting(
        2.0,
        "positive",
        "Seconds between two refreshes of the staff dashboard (it polls status.json).",
    ),
    "BROADCAST_FAST_PATHS": Setting(
        True,
        "fast_paths",
        "Other libraries' undocumented fast paths allowed (True: all, False: none, or a "
        "collection of names; see docs/architecture.md): each is also checked at use.",
    ),
    "BROADCAST_REVALIDATE_INTERVAL": Setting(
        5.0,
        "positive",
        "Seconds between two checks that each open websocket's user is still logged in, "
        "active and allowed to see its subscriptions (the bound on revocation).",
    ),
    "BROADCAST_WRAP_QUERYSETS": Setting(
        True,
        "flag",
        "Wrap ``QuerySet.update/bulk_create/bulk_update/delete`` so bulk writes of registered"
        " models broadcast; False leaves QuerySet alone (use ``publish_changes``).",
    ),
    "BROADCAST_DELETE_CHUNK_SIZE": Setting(
        None,
        "positive_or_none",
        "Rows a ``QuerySet.delete()`` of registered models hands Django's collector at a "
        "time (memory bounded by it; one ``SELECT`` of the pks and one per chunk more); "
        "None: every row at once, as Django's own delete with any receiver.",
    ),
    "BROADCAST_FRAME_BURST": Setting(
        200,
        "positive",
        "Frames a websocket client may send at once (then ``BROADCAST_FRAME_RATE`` per "
        "second); more get ``error`` ``rate_limited``.",
    ),
    "BROADCAST_FRAME_RATE": Setting(
        20.0,
        "positive",
        "Frames per second a websocket client may send, past its ``BROADCAST_FRAME_BURST``.",
    ),
    "BROADCAST_PRESENCE_TTL": Setting(
        6.0,
        "positive",
        "Seconds a presence member outlives the last refresh by its instance (every third "
        "of it): a killed instance's members are gone within 4/3 of it.",
    ),
    "BROADCAST_PRESENCE_STATE_BYTES": Setting(
        1024,
        "positive",
        "Largest ``state`` (bytes of its JSON) a presence member may carry.",
    ),
    "BROADCAST_PRESENCE_MAX_MEMBERS": Setting(
        100,
        "positive",
        "Users present on one object at most; a further one's join is refused.",
    ),
    "BROADCAST_PRESENCE_RATE": Setting(
        10.0,
        "positive",
        "Presence joins and updates per second one connection may send (a burst of as "
        "many, then that rate); more are refused (``rate_limited``).",
    ),
    "BROADCAST_PRESENCE_USER": Setting(
        "broadcast_app.instance.presence.default_user",
        "callable",
        "What a presence member shows of its user: a callable (or its dotted path) given "
        "the user, returning a JSON-able dict (default: id, username, full name).",
    ),
    "BROADCAST_FILTER_MAX_CONDITIONS": Setting(
        10,
        "positive",
        "Conditions one filtered subscription's ``where`` may hold.",
    ),
    "BROADCAST_FILTER_MAX_VALUES": Setting(
        100,
        "positive",
        "Values one ``__in`` condition of a ``where`` may list.",
    ),
    "BROADCAST_FILTER_MAX_TEXT": Setting(
        200,
        "positive",
        "Characters one string value of a ``where`` may hold.",
    ),
    "BROADCAST_SNAPSHOT_MAX_ROWS": Setting(
        1000,
        "positive",
        "Most rows one snapshot (``subscribe`` with ``snapshot``) sends.",
    ),
    "BROADCAST_SNAPSHOT_MAX_SCAN": Setting(
        10000,
        "positive",
        "Most rows one snapshot reads from the database (a filter the database cannot "
        "answer, or rows an ``object_check`` refuses, are read and skipped).",
    ),
}

# Read on every save: a setting left at its default would otherwise cost an
# AttributeError raised and caught inside Django's settings object each time.
_read: dict[str, Any] = {}
# Taken on a miss and by forget(): a value read before a change cannot be stored after
# the change was signalled (the signal always follows the change).
_lock = threading.Lock()


def _setting(name: str) -> Any:
    try:
        return _read[name]
    except KeyError:
        return _remember(name, lambda: getattr(settings, name, SETTINGS[name].default))


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
    """Typed access to the ``BROADCAST_*`` settings (defaults and meanings: ``SETTINGS``)."""

    @property
    def BROADCAST_ENABLED(self) -> bool:
        return bool(_setting("BROADCAST_ENABLED"))

    @property
    def BROADCAST_CHANNEL_LAYER(self) -> str:
        return str(_setting("BROADCAST_CHANNEL_LAYER"))

    @property
    def BROADCAST_GROUP_PREFIX(self) -> str:
        return str(_setting("BROADCAST_GROUP_PREFIX"))

    @property
    def BROADCAST_CACHE_ALIAS(self) -> str:
        return str(_setting("BROADCAST_CACHE_ALIAS"))

    @property
    def BROADCAST_CACHE_TIMEOUT(self) -> int | None:
        value = _setting("BROADCAST_CACHE_TIMEOUT")
        return None if value is None else int(value)

    @property
    def BROADCAST_INSTANCE_ID(self) -> str:
        return _instance_id()

    @property
    def BROADCAST_PUBLISH_IN_TESTS(self) -> bool:
        return bool(_setting("BROADCAST_PUBLISH_IN_TESTS"))

    @property
    def BROADCAST_REDIS_TIMEOUT(self) -> float:
        return float(_setting("BROADCAST_REDIS_TIMEOUT"))

    @property
    def BROADCAST_REDIS_CLUSTER(self) -> list[str] | None:
        value = _setting("BROADCAST_REDIS_CLUSTER")
        return None if value is None else [str(node) for node in value]

    @property
    def BROADCAST_DELIVERY(self) -> str:
        return str(_setting("BROADCAST_DELIVERY"))

    @property
    def BROADCAST_OUTBOX_RELAY(self) -> bool:
        return bool(_setting("BROADCAST_OUTBOX_RELAY"))

    @property
    def BROADCAST_OUTBOX_INTERVAL(self) -> float:
        return float(_setting("BROADCAST_OUTBOX_INTERVAL"))

    @property
    def BROADCAST_QUEUE_SIZE(self) -> int:
        return int(_setting("BROADCAST_QUEUE_SIZE"))

    @property
    def BROADCAST_OUTAGE_BUFFER(self) -> int:
        return int(_setting("BROADCAST_OUTAGE_BUFFER"))

    @property
    def BROADCAST_FLUSH_TIMEOUT(self) -> float:
        return float(_setting("BROADCAST_FLUSH_TIMEOUT"))

    @property
    def BROADCAST_LOG_MAXLEN(self) -> int:
        return int(_setting("BROADCAST_LOG_MAXLEN"))

    @property
    def BROADCAST_RECOVERY_INTERVAL(self) -> float:
        return float(_setting("BROADCAST_RECOVERY_INTERVAL"))

    @property
    def BROADCAST_LOG_MAX_AGE(self) -> float:
        return float(_setting("BROADCAST_LOG_MAX_AGE"))

    @property
    def BROADCAST_MAX_FRAME_BYTES(self) -> int:
        return int(_setting("BROADCAST_MAX_FRAME_BYTES"))

    @property
    def BROADCAST_MAX_SUBSCRIPTIONS(self) -> int:
        return int(_setting("BROADCAST_MAX_SUBSCRIPTIONS"))

    @property
    def BROADCAST_RESUME_MAX_EVENTS(self) -> int:
        return int(_setting("BROADCAST_RESUME_MAX_EVENTS"))

    @property
    def BROADCAST_RESUME_RATE(self) -> int:
        return int(_setting("BROADCAST_RESUME_RATE"))

    @property
    def BROADCAST_RESUME_WINDOW(self) -> float:
        return float(_setting("BROADCAST_RESUME_WINDOW"))

    @property
    def BROADCAST_RESUME_CONCURRENCY(self) -> int:
        return int(_setting("BROADCAST_RESUME_CONCURRENCY"))

    @property
    def BROADCAST_SEND_QUEUE_SIZE(self) -> int:
        return int(_setting("BROADCAST_SEND_QUEUE_SIZE"))

    @property
    def BROADCAST_SEND_TIMEOUT(self) -> float:
        return float(_setting("BROADCAST_SEND_TIMEOUT"))

    @property
    def BROADCAST_HEARTBEAT_INTERVAL(self) -> float:
        return float(_setting("BROADCAST_HEARTBEAT_INTERVAL"))

    @property
    def BROADCAST_HEARTBEAT_TTL(self) -> float:
        return float(_setting("BROADCAST_HEARTBEAT_TTL"))

    @property
    def BROADCAST_FEED_SIZE(self) -> int:
        return int(_setting("BROADCAST_FEED_SIZE"))

    @property
    def BROADCAST_DASHBOARD_REFRESH(self) -> float:
        return float(_setting("BROADCAST_DASHBOARD_REFRESH"))

    @property
    def BROADCAST_REVALIDATE_INTERVAL(self) -> float:
        return float(_setting("BROADCAST_REVALIDATE_INTERVAL"))

    @property
    def BROADCAST_CONFIRM_TIMEOUT(self) -> float:
        return float(_setting("BROADCAST_CONFIRM_TIMEOUT"))

    @property
    def BROADCAST_WRAP_QUERYSETS(self) -> bool:
        return bool(_setting("BROADCAST_WRAP_QUERYSETS"))

    @property
    def BROADCAST_DELETE_CHUNK_SIZE(self) -> int | None:
        value = _setting("BROADCAST_DELETE_CHUNK_SIZE")
        return None if value is None else int(value)

    @property
    def BROADCAST_FRAME_BURST(self) -> int:
        return int(_setting("BROADCAST_FRAME_BURST"))

    @property
    def BROADCAST_FRAME_RATE(self) -> float:
        return float(_setting("BROADCAST_FRAME_RATE"))

    @property
    def BROADCAST_FAST_PATHS(self) -> bool | frozenset[str]:
        value = _setting("BROADCAST_FAST_PATHS")
        return value if isinstance(value, bool) else frozenset(value)

    @property
    def BROADCAST_PRESENCE_TTL(self) -> float:
        return float(_setting("BROADCAST_PRESENCE_TTL"))

    @property
    def BROADCAST_PRESENCE_STATE_BYTES(self) -> int:
        return int(_setting("BROADCAST_PRESENCE_STATE_BYTES"))

    @property
    def BROADCAST_PRESENCE_MAX_MEMBERS(self) -> int:
        return int(_setting("BROADCAST_PRESENCE_MAX_MEMBERS"))

    @property
    def BROADCAST_PRESENCE_RATE(self) -> float:
        return float(_setting("BROADCAST_PRESENCE_RATE"))

    @property
    def BROADCAST_PRESENCE_USER(self) -> str | Callable[[Any], dict[str, Any]]:
        value = _setting("BROADCAST_PRESENCE_USER")
        return value if callable(value) else str(value)

    @property
    def BROADCAST_FILTER_MAX_CONDITIONS(self) -> int:
        return int(_setting("BROADCAST_FILTER_MAX_CONDITIONS"))

    @property
    def BROADCAST_FILTER_MAX_VALUES(self) -> int:
        return int(_setting("BROADCAST_FILTER_MAX_VALUES"))

    @property
    def BROADCAST_FILTER_MAX_TEXT(self) -> int:
        return int(_setting("BROADCAST_FILTER_MAX_TEXT"))

    @property
    def BROADCAST_SNAPSHOT_MAX_ROWS(self) -> int:
        return int(_setting("BROADCAST_SNAPSHOT_MAX_ROWS"))

    @property
    def BROADCAST_SNAPSHOT_MAX_SCAN(self) -> int:
        return int(_setting("BROADCAST_SNAPSHOT_MAX_SCAN"))


# Each property's docstring is its setting's meaning, from the one table.
for _name, _member in vars(Settings).items():
    if isinstance(_member, property):
        _member.__doc__ = SETTINGS[_name].meaning

conf = Settings()

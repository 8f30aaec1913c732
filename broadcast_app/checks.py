"""System checks: misconfiguration is reported at startup with a hint, not at the first save."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from .conf import conf
from .layer import PUBSUB_BACKEND, layer_config
from .registry import all_configs
from .upstream import FAST_PATHS

_POSITIVE_INTS: tuple[str, ...] = (
    "BROADCAST_QUEUE_SIZE",
    "BROADCAST_OUTAGE_BUFFER",
    "BROADCAST_LOG_MAXLEN",
    "BROADCAST_MAX_FRAME_BYTES",
    "BROADCAST_MAX_SUBSCRIPTIONS",
    "BROADCAST_SEND_QUEUE_SIZE",
    "BROADCAST_FEED_SIZE",
)
_POSITIVE_FLOATS: tuple[str, ...] = (
    "BROADCAST_REDIS_TIMEOUT",
    "BROADCAST_FLUSH_TIMEOUT",
    "BROADCAST_SEND_TIMEOUT",
    "BROADCAST_HEARTBEAT_INTERVAL",
    "BROADCAST_HEARTBEAT_TTL",
    "BROADCAST_DASHBOARD_REFRESH",
    "BROADCAST_OUTBOX_INTERVAL",
    "BROADCAST_REVALIDATE_INTERVAL",
)
# The resume budget (per connection and per instance): a 0 would refuse every resume.
_POSITIVE_INTS += (
    "BROADCAST_RESUME_MAX_EVENTS",
    "BROADCAST_RESUME_RATE",
    "BROADCAST_RESUME_CONCURRENCY",
)
_POSITIVE_FLOATS += ("BROADCAST_RESUME_WINDOW",)
# What a filtered subscription may ask of every event, and a snapshot of the database:
# a 0 would refuse every filter or snapshot.
_POSITIVE_INTS += (
    "BROADCAST_FILTER_MAX_CONDITIONS",
    "BROADCAST_FILTER_MAX_VALUES",
    "BROADCAST_FILTER_MAX_TEXT",
    "BROADCAST_SNAPSHOT_MAX_ROWS",
    "BROADCAST_SNAPSHOT_MAX_SCAN",
)
DELIVERY_MODES = ("best_effort", "outbox")
# Delivery guarantees: gap repair and the liveness probe. Zero would spin the listener's
# loops; a negative age or cache timeout would keep nothing.
_DELIVERY_FLOATS = ("BROADCAST_RECOVERY_INTERVAL", "BROADCAST_CONFIRM_TIMEOUT")
#: the numeric settings that must be a positive, finite number (E006)
POSITIVE: tuple[str, ...] = _POSITIVE_INTS + _POSITIVE_FLOATS + _DELIVERY_FLOATS
#: settings where 0 (or None) has a documented meaning, and only a negative is wrong
_NON_NEGATIVE = {
    "BROADCAST_LOG_MAX_AGE": "0 means no age limit",
    "BROADCAST_CACHE_TIMEOUT": "None keeps entries until evicted",
}


def _valid(name: str, allow_zero: bool = False, allow_none: bool = False) -> bool:
    """Whether setting ``name`` reads as a finite number above 0 (or 0, or None)."""
    if isinstance(getattr(settings, name, None), bool):
        return False  # True would read as 1: a flag given where a number belongs
    try:
        value = getattr(conf, name)
        if value is None:
            return allow_none
        # Infinity too: a timeout or TTL of inf fails in redis-py at every call.
        finite = math.isfinite(value)
    except (TypeError, ValueError, OverflowError):  # "x", [1], "1e400" as int, 10**400
        return False
    return finite and (value > 0 or (allow_zero and value == 0))


@register(Tags.compatibility)
def check_channel_layer(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list[CheckMessage]:
    alias = conf.BROADCAST_CHANNEL_LAYER
    entry = layer_config()
    if not entry:
        return [
            Error(
                f"CHANNEL_LAYERS has no {alias!r} layer, which BROADCAST_CHANNEL_LAYER names.",
                hint=(
                    f"Add CHANNEL_LAYERS[{alias!r}] = {{'BACKEND': '{PUBSUB_BACKEND}', "
                    "'CONFIG': {'hosts': ['redis://127.0.0.1:6379/0']}}, or point "
                    "BROADCAST_CHANNEL_LAYER at an existing alias."
                ),
                id="broadcast_app.E001",
            )
        ]
    errors: list[CheckMessage] = []
    if entry.get("BACKEND") != PUBSUB_BACKEND:
        errors.append(
            Error(
                f"CHANNEL_LAYERS[{alias!r}] uses {entry.get('BACKEND')!r}; broadcast_app "
                "needs channels-redis' pub/sub layer.",
                hint=(
                    f"Set its BACKEND to '{PUBSUB_BACKEND}' (the core RedisChannelLayer drops "
                    "group messages at capacity), or add a separate pub/sub alias and name "
                    "it in BROADCAST_CHANNEL_LAYER."
                ),
                id="broadcast_app.E002",
            )
        )
    config = entry.get("CONFIG") or {}
    if config.get("symmetric_encryption_keys") or config.get(
        "serializer_format", "msgpack"
    ) not in (
        "msgpack",
        "json",
    ):
        errors.append(
            Error(
                f"CHANNEL_LAYERS[{alias!r}] uses encryption or a custom serializer_format, "
                "which broadcast_app cannot publish in.",
                hint="Use a separate layer alias with serializer_format 'msgpack' (or 'json') "
                "and no symmetric_encryption_keys for BROADCAST_CHANNEL_LAYER.",
                id="broadcast_app.E003",
            )
        )
    return errors


@register(Tags.caches)
def check_cache(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    alias = conf.BROADCAST_CACHE_ALIAS
    if alias not in getattr(settings, "CACHES", {}):
        return [
            Error(
                f"BROADCAST_CACHE_ALIAS names {alias!r}, which is not in CACHES.",
                hint="Add that alias to CACHES (a LocMemCache keeps one cache per instance) "
                "or set BROADCAST_CACHE_ALIAS to an existing one.",
                id="broadcast_app.E004",
            )
        ]
    return []


@register(Tags.models)
def check_registry(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    for config in all_configs():
        unknown = config.unknown_field_names()
        if unknown:
            errors.append(
                Error(
                    f"broadcast_app.register({config.model.__name__}) names unknown field(s): "
                    + ", ".join(unknown),
                    hint="fields and exclude take names of the model's concrete fields.",
                    obj=config.model,
                    id="broadcast_app.E005",
                )
            )
    return errors


@register()
def check_numbers(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    return [
        Error(
            f"{name} must be a positive number.",
            hint=f"Remove {name} to use its default, or give a finite number above 0.",
            id="broadcast_app.E006",
        )
        for name in POSITIVE
        if not _valid(name)
    ]


@register()
def check_delivery(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    mode = conf.BROADCAST_DELIVERY
    if mode in DELIVERY_MODES:
        return []
    return [
        Error(
            f"BROADCAST_DELIVERY is {mode!r}; it must be 'best_effort' or 'outbox'.",
            hint="'best_effort' (the default) holds events in memory while Redis is down; "
            "'outbox' writes them to a table in the saving transaction (run migrate, and "
            "manage.py broadcast_relay or BROADCAST_OUTBOX_RELAY = True).",
            id="broadcast_app.E007",
        )
    ]


@register()
def check_limits(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    return [
        Error(
            f"{name} must be a positive number ({meaning}).",
            hint=f"Remove {name} to use its default, or give a finite number above 0.",
            id="broadcast_app.E010",
        )
        for name, meaning in _NON_NEGATIVE.items()
        if not _valid(
            name,
            allow_zero=name == "BROADCAST_LOG_MAX_AGE",
            allow_none=name == "BROADCAST_CACHE_TIMEOUT",
        )
    ]


@register()
def check_wrap_querysets(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list[CheckMessage]:
    if conf.BROADCAST_WRAP_QUERYSETS or not all_configs():
        return []
    return [
        Warning(
            "BROADCAST_WRAP_QUERYSETS is False: QuerySet.update(), bulk_create(), "
            "bulk_update() and delete() of registered models broadcast nothing.",
            hint="After each bulk write, call broadcast_app.publish_changes(model, pks, "
            "op=...) with the rows it wrote, or set BROADCAST_WRAP_QUERYSETS = True.",
            id="broadcast_app.W020",
        )
    ]


@register()
def check_fast_paths(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    value = getattr(settings, "BROADCAST_FAST_PATHS", True)
    if isinstance(value, bool):
        return []
    names = [value] if isinstance(value, str) else value
    try:
        unknown = sorted(str(name) for name in names if name not in FAST_PATHS)
    except TypeError:
        unknown = [repr(value)]
    if isinstance(value, str) or unknown:
        return [
            Error(
                "BROADCAST_FAST_PATHS must be True, False or a collection of fast path names"
                + (f"; unknown: {', '.join(unknown)}." if unknown else "."),
                hint=f"Known names: {', '.join(sorted(FAST_PATHS))} (docs/architecture.md, "
                "'Private APIs we use').",
                id="broadcast_app.E011",
            )
        ]
    return []

"""System checks: misconfiguration is reported at startup with a hint, not at the first save."""

from __future__ import annotations

import math
from collections.abc import Sequence
from importlib.metadata import version
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.utils.module_loading import import_string

from .conf import DELIVERY_MODES, SETTINGS, Kind, conf
from .events.model_configs import all_configs
from .transport.cluster import client_problem, nodes_problem
from .transport.routes import PUBSUB_BACKEND, layer_config
from .upstream import FAST_PATHS

#: the numeric settings that must be a positive, finite number (E006): a zero would
#: refuse every resume, spin the listener's loops or time out every call
POSITIVE: tuple[str, ...] = tuple(n for n, s in SETTINGS.items() if s.kind == "positive")
#: settings where 0 (or None) has a documented meaning, and only a negative is wrong (E010)
_NON_NEGATIVE = {
    "BROADCAST_LOG_MAX_AGE": "0 means no age limit",
    "BROADCAST_CACHE_TIMEOUT": "None keeps entries until evicted",
    "BROADCAST_DELETE_CHUNK_SIZE": "None deletes every row at once",
}
#: every kind of setting in conf.SETTINGS, and the check id that validates it
CHECK_OF_KIND: dict[Kind, str] = {
    "flag": "broadcast_app.E012",
    "text": "broadcast_app.E013",
    "instance_id": "broadcast_app.E013",
    "positive": "broadcast_app.E006",
    "positive_or_zero": "broadcast_app.E010",
    "positive_or_none": "broadcast_app.E010",
    "delivery": "broadcast_app.E007",
    "fast_paths": "broadcast_app.E011",
    "callable": "broadcast_app.E030",
    "cluster_nodes": "broadcast_app.E014",
}


def _named(*kinds: Kind) -> list[str]:
    return [name for name, setting in SETTINGS.items() if setting.kind in kinds]


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
        for name in _named("positive_or_zero", "positive_or_none")
        if not _valid(
            name,
            allow_zero=SETTINGS[name].kind == "positive_or_zero",
            allow_none=SETTINGS[name].kind == "positive_or_none",
        )
        for meaning in [_NON_NEGATIVE[name]]
    ]


@register()
def check_frame_burst(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list[CheckMessage]:
    names = ("BROADCAST_FRAME_BURST", "BROADCAST_MAX_SUBSCRIPTIONS")
    if not all(_valid(name) for name in names):
        return []  # E006 says what is wrong
    if conf.BROADCAST_FRAME_BURST > conf.BROADCAST_MAX_SUBSCRIPTIONS:
        return []
    return [
        Warning(
            f"BROADCAST_FRAME_BURST ({conf.BROADCAST_FRAME_BURST}) leaves no room for a client "
            f"that subscribes to its BROADCAST_MAX_SUBSCRIPTIONS "
            f"({conf.BROADCAST_MAX_SUBSCRIPTIONS}) at once, as broadcast.js does on connecting: "
            "some of its subscribe frames would get error rate_limited.",
            hint="Set BROADCAST_FRAME_BURST above BROADCAST_MAX_SUBSCRIPTIONS (the default "
            "is twice the default subscriptions).",
            id="broadcast_app.W021",
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
    value = getattr(settings, "BROADCAST_FAST_PATHS", SETTINGS["BROADCAST_FAST_PATHS"].default)
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


@register()
def check_flags(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    # Read raw: conf gives bool(value), and a flag set from an environment variable
    # ("False", "0") would read as True.
    return [
        Error(
            f"{name} must be True or False, not {type(value).__name__} {value!r}.",
            hint=f"Remove {name} to use its default ({SETTINGS[name].default}), or set it "
            "to True or False (a string from the environment needs converting).",
            id="broadcast_app.E012",
        )
        for name in _named("flag")
        for value in [getattr(settings, name, SETTINGS[name].default)]
        if not isinstance(value, bool)
    ]


@register()
def check_text(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    return [
        Error(
            f"{name} must be a string, not {type(value).__name__}"
            + (" (or None for the default)." if none_ok else "."),
            hint=f"Remove {name} to use its default, or give a string.",
            id="broadcast_app.E013",
        )
        for name in _named("text", "instance_id")
        for value in [getattr(settings, name, SETTINGS[name].default)]
        for none_ok in [SETTINGS[name].kind == "instance_id"]
        if not (isinstance(value, str) or (none_ok and value is None))
    ]


@register()
def check_cluster(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    # Read raw: conf turns each node into a string.
    value = getattr(settings, "BROADCAST_REDIS_CLUSTER", None)
    problem = nodes_problem(value)
    if problem is not None:
        return [
            Error(
                f"BROADCAST_REDIS_CLUSTER must be None or a list of 'host:port' strings: "
                f"{problem}.",
                hint="Name some of the cluster's nodes, e.g. BROADCAST_REDIS_CLUSTER = "
                "['10.0.0.1:7000', '10.0.0.2:7000'] (the client finds the others), or "
                "remove the setting to use the channel layer's hosts.",
                id="broadcast_app.E014",
            )
        ]
    # The distribution's metadata, not redis itself: setup must not import redis-py
    # (the publisher thread does, at the first save; tests/test_package_shape.py).
    client = None if value is None else client_problem(version("redis"))
    if client is not None:
        return [
            Error(
                f"BROADCAST_REDIS_CLUSTER needs redis-py 8.0 or later: {client}.",
                hint="Install redis>=8 (pip install 'redis>=8,<9'), or remove "
                "BROADCAST_REDIS_CLUSTER to use the channel layer's hosts.",
                id="broadcast_app.E015",
            )
        ]
    return []


@register()
def check_presence_user(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list[CheckMessage]:
    hook = getattr(settings, "BROADCAST_PRESENCE_USER", None)
    if hook is None or callable(hook):
        return []
    try:
        found = import_string(hook) if isinstance(hook, str) else None
    except ImportError as exc:
        found, problem = None, f"it cannot be imported ({exc})"
    else:
        problem = "it is not a callable"
    if callable(found):
        return []
    return [
        Error(
            f"BROADCAST_PRESENCE_USER must be a callable or its dotted path: {problem}.",
            hint="Name a function taking the user and returning a dict of what presence "
            "members show of it, e.g. 'broadcast_app.instance.presence.default_user'.",
            id="broadcast_app.E030",
        )
    ]

"""The figures behind the dashboard and ``status.json``: this instance, its peers, Redis.

This instance's figures are read live; the other instances' come from their last
heartbeat in Redis (see :mod:`broadcast_app.instance.heartbeat`). Nothing here reads event
data: counters, names of registered fields, and the metadata kept by
:mod:`broadcast_app.instance.feed`. Being staff is not enough to see a model: its feed entries
and its row are shown only to users with its view permission, and the names of
excluded fields are never shown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import redis

from ..conf import conf
from ..events.model_configs import all_configs
from ..events.wire import origin_id
from .feed import feed, iso
from .figures import STARTED_AT, cache_entries, instance_figures
from .hub import hub

# Where they were before figures.py held them.
__all__ = ["STARTED_AT", "cache_entries", "gather", "instance_figures", "visible_labels"]

logger = logging.getLogger(__name__)


def visible_labels(user: Any) -> set[str]:
    """Labels of the registered models ``user`` may see (their view permission)."""
    return {config.label for config in all_configs() if user.has_perm(config.view_permission)}


def models(visible: set[str]) -> list[dict[str, Any]]:
    """How the registered models among ``visible`` broadcast."""
    return [
        {
            "label": config.label,
            "fields": [f.name for f in config.broadcast_fields],
            "permission": config.view_permission,
            "serializer": _name(config.serializer),
            "object_check": _name(config.object_check),
            "last_id": hub.last_ids.get(config.label),
        }
        for config in all_configs()
        if config.label in visible
    ]


def _name(function: Any) -> str | None:
    if function is None:
        return None
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', '?')}"


async def redis_health(client: Any) -> dict[str, Any]:
    """Version, memory and clients of the Redis the heartbeats use."""
    try:
        info = await asyncio.wait_for(client.info(), conf.BROADCAST_REDIS_TIMEOUT * 2)
    except (redis.RedisError, OSError, TimeoutError) as exc:
        return {"ok": False, "error": _describe(exc)}
    return {
        "ok": True,
        "version": info.get("redis_version"),
        "uptime_s": info.get("uptime_in_seconds"),
        "used_memory": info.get("used_memory"),
        "used_memory_human": info.get("used_memory_human"),
        "maxmemory": info.get("maxmemory"),
        "connected_clients": info.get("connected_clients"),
        "pubsub_channels": info.get("pubsub_channels"),
    }


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _visible_presence(figures: dict[str, Any], visible: set[str]) -> dict[str, int]:
    """An instance's present connections per model, of the ``visible`` models only."""
    counts = figures.get("presence")
    if not isinstance(counts, dict):
        return {}  # (an instance of a version without presence)
    return {label: int(n) for label, n in counts.items() if label in visible}


async def gather(visible: set[str]) -> dict[str, Any]:
    """Everything ``status.json`` returns: this instance, the live ones, Redis, and the
    models in ``visible`` (see :func:`visible_labels`) with their latest events."""
    from .heartbeat import connect, live_instances

    this = instance_figures()
    async with connect() as client:
        redis_info = await redis_health(client)
        try:
            peers = await live_instances(client) if redis_info["ok"] else []
        except (redis.RedisError, OSError, TimeoutError) as exc:
            peers = []
            redis_info = {"ok": False, "error": _describe(exc)}
    # This instance from its live figures; the others from their heartbeats.
    instances = [dict(peer, self=False) for peer in peers if peer.get("id") != this["id"]]
    instances.append(dict(this, self=True))
    instances.sort(key=lambda figures: str(figures.get("id")))
    # Events carry an opaque origin (events.origin_id); staff see whose it is.
    origins = {}
    for figures in instances:
        figures["origin"] = origin_id(str(figures.get("id")))
        origins[figures["origin"]] = figures.get("id")
    # Presence per model over every instance, of the models this user may see only.
    present: dict[str, int] = {}
    this["presence"] = _visible_presence(this, visible)
    for figures in instances:
        figures["presence"] = _visible_presence(figures, visible)
        for label, n in figures["presence"].items():
            present[label] = present.get(label, 0) + n
    receipts = [receipt.as_dict() for receipt in feed.latest() if receipt.model in visible]
    for receipt in receipts:
        receipt["origin_instance"] = origins.get(receipt["origin"])
    return {
        "generated_at": iso(time.time()),
        "instance": this,
        "instances": instances,
        "rate": {"step_s": 5, "window_s": 300, "per_second": feed.rate(step=5, window=300)},
        "feed": receipts,
        "models": [{**row, "present": present.get(row["label"], 0)} for row in models(visible)],
        "redis": redis_info,
        "settings": {
            "heartbeat_interval_s": conf.BROADCAST_HEARTBEAT_INTERVAL,
            "heartbeat_ttl_s": conf.BROADCAST_HEARTBEAT_TTL,
            "refresh_s": conf.BROADCAST_DASHBOARD_REFRESH,
        },
    }

"""The per-instance broadcast cache: each object's broadcast data, kept current by events.

Built on Django's cache framework (alias ``BROADCAST_CACHE_ALIAS``). A miss loads the
row from the database and stores it with ``add`` (never overwriting), so a load that
raced with an incoming event cannot put stale data over the event's. ``created`` and
``updated`` events overwrite the entry; ``deleted`` replaces it with a short-lived
tombstone so a racing miss cannot bring the row back. An event naming ``unknown``
fields completes the entry it finds, or else leaves a short-lived marker under which
reads go to the database. Entries hold broadcast data only,
exactly as in events (after a JSON round trip): never an excluded field.

Entries are only as current as the events that reached this instance. So where a
listener runs, hits are served only while it keeps confirming that it receives from
Redis (see ``Listener``: a probe through its own subscription at least every
``BROADCAST_CONFIRM_TIMEOUT`` seconds); otherwise reads go to the database. A process
without a listener (a management command) serves hits as they are.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

from django.core.cache import BaseCache, caches
from django.core.cache.backends.dummy import DummyCache
from django.core.cache.backends.locmem import LocMemCache
from django.db import models

from ..conf import conf
from ..events.change import field_values, serialize, to_json_data
from ..events.model_configs import ModelConfig, get_config
from ..stats import stats

__all__ = ["Lookup", "apply_event", "delete", "fetch", "get"]

_TOMBSTONE_TIMEOUT = 60
# Until when (time.monotonic()) hits may be served; the listener moves it forward each
# time it confirms that it still receives from Redis. None: no listener runs here.
_hits_until: float | None = None


@dataclass(frozen=True, slots=True)
class Lookup:
    """The result of :func:`fetch`: the data (None if no such object) and whether it was cached."""

    data: dict[str, Any] | None
    hit: bool


def _cache() -> BaseCache:
    return caches[conf.BROADCAST_CACHE_ALIAS]


def _generation(cache: BaseCache, label: str) -> int:
    return int(cache.get(f"{conf.BROADCAST_GROUP_PREFIX}:gen:{label}") or 0)


def cache_key(label: str, pk: str, cache: BaseCache | None = None) -> str:
    """The cache key of one object's entry (in the model's current generation)."""
    generation = _generation(cache or _cache(), label)
    return f"{conf.BROADCAST_GROUP_PREFIX}:obj:{label}:{generation}:{pk}"


def clear_model(label: str) -> None:
    """Drop every entry of one model at once (a new generation; old entries expire)."""
    cache = _cache()
    key = f"{conf.BROADCAST_GROUP_PREFIX}:gen:{label}"
    cache.set(key, _generation(cache, label) + 1, None)


@functools.cache
def is_in_memory() -> bool:
    """True when cache calls never block on I/O, so the event loop may call them directly.

    Asked for every event: remembered until the cache settings change.
    """
    return isinstance(_cache(), (LocMemCache, DummyCache))


def serve_hits_until(deadline: float | None) -> None:
    """Serve hits until ``deadline`` (``time.monotonic()``), then read the database;
    None: serve hits (no listener in this process)."""
    global _hits_until
    _hits_until = deadline


def serving_hits() -> bool:
    """Whether :func:`fetch` may answer from the cache now."""
    deadline = _hits_until
    return deadline is None or time.monotonic() < deadline


def load(config: ModelConfig, pk: Any) -> dict[str, Any] | None:
    """Read one object's broadcast data from the database (None when it does not exist)."""
    instance = config.model._default_manager.filter(pk=pk).first()
    if instance is None:
        return None
    return to_json_data(serialize(config, instance, field_values(config, instance)))


def fetch(model: type[models.Model] | str, pk: Any) -> Lookup:
    """Return an object's broadcast data from this instance's cache, loading it on a miss."""
    config = get_config(model)
    if not serving_hits():
        # Events may not be reaching this instance: its entries may be stale. Nothing is
        # stored either; the events replayed once it receives again bring entries up to date.
        stats.incr("cache_bypassed")
        return Lookup(load(config, pk), False)
    cache = _cache()
    key = cache_key(config.label, str(pk), cache)
    entry = cache.get(key)
    if entry is not None and "unknown" in entry:
        return Lookup(load(config, pk), False)  # partly known: not stored (apply_event)
    if entry is not None:
        return Lookup(entry.get("data"), True)
    data = load(config, pk)
    if data is not None:
        cache.add(key, {"id": None, "data": data}, conf.BROADCAST_CACHE_TIMEOUT)
    return Lookup(data, False)


def get(model: type[models.Model] | str, pk: Any) -> dict[str, Any] | None:
    """Return an object's broadcast data (None if it does not exist), cached per instance."""
    return fetch(model, pk).data


def delete(model: type[models.Model] | str, pk: Any) -> None:
    """Drop one object's entry (the next :func:`get` reloads it)."""
    config = get_config(model)
    _cache().delete(cache_key(config.label, str(pk)))


def apply_event(event: dict[str, Any]) -> None:
    """Bring the cache in line with one received event (called by the listener)."""
    cache = _cache()
    key = cache_key(event["model"], event["pk"], cache)
    if event["op"] == "deleted":
        cache.set(key, {"id": event["id"], "data": None}, _TOMBSTONE_TIMEOUT)
    elif event.get("unknown"):
        # Data without some fields, which the event did not change: completed from the
        # entry, or else the row is read from the database until the marker expires
        # (a load that raced with the event cannot add its older data over it).
        entry = cache.get(key)
        if entry is not None and entry.get("data") is not None:
            data = {**entry["data"], **event["data"]}
            cache.set(key, {"id": event["id"], "data": data}, conf.BROADCAST_CACHE_TIMEOUT)
        else:
            cache.set(key, {"id": event["id"], "unknown": True}, _TOMBSTONE_TIMEOUT)
    else:
        cache.set(key, {"id": event["id"], "data": event["data"]}, conf.BROADCAST_CACHE_TIMEOUT)

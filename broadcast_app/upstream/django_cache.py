"""Counting the entries of a local-memory cache (Django's ``LocMemCache``), which its
API cannot do (fast path ``locmem_count``: its private ``_lock`` and ``_cache``). Public
path: the count is unknown (None), as for every other cache backend."""

from __future__ import annotations

from typing import Any

from django.core.cache.backends.locmem import LocMemCache

from . import enabled


def locmem_keys(backend: Any) -> list[str] | None:
    """The keys a ``LocMemCache`` holds (expired ones included), or None."""
    if not isinstance(backend, LocMemCache) or not enabled("locmem_count"):
        return None
    lock = getattr(backend, "_lock", None)
    entries: Any = getattr(backend, "_cache", None)
    if lock is None or not hasattr(entries, "keys"):
        return None
    with lock:
        return [key for key in entries if isinstance(key, str)]

"""Reads of the instance's cache, kept coherent from events: ``get``, ``fetch``, ``delete``.

A public entry point (see ``broadcast_app.urls``); the code is in ``broadcast_app.instance``.
"""

from __future__ import annotations

from broadcast_app.instance.cache import Lookup, apply_event, delete, fetch, get

__all__ = ["Lookup", "apply_event", "delete", "fetch", "get"]

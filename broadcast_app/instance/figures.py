"""This instance's figures: counters, its cache's size, whether it listens; never event
data. Its heartbeat publishes them (:mod:`.heartbeat`) and the dashboard shows them
(:mod:`.status`)."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from django.core.cache import caches

from .. import __version__
from ..conf import conf
from ..stats import stats
from ..upstream.django_cache import locmem_keys
from .feed import feed, iso
from .hub import hub
from .listener import listener
from .presence_local import local as presence

#: when this process's broadcast_app started (close enough to the server's start: the
#: runtime imports this module through the heartbeat as the instance starts)
STARTED_AT = time.time()


def cache_entries() -> int | None:
    """Entries in this instance's broadcast cache; None when the backend cannot tell.

    Only a local-memory cache can be counted without scanning a shared server.
    """
    keys = locmem_keys(caches[conf.BROADCAST_CACHE_ALIAS])
    if keys is None:
        return None
    marker = f":{conf.BROADCAST_GROUP_PREFIX}:obj:"
    return sum(1 for key in keys if marker in key)


def instance_figures() -> dict[str, Any]:
    """This instance's figures, as its heartbeat publishes them."""
    now = time.time()
    last = feed.last
    counts = stats.snapshot()
    return {
        "id": conf.BROADCAST_INSTANCE_ID,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "version": __version__,
        "started_at": iso(STARTED_AT),
        "uptime_s": round(now - STARTED_AT, 1),
        "listening": listener.running and listener.subscribed.is_set(),
        "connections": counts.get("connections_opened", 0) - counts.get("connections_closed", 0),
        "subscriptions": hub.count(),
        "published": counts.get("published", 0),
        "received": counts.get("received", 0),
        "delivered": counts.get("delivered", 0),
        "dropped": counts.get("dropped", 0),
        # resets sent to this instance's clients, and clients closed for falling behind
        "resets": counts.get("resets", 0),
        "slow_clients_closed": counts.get("slow_clients_closed", 0),
        "errors": sum(
            counts.get(name, 0)
            for name in ("publish_errors", "listener_errors", "cache_errors", "bad_events")
        ),
        "cache_entries": cache_entries(),
        # connections present (presence) per model; status.gather() shows visible ones only
        "presence": presence.counts(),
        "last_event_at": None if last is None else iso(last.received_at),
        "last_lag_ms": None if last is None else last.lag_ms,
        "reported_at": iso(now),
    }

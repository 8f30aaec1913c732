"""Where a server-rendered page's live parts resume from: the ``since`` of its first render.

A page shows the database as of its render; its script subscribes a moment later. A
resuming server replays what happened in between, if the page says which event its
state includes. This instance's listener knows the last event it received of each
model (``hub.last_ids``); an instance that has received none yet (just started, or a
quiet model) reads the id from the model's log in Redis instead: without it a change
made between render and subscribe would be lost until the next one. The read is
bounded by ``BROADCAST_REDIS_TIMEOUT``; when Redis does not answer the page renders
without ``since`` (the subscription then starts from the server's current position,
as before) and Redis is not asked again for ``RETRY_AFTER`` seconds, so a Redis outage
cannot slow every page down.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from ..conf import conf
from ..instance.hub import hub
from ..transport.redis_clients import failures, make_client
from ..transport.routes import route
from ..transport.testenv import held_back

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

#: seconds during which a Redis that did not answer is not asked again
RETRY_AFTER = 5.0

_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()
_quiet_until = 0.0


def render_since(label: str) -> str | None:
    """The id of an event the page's state includes, or None when none is known."""
    known = hub.last_ids.get(label)
    if known is not None:
        return known
    if held_back():  # a user's tests: never reach for a real Redis
        return None
    return _from_log(label)


def _from_log(label: str) -> str | None:
    global _quiet_until
    if time.monotonic() < _quiet_until:
        return None
    r = route(label)
    try:
        with _lock:
            client = _clients.get(r.key)
            if client is None:
                client = _clients[r.key] = make_client(r.host, conf.BROADCAST_REDIS_TIMEOUT)
        last = client.hget(r.meta, "last")
    except failures() as exc:
        _quiet_until = time.monotonic() + RETRY_AFTER
        logger.warning(
            "broadcast_app could not read %s's last event id from Redis (%s); pages render "
            "without since for %.0fs",
            label,
            exc,
            RETRY_AFTER,
        )
        return None
    if not last:
        return None
    return last.decode() if isinstance(last, bytes) else str(last)


def forget() -> None:
    """Drop the clients (the layer's hosts changed) and ask Redis again at once."""
    global _quiet_until
    with _lock:
        clients = list(_clients.values())
        _clients.clear()
        _quiet_until = 0.0
    for client in clients:
        client.close()

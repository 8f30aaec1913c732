"""The publisher thread's outage buffer: events Redis refused, waiting for it per host.

Events Redis refused (down, or slower than ``BROADCAST_REDIS_TIMEOUT``) wait here, oldest
first, and go out before newer ones once it answers again; past
``BROADCAST_OUTAGE_BUFFER`` the oldest are dropped and their models marked "lost", which
turns into a reset for their subscribers, never silence. One queue per Redis host: order
only matters per model, and a model lives on one host, so a host that is down holds back
its own models' events, not the others'.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable

from ..stats import stats
from ..transport.interface import Item, PublishingTransport
from ..transport.routes import route

logger = logging.getLogger(__name__)

_RETRY_MIN, _RETRY_MAX = 0.1, 2.0  # seconds between attempts while Redis is down
_DROPPED = "were dropped during an outage"  # why a model owes a reset


class _Waiting:
    """The events waiting for one Redis host, and when to try it again."""

    def __init__(self) -> None:
        self.events: deque[Item] = deque()
        #: models whose events were dropped (outage buffer full): each owes a reset
        self.lost: set[str] = set()
        self.retry_in = 0.0
        #: not before (monotonic time); 0: at once
        self.retry_at = 0.0


class OutageBuffer:
    """Encoded events on their way to Redis, per host, in order. Used by the publisher
    thread only (no lock)."""

    def __init__(self) -> None:
        self._pending: dict[str, _Waiting] = {}

    def next_retry(self) -> float | None:
        """Seconds until a host that failed is due again (None: nothing waits)."""
        if not self._pending:
            return None
        return max(0.0, min(w.retry_at for w in self._pending.values()) - time.monotonic())

    def add(self, events: Iterable[Item]) -> None:
        for event in events:
            # Grouped by today's host; each send routes again, so a held event follows a
            # settings change (tests point the layer at another Redis).
            key = route(event[0]).key
            waiting = self._pending.get(key)
            if waiting is None:
                waiting = self._pending[key] = _Waiting()
            waiting.events.append(event)

    def send(self, transport: PublishingTransport, pause: Callable[[], None]) -> None:
        """Send what waits for each host that is due, in order, then the resets it owes."""
        now = time.monotonic()
        # Not a host that failed a moment ago. Only the last write pauses before its
        # replies: another host's events must not wait for that pause.
        ready = [waiting for waiting in self._pending.values() if waiting.retry_at <= now]
        for index, waiting in enumerate(ready):
            _send_waiting(transport, waiting, pause if index == len(ready) - 1 else None)
        for key in [k for k, w in self._pending.items() if not w.events and not w.lost]:
            del self._pending[key]

    def trim(self, limit: int) -> None:
        """Drop the oldest events beyond ``limit``, longest queue first; their models
        owe a reset."""
        overflow = sum(len(w.events) for w in self._pending.values()) - limit
        for _ in range(max(0, overflow)):
            longest = max(self._pending.values(), key=lambda w: len(w.events))
            longest.lost.add(longest.events.popleft()[0])
            stats.incr("dropped")

    def empty(self) -> bool:
        """Whether no event waits (resets may still be owed)."""
        return not any(w.events for w in self._pending.values())

    def held(self) -> tuple[list[Item], set[str]]:
        """Every event that waits, and every model that owes a reset (at exit)."""
        events = [event for waiting in self._pending.values() for event in waiting.events]
        return events, set().union(*(waiting.lost for waiting in self._pending.values()))


def _send_waiting(
    transport: PublishingTransport, waiting: _Waiting, pause: Callable[[], None] | None
) -> None:
    """Send what waits for one host, in order, then the resets it owes. After a failure
    the rest waits, with a growing delay."""
    try:
        events = list(waiting.events)
        sent = transport.publish_batch(events, None, pause)[0] if events else 0
    except Exception:  # never let the thread die
        logger.exception("broadcast_app publisher failed on a batch")
        sent = 0
    for _ in range(sent):
        waiting.events.popleft()
    if not waiting.events and waiting.lost:
        waiting.lost -= transport.send_resets(waiting.lost, _DROPPED)
    if waiting.events or waiting.lost:
        waiting.retry_in = min(max(waiting.retry_in * 2, _RETRY_MIN), _RETRY_MAX)
        waiting.retry_at = time.monotonic() + waiting.retry_in

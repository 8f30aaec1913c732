"""Notice the events a Redis failover lost, so that they become a reset, not silence.

Replication to a Sentinel-managed replica is asynchronous: the master may acknowledge
(and publish) an event, then die before its replica got it. The promoted replica's log
then simply lacks it, and the events published next chain onto the last one it does
have, so nothing downstream can see the hole: a client resuming from before the lost
events would get a "complete" replay without them. Only the process that published
them can tell, and without an extra round trip: the publish script returns the log's
last id before the new event, which can never be older than an id this process got
earlier in the same epoch, unless the log lost it. Such a model is then reset (new
epoch, ``reset`` to its subscribers).

A reconnection to the new master is often silent (redis-py reconnects an idle
connection the peer closed without raising), so nothing here waits for an error.
"""

from __future__ import annotations

from ..events.wire import id_key
from .routes import Route


class PublishedIds:
    """The last event id this process published per model, and the models whose log
    lost some of them. Used by the publisher thread only (no lock)."""

    def __init__(self) -> None:
        self._last: dict[str, str] = {}
        #: labels of the models found to have lost events, not reset yet
        self.lost: set[str] = set()

    def record(self, routes: list[Route], results: list[list[str] | None]) -> None:
        """Note what a batch got back: ``results[i]`` is ``[id, previous id]`` for
        ``routes[i]`` (None: not published)."""
        for r, result in zip(routes, results, strict=True):
            if not result:
                continue
            event_id, prev = result
            mine = self._last.get(r.label)
            if mine and prev and _same_epoch(prev, mine) and id_key(prev) < id_key(mine):
                self.lost.add(r.label)
            self._last[r.label] = event_id


def _same_epoch(one: str, other: str) -> bool:
    return one.partition(":")[2] == other.partition(":")[2]

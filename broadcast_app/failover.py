"""Notice the events a Redis failover lost, so that they become a reset, not silence.

Replication to a Sentinel-managed replica is asynchronous: the master may acknowledge
(and publish) an event, then die before its replica got it. The promoted replica's log
then simply lacks it, and the events published next chain onto the last one it does
have, so nothing downstream can see the hole: a client resuming from before the lost
events would get a "complete" replay without them. Only the process that published
them knows. So each publisher remembers the last id it got per model, and when it
reconnects after an error it checks that this id is still in the model's log (same
epoch); if not, the model's log is reset (new epoch) and its subscribers told.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .layer import Route

# KEYS: the model's stream and meta hash. ARGV: a stream id and its epoch. 1 if the log
# is still in that epoch but the entry is gone (a new epoch already resets everyone).
CHECK_SCRIPT = """
if redis.call('HGET', KEYS[2], 'epoch') ~= ARGV[2] then
  return 0
end
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) > 0 then
  return 0
end
return 1
"""


class PublishedIds:
    """The last event id this process published, per Redis host and model.

    Used by the publisher thread only (no lock).
    """

    def __init__(self) -> None:
        self._last: dict[str, dict[str, tuple[Route, str]]] = {}

    def record(self, host_key: str, routes: list[Route], ids: list[Any]) -> None:
        """Note the ids a batch got (``ids[i]`` for ``routes[i]``; None: not published)."""
        last = self._last.setdefault(host_key, {})
        for r, event_id in zip(routes, ids, strict=True):
            if event_id is not None:
                last[r.label] = (r, event_id.decode() if isinstance(event_id, bytes) else event_id)

    def check(self, host_key: str, client: Any, on_lost: Callable[[Route], None]) -> None:
        """Call ``on_lost`` for each model whose last published event ``client``'s Redis
        no longer has. Each entry is checked once (a Redis error, raised, leaves it and
        the rest for the next connection)."""
        last = self._last.get(host_key, {})
        for label, (r, event_id) in list(last.items()):
            stream_id, _, epoch = event_id.partition(":")
            if client.eval(CHECK_SCRIPT, 2, r.stream, r.meta, stream_id, epoch):
                on_lost(r)
            del last[label]

"""Read the per-model event log (a Redis stream) for resume and recovery.

Each model's events are kept in ``<prefix>:log:<label>`` (bounded by
``BROADCAST_LOG_MAXLEN`` and ``BROADCAST_LOG_MAX_AGE``) with an epoch in
``<prefix>:meta:<label>`` that changes when the log is lost (Redis restarted without
persistence). An event id is ``<stream id>:<epoch>``; every entry records the id before
it, so a replay is known complete only if its first entry follows the ``since`` asked
for: all or nothing, never a partial replay.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from .conf import conf
from .events import frame_from_body
from .layer import route
from .redis_clients import make_async_client


@dataclass
class Replay:
    """What the log holds after an id: the frames in order, or why it cannot tell."""

    complete: bool
    reason: str = ""
    frames: list[tuple[str, str]] = field(default_factory=list)  # (id, frame)
    last_id: str | None = None


class EventLog:
    """Async access to the logs, with one client per Redis host per event loop."""

    def __init__(self) -> None:
        self._clients: dict[tuple[asyncio.AbstractEventLoop, str], aioredis.Redis] = {}

    def _client(self, label: str) -> tuple[Any, Any]:
        r = route(label)
        key = (asyncio.get_running_loop(), r.key)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = make_async_client(
                r.host, conf.BROADCAST_REDIS_TIMEOUT, decode_responses=True
            )
        return client, r

    async def close(self) -> None:
        """Close this loop's clients."""
        loop = asyncio.get_running_loop()
        for key in [k for k in self._clients if k[0] is loop]:
            await self._clients.pop(key).aclose()

    async def last_id(self, label: str) -> str | None:
        """The id of the model's latest event (None if it has none)."""
        client, r = self._client(label)
        last = await client.hget(r.meta, "last")
        return str(last) if last else None

    async def read_after(self, label: str, since: object) -> Replay:
        """Every event after ``since``, in order, if the log still holds all of them."""
        client, r = self._client(label)
        if not isinstance(since, str) or since.count(":") != 1:
            return Replay(False, "malformed")
        stream_id, epoch = since.split(":")
        meta = await client.hgetall(r.meta)
        current_epoch = meta.get("epoch") or ""
        last = meta.get("last") or None
        if not current_epoch or epoch != current_epoch:
            return Replay(False, "epoch", last_id=last)
        if since == last:
            return Replay(True, last_id=last)
        try:
            # No COUNT: a partial replay is worse than none, and the log is bounded.
            entries = await client.xrange(r.stream, min=f"({stream_id}", max="+")
        except aioredis.ResponseError:  # not a stream id at all
            return Replay(False, "malformed", last_id=last)
        if not entries or entries[0][1].get("p") != since:
            # Nothing after an id that is not the last, or a hole: trimmed or unknown.
            return Replay(False, "too_old" if entries else "unknown", last_id=last)
        frames = []
        for entry_id, fields in entries:
            event_id = f"{entry_id}:{current_epoch}"
            frames.append((event_id, frame_from_body(event_id, fields["b"])))
        return Replay(True, frames=frames, last_id=frames[-1][0])


event_log = EventLog()

"""Read the per-model event log (a Redis stream) for resume and recovery.

Each model's events are kept in ``<prefix>:log:<label>`` (bounded by
``BROADCAST_LOG_MAXLEN`` and ``BROADCAST_LOG_MAX_AGE``) with an epoch in
``<prefix>:meta:<label>`` that changes when the log is lost (Redis restarted without
persistence). An event id is ``<stream id>:<epoch>``; every entry records the id before
it, so a replay is known complete only if its first entry follows the ``since`` asked
for: all or nothing, never a partial replay.

A read costs at most what it returns: one script call tells, inside Redis, whether the
replay is complete and how long it is (counting no further than ``limit``), and only
then are the entries read, a page at a time, so the event loop that parses them is free
between pages.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..conf import conf
from ..events.wire import frame_from_body, split_hidden
from ..stats import stats
from .redis_clients import make_async_client
from .routes import route

#: entries read per XRANGE call while replaying: parsing a page is one step of the
#: event loop, which no other connection's frame can interrupt
PAGE_SIZE = 25

# What the publish script writes (``<ms>-<seq>:<epoch>``), in ASCII: anything else is
# refused before a Redis call (an escaped lone surrogate could not even be encoded).
_SINCE = re.compile(r"([0-9]{1,20}-[0-9]{1,20}):([0-9A-Za-z_-]{1,64})", re.ASCII)

# KEYS: the stream, the meta hash. ARGV: the stream id and epoch of ``since``, how many
# entries to count at most. Returns the log's epoch and last id ('' when none), how
# many entries follow ``since`` (up to the count; 0 unless the epoch is the same), and
# the ``p`` (previous id) of the first of them ('' when none).
_HEAD_SCRIPT = """
local meta = redis.call('HMGET', KEYS[2], 'epoch', 'last')
local epoch, last = meta[1] or '', meta[2] or ''
if epoch == '' or epoch ~= ARGV[2] or last == ARGV[1] .. ':' .. epoch then
  return {epoch, last, 0, ''}
end
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[3])
local first = ''
if #entries > 0 then
  local fields = entries[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'p' then first = fields[i + 1] end
  end
end
return {epoch, last, #entries, first}
"""


@dataclass
class Replay:
    """What the log holds after an id: the frames in order, or why it cannot tell."""

    complete: bool
    reason: str = ""
    frames: list[tuple[str, str]] = field(default_factory=list)  # (id, frame)
    last_id: str | None = None


def position(event_id: str) -> tuple[str, int, int] | None:
    """An event id as ``(epoch, ms, seq)``, ordered within an epoch; None if malformed."""
    parsed = parse_since(event_id)
    if parsed is None:
        return None
    ms, _, seq = parsed[0].partition("-")
    return parsed[1], int(ms), int(seq)


def covers(floor: tuple[str, int, int], event_id: str) -> bool:
    """Whether the event is at or before ``floor`` in the same epoch."""
    at = position(event_id)
    return at is not None and at[0] == floor[0] and at[1:] <= floor[1:]


def parse_since(since: object) -> tuple[str, str] | None:
    """The stream id and epoch of a ``since`` as the server issues them, else None."""
    if not isinstance(since, str):
        return None
    match = _SINCE.fullmatch(since)
    return None if match is None else (match[1], match[2])


class EventLog:
    """Async access to the logs, with one client per Redis host per event loop."""

    def __init__(self) -> None:
        self._clients: dict[tuple[asyncio.AbstractEventLoop, str], Any] = {}

    def _client(self, label: str) -> tuple[Any, Any, Any]:
        r = route(label)
        key = (asyncio.get_running_loop(), r.key)
        found = self._clients.get(key)
        if found is None:
            client = make_async_client(r.host, conf.BROADCAST_REDIS_TIMEOUT, decode_responses=True)
            found = self._clients[key] = (client, client.register_script(_HEAD_SCRIPT))
        return found[0], found[1], r

    async def close(self) -> None:
        """Close this loop's clients."""
        loop = asyncio.get_running_loop()
        for key in [k for k in self._clients if k[0] is loop]:
            await self._clients.pop(key)[0].aclose()

    async def last_id(self, label: str) -> str | None:
        """The id of the model's latest event (None if it has none)."""
        client, _, r = self._client(label)
        last = await client.hget(r.meta, "last")
        return str(last) if last else None

    async def on_subscribe(
        self, label: str, since: object, refused: str | None, room: int, fallback: str | None
    ) -> tuple[Replay | None, str | None]:
        """What a subscription reads: the replay after ``since`` (None without one; at
        most what ``room`` frames hold), or ``refused``'s; and the log's last id (else
        ``fallback``, the last id the instance received)."""
        if refused is not None:
            return Replay(False, refused), fallback
        try:
            async with asyncio.timeout(2 * conf.BROADCAST_REDIS_TIMEOUT):
                if since is None:
                    return None, await self.last_id(label)
                limit = max(0, min(conf.BROADCAST_RESUME_MAX_EVENTS, room - 1))
                replay = await self.read_after(label, since, limit)
                return replay, replay.last_id or fallback
        except (RedisError, OSError, TimeoutError):
            stats.incr("log_errors")
            return (None if since is None else Replay(False, "unavailable")), fallback

    async def read_after(self, label: str, since: object, limit: int | None = None) -> Replay:
        """Every event after ``since``, in order, if the log still holds all of them;
        with ``limit``, only if they are at most that many (else ``too_many``, known
        without reading them)."""
        parsed = parse_since(since)
        if parsed is None:
            return Replay(False, "malformed")
        stream_id, epoch = parsed
        since = f"{stream_id}:{epoch}"
        client, head, r = self._client(label)
        count = 1 if limit is None else limit + 1
        try:
            current, last, length, first = await head(
                keys=[r.stream, r.meta], args=[stream_id, epoch, count]
            )
        except aioredis.ResponseError:  # not a stream id Redis takes (out of range)
            return Replay(False, "malformed")
        last = last or None
        if not current or epoch != current:
            return Replay(False, "epoch", last_id=last)
        if since == last:
            return Replay(True, last_id=last)
        if not length or first != since:
            # Nothing after an id that is not the last, or a hole: trimmed or unknown.
            return Replay(False, "too_old" if length else "unknown", last_id=last)
        if limit is not None and length > limit:
            return Replay(False, "too_many", last_id=last)
        # Up to the last id at the script's call: later events reach the caller live.
        end = last.partition(":")[0] if last else "+"
        frames = await self._frames(client, r.stream, since, end)
        if not frames:  # trimmed between the script and the first page
            return Replay(False, "too_old", last_id=last)
        return Replay(True, frames=frames, last_id=frames[-1][0])

    async def read_from_start(self, label: str) -> Replay:
        """Every event of a log that had none when this instance began to follow it,
        if the log still holds all of them (its first entry has no previous id)."""
        client, _, r = self._client(label)
        epoch = await client.hget(r.meta, "epoch")
        if not epoch:
            return Replay(True)  # still no event
        first = await client.xrange(r.stream, min="-", max="+", count=1)
        if not first or first[0][1].get("p") != "":
            return Replay(False, "too_old", last_id=await self.last_id(label))
        first_id = f"{first[0][0]}:{epoch}"
        rest = await self.read_after(label, first_id)
        if not rest.complete:
            return rest
        frames = [(first_id, frame_from_body(first_id, first[0][1]["b"])), *rest.frames]
        return Replay(True, frames=frames, last_id=frames[-1][0])

    async def _frames(
        self, client: Any, stream: str, since: str, end: str
    ) -> list[tuple[str, str]]:
        """The entries after ``since`` up to ``end``, a page at a time; [] if they no
        longer follow each other from ``since`` (trimmed between two calls)."""
        after, _, epoch = since.partition(":")
        frames: list[tuple[str, str]] = []
        previous = since
        while True:
            page = await client.xrange(stream, min=f"({after}", max=end, count=PAGE_SIZE)
            for entry_id, fields in page:
                if fields.get("p") != previous:
                    return []
                previous = f"{entry_id}:{epoch}"
                # (Without the hidden tail: replays are sent as they are, see events/filters.py.)
                frames.append((previous, split_hidden(frame_from_body(previous, fields["b"]))[0]))
            if len(page) < PAGE_SIZE:
                return frames
            after = page[-1][0]


event_log = EventLog()

"""Read the per-model event log (a Redis stream) for resume and recovery.

Each model's events are kept in ``<prefix>:log:<label>`` (bounded by
``BROADCAST_LOG_MAXLEN`` and ``BROADCAST_LOG_MAX_AGE``) with an epoch in
``<prefix>:meta:<label>`` that changes when the log is lost (Redis restarted without
persistence). An event id is ``<stream id>:<epoch>``. An entry holds the events of one
publish script call (:func:`entry_events`): its id is its last event's, the events
before it have the sequence numbers just below in the same ms, and it records the id
before its first event, so a replay is known complete only if its first event follows
the ``since`` asked for: all or nothing, never a partial replay.

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
from ..events.wire import following_ids, frame_from_body, id_key, split_hidden
from ..stats import stats
from .redis_clients import make_async_client
from .routes import route

#: entries read per XRANGE call while replaying (each of one to MAX_PER_CALL events):
#: parsing a page is one step of the event loop, which no other connection's frame can
#: interrupt
PAGE_SIZE = 25

# What the publish script writes (``<ms>-<seq>:<epoch>``), in ASCII: anything else is
# refused before a Redis call (an escaped lone surrogate could not even be encoded).
_SINCE = re.compile(r"([0-9]{1,20}-[0-9]{1,20}):([0-9A-Za-z_-]{1,64})", re.ASCII)

# KEYS: the stream, the meta hash. ARGV: the stream id and epoch of ``since``, how many
# events to count at most. Returns the log's epoch and last id ('' when none), how many
# events follow ``since`` (up to the count; 0 unless the epoch is the same), and the id
# before the first of them ('' when none). It reads entries from the one that may hold
# ``since`` (ids at or above it), a page at a time, until it has counted enough: each
# entry's events are its fields but one.
_HEAD_SCRIPT = """
local meta = redis.call('HMGET', KEYS[2], 'epoch', 'last')
local epoch, last = meta[1] or '', meta[2] or ''
if epoch == '' or epoch ~= ARGV[2] or last == ARGV[1] .. ':' .. epoch then
  return {epoch, last, 0, ''}
end
local since_ms, since_seq = string.match(ARGV[1], '^(%d+)%-(%d+)$')
since_ms, since_seq = tonumber(since_ms), tonumber(since_seq)
local want, count, first, start = tonumber(ARGV[3]), 0, nil, ARGV[1]
local page, seen = 10, 0
while count < want do
  local entries = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', page)
  for _, entry in ipairs(entries) do
    seen = seen + 1
    local fields = entry[2]
    local n = #fields / 2 - 1
    local ms, seq = string.match(entry[1], '^(%d+)%-(%d+)$')
    ms, seq = tonumber(ms), tonumber(seq)
    local after = n
    if ms == since_ms and seq - n < since_seq then
      -- `since` is one of this entry's events: the next one follows it
      after = seq - since_seq
      if after > 0 and first == nil then
        first = ARGV[1] .. ':' .. epoch
      end
    elseif first == nil then
      for i = 1, #fields, 2 do
        if fields[i] == 'p' then first = fields[i + 1] end
      end
    end
    count = count + after
    if count >= want then break end
  end
  if #entries < page then break end
  start = '(' .. entries[#entries][1]
  -- about as many entries as the events still to count need, at the events per entry
  -- seen so far (1 to 100: an entry holds up to 100 events, each read into Lua whole)
  page = math.max(1, math.min(100, math.ceil((want - count) * seen / math.max(count, 1))))
end
return {epoch, last, math.min(count, want), first or ''}
"""


def entry_events(entry_id: str, fields: dict[str, str], epoch: str) -> list[tuple[str, str, str]]:
    """``(id, prev, body)`` of each event a log entry holds, in order (see
    transport/scripts.py: the id before the first in "p", the bodies in "b", "2", ...)."""
    count = len(fields) - 1
    ms, _, seq = entry_id.partition("-")
    ids = following_ids(f"{ms}-{int(seq) - count + 1}:{epoch}", count)
    bodies = [fields["b"], *(fields[str(n)] for n in range(2, count + 1))]
    prevs = [fields["p"], *ids[:-1]]
    return list(zip(ids, prevs, bodies, strict=True))


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
        first_id, _, body = entry_events(first[0][0], first[0][1], epoch)[0]
        rest = await self.read_after(label, first_id)
        if not rest.complete:
            return rest
        frames = [(first_id, frame_from_body(first_id, body)), *rest.frames]
        return Replay(True, frames=frames, last_id=frames[-1][0])

    async def _frames(
        self, client: Any, stream: str, since: str, end: str
    ) -> list[tuple[str, str]]:
        """The events after ``since`` up to ``end``, a page of entries at a time; [] if
        they no longer follow each other from ``since`` (trimmed between two calls)."""
        start, _, epoch = since.partition(":")
        after = id_key(since)
        frames: list[tuple[str, str]] = []
        previous = since
        while True:  # from the entry that may hold ``since``
            page = await client.xrange(stream, min=start, max=end, count=PAGE_SIZE)
            for entry_id, fields in page:
                if len(fields) > 2:
                    # An entry of several events (up to MAX_PER_CALL): parsed in a step
                    # of its own, so that a page is not one long step.
                    await asyncio.sleep(0)
                for event_id, prev, body in entry_events(entry_id, fields, epoch):
                    # (Only the entry that holds ``since`` has events at or before it:
                    # ids increase, so once one frame is in, the rest follow it.)
                    if not frames and id_key(event_id) <= after:
                        continue
                    if prev != previous:
                        return []
                    previous = event_id
                    # (Without the hidden tail: replays are sent as they are, see
                    # events/filters.py.)
                    frames.append((event_id, split_hidden(frame_from_body(event_id, body))[0]))
            if len(page) < PAGE_SIZE:
                return frames
            start = f"({page[-1][0]}"


event_log = EventLog()

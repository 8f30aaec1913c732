"""The Lua scripts that log and publish events in Redis, and how a batch is packed into
their calls.

Each event is appended to its model's stream (``XADD``: Redis assigns the id) and
published on the model's channel-layer group in the same atomic step, so ids increase
in publish order across every publishing process. The consecutive events of one model
in a batch go through one script call (:data:`BATCH_SCRIPT`): Redis then pays the
script's start, the meta read and its write once per run instead of once per event,
which is most of what a script costs beyond the ``XADD`` and ``PUBLISH`` themselves.
Such a call publishes one message for all its events (``broadcast.events``, see
:mod:`.messages`): each event keeps its own log entry and id, but Redis pays one
``PUBLISH`` per call, and each instance reads one message. Outbox events (relayed,
each with its "already published" mark) go one per call through :data:`PUBLISH_SCRIPT`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .routes import Route, new_epoch

# Publishes the Lua table `message` on `channel`, in the layer's serializer format (the
# pub/sub layer reads msgpack by default, or json): shared by the scripts below. An
# empty channel publishes nothing: the publisher then sends the message through the
# channel layer (fast path "script_publish" off, see upstream/channels_redis.py).
_PUBLISH_MESSAGE = """
local function publish(channel, format, message)
  if channel == '' then
    return
  end
  local payload
  if format == 'json' then
    payload = cjson.encode(message)
  else
    payload = cmsgpack.pack(message)
  end
  redis.call('PUBLISH', channel, payload)
end
"""

# Reads the model's meta hash (epoch, last id, when the log was last trimmed by age):
# the epoch and the id before the next event. A log that is new or was lost starts a
# fresh epoch (ARGV given), so no client resumes across the loss.
_READ_META = """
local function read_meta(stream, meta_key, fresh_epoch)
  local meta = redis.call('HMGET', meta_key, 'epoch', 'last', 'trimmed')
  local epoch, prev = meta[1], meta[2] or ''
  if (not epoch) or redis.call('EXISTS', stream) == 0 then
    epoch, prev = fresh_epoch, ''
  end
  return epoch, prev, tonumber(meta[3]) or 0
end
"""

# Writes the meta hash after the last event of a call, and trims the log by age at most
# once a second, against that event's time (the stream's clock, which is Redis's): each
# Redis call a script makes costs it a few microseconds, so it makes as few as it can.
_WRITE_META = """
local function write_meta(stream, meta_key, epoch, id, sid, trimmed, max_age)
  local ms = tonumber(string.match(sid, '^%d+'))
  if max_age > 0 and ms - trimmed >= 1000 then
    redis.call('XTRIM', stream, 'MINID', '~', ms - max_age)
    redis.call('HSET', meta_key, 'epoch', epoch, 'last', id, 'trimmed', ms)
  else
    redis.call('HSET', meta_key, 'epoch', epoch, 'last', id)
  end
end
"""

# A msgpack string's and array's headers (str8/16/32 as the layer's msgpack reads them,
# fixstr below 32 bytes; fixarray below 16 entries, array16 up to MAX_PER_CALL), and the
# bytes of a `broadcast.event` message up to its frame's header and of a
# `broadcast.events` message up to its array's. The batch script writes the message's
# msgpack by hand, joined once: a Lua table handed to cmsgpack costs Redis about half
# again a plain PUBLISH per event.
_MSGPACK = """
local function str_header(n)
  if n < 32 then
    return string.char(160 + n)
  elseif n < 256 then
    return '\\217' .. string.char(n)
  elseif n < 65536 then
    return '\\218' .. struct.pack('>I2', n)
  end
  return '\\219' .. struct.pack('>I4', n)
end
local function array_header(n)
  if n < 16 then
    return string.char(144 + n)
  end
  return '\\220' .. struct.pack('>I2', n)
end
local EVENT_HEAD = '\\131\\164type\\175broadcast.event\\165frame'
local EVENTS_HEAD = '\\131\\164type\\176broadcast.events\\166frames'
local PREV_KEY = '\\164prev'
local FRAME_START = '{"type":"change","id":"'
"""

# KEYS: the model's stream and its meta hash. ARGV: max length, channel, serializer
# format, a fresh epoch, max age in ms (0: none), then the bodies of one or more events
# of that model, in order. The id is "<stream id>:<epoch>"; each entry keeps the id
# before it ("p"), so readers can tell a complete replay from one with a hole. Returns
# the id before the first event, then each event's id: {prev1, id1, id2, ...}. The log is
# trimmed to its max length once per call, after its events (approximately, as XADD's
# MAXLEN ~ would: whole stream nodes only). One event is published as
# `broadcast.event`; several as one `broadcast.events` message, their frames in order
# and the id before the first (each next event's prev is the frame before it).
BATCH_SCRIPT = (
    _PUBLISH_MESSAGE
    + _READ_META
    + _WRITE_META
    + _MSGPACK
    + """
local call = redis.call
local stream, channel, format = KEYS[1], ARGV[2], ARGV[3]
local epoch, prev, trimmed = read_meta(stream, KEYS[2], ARGV[4])
local first_prev, count = prev, #ARGV - 5
local suffix = ':' .. epoch
local packed = channel ~= '' and format ~= 'json'
local head_size = #FRAME_START + 2
local out, n, sid, id = {prev}, 1, nil, nil
-- The msgpack message's pieces, joined once: a frame string built per event would cost
-- Redis as much again as the XADD (Lua makes each string it builds a new object).
local parts = count == 1 and {EVENT_HEAD} or {EVENTS_HEAD, array_header(count)}
local frames, at = {}, #parts
for i = 6, #ARGV do
  local body = ARGV[i]
  sid = call('XADD', stream, '*', 'b', body, 'p', prev)
  id = sid .. suffix
  if packed then
    parts[at + 1] = str_header(head_size + #id + #body)
    parts[at + 2] = FRAME_START
    parts[at + 3] = id
    parts[at + 4] = '",'
    parts[at + 5] = body
    at = at + 5
  elseif channel ~= '' then
    frames[n] = FRAME_START .. id .. '",' .. body
  end
  n = n + 1
  out[n] = id
  prev = id
end
if packed then
  parts[at + 1] = PREV_KEY
  parts[at + 2] = str_header(#first_prev)
  parts[at + 3] = first_prev
  call('PUBLISH', channel, table.concat(parts))
elseif count == 1 then
  publish(channel, format, {type = 'broadcast.event', frame = frames[1], prev = first_prev})
else
  publish(channel, format, {type = 'broadcast.events', frames = frames, prev = first_prev})
end
redis.call('XTRIM', stream, 'MAXLEN', '~', ARGV[1])
write_meta(stream, KEYS[2], epoch, id, sid, trimmed, tonumber(ARGV[5]))
return out
"""
)

# One outbox event. KEYS and ARGV[1..6] as for one event of BATCH_SCRIPT (the body
# second: max length, body, channel, format, epoch, max age), plus KEYS[3], the hash of
# its transaction's events already published, ARGV[7] (this event's field in it) and
# ARGV[8] (its ttl in ms): an event relayed again after a relay died before deleting its
# rows is skipped here, in the same atomic step, so no reader ever sees it twice (the
# script then returns nil). The mark is set last, once the event is out: a script that
# failed half-way must not mark it. Returns the id and the one before it.
PUBLISH_SCRIPT = (
    _PUBLISH_MESSAGE
    + _READ_META
    + _WRITE_META
    + """
if redis.call('HEXISTS', KEYS[3], ARGV[7]) == 1 then
  return false
end
local epoch, prev, trimmed = read_meta(KEYS[1], KEYS[2], ARGV[5])
local sid = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'b', ARGV[2], 'p', prev)
local id = sid .. ':' .. epoch
write_meta(KEYS[1], KEYS[2], epoch, id, sid, trimmed, tonumber(ARGV[6]))
local frame = '{"type":"change","id":"' .. id .. '",' .. ARGV[2]
publish(ARGV[3], ARGV[4], {type = 'broadcast.event', frame = frame, prev = prev})
redis.call('HSET', KEYS[3], ARGV[7], '1')
redis.call('PEXPIRE', KEYS[3], ARGV[8])
return {id, prev}
"""
)

# KEYS: the model's meta hash. ARGV: channel, label, serializer format. Dropping the
# epoch makes the next event start a new one, so no client resumes across the loss.
RESET_SCRIPT = (
    _PUBLISH_MESSAGE
    + """
redis.call('HDEL', KEYS[1], 'epoch')
publish(ARGV[1], ARGV[3], {type = 'broadcast.reset', model = ARGV[2], reason = 'lost'})
return 1
"""
)

#: the most events one script call carries: bounds the time Redis spends in one call,
#: during which it serves nobody else
MAX_PER_CALL = 100

#: an event of a run: its route, body and outbox mark (hash key, field) or None
Entry = tuple[Route, str, "tuple[str, str] | None"]


class Shas:
    """The SHA1s of the loaded scripts of one Redis client."""

    def __init__(self, batch: str, one: str) -> None:
        self.batch = batch
        self.one = one


def load(client: Any) -> Shas:
    """Load the publish scripts into ``client``'s Redis."""
    return Shas(client.script_load(BATCH_SCRIPT), client.script_load(PUBLISH_SCRIPT))


class Packed:
    """The script calls that publish a batch, and for each call the indexes of the
    entries it carries, in order, and whether it is an outbox event's own call."""

    def __init__(self, calls: list[list[Any]], spans: list[list[int]], single: list[bool]):
        self.calls = [tuple(call) for call in calls]
        self.spans = spans
        self.single = single


def pack(
    entries: list[Entry], shas: Shas, maxlen: int, max_age_ms: int, once_ttl_ms: int
) -> Packed:
    """The script calls that publish ``entries`` (one host's events, in order).

    The events of one model are grouped into calls in their order; the models are
    independent (each has its own log and id chain), so a model's call may overtake an
    earlier event of another model of the same batch.
    """
    calls: list[list[Any]] = []
    spans: list[list[int]] = []
    single: list[bool] = []
    open_calls: dict[str, int] = {}  # stream -> its call in ``calls`` still taking events
    for index, (r, body, seen) in enumerate(entries):
        if seen is not None:
            keys = (r.stream, r.meta, seen[0])
            args = (maxlen, body, r.channel, r.serializer_format, new_epoch(), max_age_ms)
            calls.append(["EVALSHA", shas.one, 3, *keys, *args, seen[1], once_ttl_ms])
            spans.append([index])
            single.append(True)
            # An outbox event's successor of its model starts a new call after it.
            open_calls.pop(r.stream, None)
            continue
        at = open_calls.get(r.stream)
        if at is None or len(spans[at]) >= MAX_PER_CALL:
            open_calls[r.stream] = len(calls)
            head = (r.stream, r.meta, maxlen, r.channel, r.serializer_format)
            calls.append(["EVALSHA", shas.batch, 2, *head, new_epoch(), max_age_ms, body])
            spans.append([index])
            single.append(False)
        else:
            calls[at].append(body)
            spans[at].append(index)
    return Packed(calls, spans, single)


def unpack(packed: Packed, replies: Iterable[Any]) -> list[Any]:
    """Each entry's reply, in the entries' order: ``[id, prev]``, or None for an outbox
    event that was already published."""
    results: list[Any] = [None] * sum(len(span) for span in packed.spans)
    for single, reply, span in zip(packed.single, replies, packed.spans, strict=True):
        if single:  # [id, prev], or None: skipped
            results[span[0]] = reply
            continue
        for n, index in enumerate(span):  # [prev1, id1, id2, ...]
            results[index] = [reply[n + 1], reply[n]]
    return results

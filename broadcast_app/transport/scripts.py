"""The Lua scripts that log and publish events in Redis, and how a batch is packed into
their calls.

Events are appended to their model's stream and published on the model's channel-layer
group in the same atomic step, with ids on Redis' clock, so ids increase in publish
order across every publishing process. The consecutive events of one model in a batch
go through one script call (:data:`BATCH_SCRIPT`), which logs them as one stream entry
(one ``XADD``: what an event cost Redis was mostly its own entry) and publishes them as
one message (``broadcast.events``, see :mod:`.messages`): Redis pays the script's
start, the meta read and write, the ``XADD`` and the ``PUBLISH`` once per call, builds
no frame or id per event, and each instance reads one message. Each event keeps its
own id: an entry's events have consecutive ones (``events/wire.following_ids``), which
is how the reader (:mod:`.log_reader`) and the listener tell them apart. Outbox events
(relayed, each with its "already published" mark) go one per call through
:data:`PUBLISH_SCRIPT`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..events.wire import following_ids
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

#: the most events one script call carries (one log entry): bounds the time Redis spends
#: in one call, during which it serves nobody else
MAX_PER_CALL = 100

# Reads the model's meta hash: its epoch, the id before the next event ("last"), when
# the log was last trimmed by age, how many events the epoch has logged ("n") and at
# which count the newest trim mark was set ("m1n"). A log that is new or was lost starts
# a fresh epoch (ARGV given), so no client resumes across the loss; its marks go.
_READ_META = """
local function read_meta(stream, meta_key, fresh_epoch)
  local meta = redis.call('HMGET', meta_key, 'epoch', 'last', 'trimmed', 'n', 'm1n')
  local log = {epoch = meta[1], prev = meta[2] or '', trimmed = tonumber(meta[3]) or 0,
    n = tonumber(meta[4]) or 0, mark_n = tonumber(meta[5]) or 0}
  if (not log.epoch) or redis.call('EXISTS', stream) == 0 then
    log.epoch, log.prev, log.n, log.mark_n = fresh_epoch, '', 0, 0
    redis.call('HDEL', meta_key, 'm0', 'm1', 'm1n')
  end
  return log
end
"""

# The stream ids of the first and the last of `count` events logged in one entry: by
# Redis' clock in ms, and above the log's newest id (Redis refuses an id at or below
# it, which a clock set back would give): the events of an entry are that ms's next
# sequence numbers. `prev` is the newest event's id ('' for a fresh epoch, whose log may
# still hold the last one's entries).
_ENTRY_IDS = """
local function entry_ids(stream, prev, count)
  local now = redis.call('TIME')
  local ms, seq = now[1] * 1000 + math.floor(now[2] / 1000), 0
  local top = string.match(prev, '^%d+%-%d+')
  if not top and redis.call('EXISTS', stream) == 1 then
    local info = redis.call('XINFO', 'STREAM', stream)
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then
        top = info[i + 1]
      end
    end
  end
  if top then
    local top_ms, top_seq = string.match(top, '^(%d+)%-(%d+)$')
    top_ms = tonumber(top_ms)
    if ms <= top_ms then
      ms, seq = top_ms, tonumber(top_seq) + 1
    end
  end
  local head = string.format('%d', ms) .. '-'
  return head .. string.format('%d', seq), head .. string.format('%d', seq + count - 1)
end
"""

# Writes the meta hash after an entry of `count` events (`sid` its stream id, `id` the
# last event's id) and trims the log. By count: every half `maxlen` events the entry
# just written becomes the newest mark ("m1", its count "m1n"), the one before it "m0",
# and the log is cut below the mark before that (MINID ~: whole stream nodes only), so
# it keeps from about `maxlen` to 1.5 `maxlen` events, however many events its entries
# hold. By age at most once a second, against the entry's time (the stream's clock,
# which is Redis's). Each Redis call a script makes costs it a few microseconds: the
# usual call makes one.
_WRITE_META = """
local function write_meta(stream, meta_key, log, id, sid, count, maxlen, max_age)
  local n = log.n + count
  local ms = tonumber(string.match(sid, '^%d+'))
  if max_age > 0 and ms - log.trimmed >= 1000 then
    redis.call('XTRIM', stream, 'MINID', '~', ms - max_age)
    redis.call('HSET', meta_key, 'trimmed', ms)
  end
  if n - log.mark_n >= math.max(1, math.floor(maxlen / 2)) then
    local marks = redis.call('HMGET', meta_key, 'm0', 'm1')
    if marks[1] then
      redis.call('XTRIM', stream, 'MINID', '~', marks[1])
    end
    if marks[2] then
      redis.call('HSET', meta_key, 'm0', marks[2])
    end
    redis.call('HSET', meta_key, 'm1', sid, 'm1n', n)
  end
  redis.call('HSET', meta_key, 'epoch', log.epoch, 'last', id, 'n', n)
end
"""

# A msgpack string's and array's headers (str8/16/32 as the layer's msgpack reads them,
# fixstr below 32 bytes; fixarray below 16 entries, array16 up to MAX_PER_CALL), the
# bytes of a `broadcast.event` message up to its frame's header and of a
# `broadcast.events` message (a map of four) up to its first id's header. The batch
# script writes the message's msgpack by hand, joined once: a Lua table handed to
# cmsgpack costs Redis about half again a plain PUBLISH per event.
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
local EVENTS_HEAD = '\\132\\164type\\176broadcast.events\\162id'
local PREV_KEY = '\\164prev'
local BODIES_KEY = '\\166bodies'
local FRAME_START = '{"type":"change","id":"'
"""

# The field names of an entry's bodies after the first ("b"): "2", "3", ...
_FIELDS = "local FIELDS = {" + ", ".join(f"'{n}'" for n in range(1, MAX_PER_CALL + 1)) + "}"

# KEYS: the model's stream and its meta hash. ARGV: max length, channel, serializer
# format, a fresh epoch, max age in ms (0: none), then the bodies of one or more events
# of that model, in order. The call logs them as one entry of the stream (one XADD:
# what an event costs Redis is mostly its entry), whose id is its last event's; its
# events' stream ids are the consecutive sequence numbers of one ms up to it (see
# entry_ids), an event's id being "<stream id>:<epoch>". The entry holds the id before
# its first event ("p") and the bodies, the first as "b", the next as "2", "3", ...
# (log_reader.py reads it back as events), so readers can tell a complete replay from
# one with a hole. Returns the id before the first event and the first id: the others
# follow it (events/wire.py, following_ids). One event is published as
# `broadcast.event` (its frame); several as one `broadcast.events` message: the id
# before the first, the first id, and the bodies in order, as Redis handed them over.
BATCH_SCRIPT = (
    _PUBLISH_MESSAGE
    + _READ_META
    + _ENTRY_IDS
    + _WRITE_META
    + _MSGPACK
    + """
local call = redis.call
local stream, channel, format = KEYS[1], ARGV[2], ARGV[3]
local log = read_meta(stream, KEYS[2], ARGV[4])
local first_prev, count = log.prev, #ARGV - 5
local first_sid, sid
if count == 1 then
  -- Redis' own id: no clock read, no id formatted here (what a lone save costs).
  sid = call('XADD', stream, '*', 'b', ARGV[6], 'p', first_prev)
  first_sid = sid
else
  first_sid, sid = entry_ids(stream, first_prev, count)
  local fields = {'b', ARGV[6], 'p', first_prev}
  """
    + _FIELDS
    + """
  for i = 7, #ARGV do
    fields[2 * i - 9] = FIELDS[i - 5]
    fields[2 * i - 8] = ARGV[i]
  end
  call('XADD', stream, sid, unpack(fields))
end
local suffix = ':' .. log.epoch
local first = first_sid .. suffix
if channel ~= '' then
  if count == 1 then
    local frame = FRAME_START .. first .. '",' .. ARGV[6]
    if format == 'json' then
      publish(channel, format, {type = 'broadcast.event', frame = frame, prev = first_prev})
    else
      call('PUBLISH', channel, EVENT_HEAD .. str_header(#frame) .. frame .. PREV_KEY
        .. str_header(#first_prev) .. first_prev)
    end
  elseif format == 'json' then
    local bodies = {}
    for i = 6, #ARGV do
      bodies[i - 5] = ARGV[i]
    end
    publish(channel, format,
      {type = 'broadcast.events', id = first, prev = first_prev, bodies = bodies})
  else
    -- The msgpack message's pieces, joined once (Lua makes each string it builds a
    -- new object, hashing every byte of it: the bodies go in as they are).
    local parts = {EVENTS_HEAD, str_header(#first), first, PREV_KEY,
      str_header(#first_prev), first_prev, BODIES_KEY, array_header(count)}
    local at = #parts
    for i = 6, #ARGV do
      parts[at + 1] = str_header(#ARGV[i])
      parts[at + 2] = ARGV[i]
      at = at + 2
    end
    call('PUBLISH', channel, table.concat(parts))
  end
end
write_meta(stream, KEYS[2], log, sid .. suffix, sid, count, tonumber(ARGV[1]),
  tonumber(ARGV[5]))
return {first_prev, first}
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
local log = read_meta(KEYS[1], KEYS[2], ARGV[5])
local prev = log.prev
local sid = redis.call('XADD', KEYS[1], '*', 'b', ARGV[2], 'p', prev)
local id = sid .. ':' .. log.epoch
write_meta(KEYS[1], KEYS[2], log, id, sid, 1, tonumber(ARGV[1]), tonumber(ARGV[6]))
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

#: an event of a run: its route, body and outbox mark (hash key, field) or None
Entry = tuple[Route, str, "tuple[str, str] | None"]


class Shas:
    """The SHA1s of the loaded scripts of one Redis client."""

    def __init__(self, batch: str, one: str) -> None:
        self.batch = batch
        self.one = one


#: the oldest Redis the scripts run on (6.2's ``XTRIM MINID``; tested on 6.2 and 7.0;
#: Valkey reports 7.2 and later)
MIN_REDIS = (6, 2)


def supported(version: str) -> bool:
    """Whether a Redis of ``version`` (its ``INFO`` ``redis_version``) runs the scripts."""
    try:
        found = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return True  # a version we cannot read is left to the scripts themselves
    return found >= MIN_REDIS


def load(client: Any) -> Shas:
    """Load the publish scripts into ``client``'s Redis; a RedisError that says so if
    that Redis is too old for them (rather than every batch failing on its own)."""
    version = str(client.info("server").get("redis_version", ""))
    if not supported(version):
        from redis.exceptions import RedisError  # (redis-py is imported with the client)

        wanted = ".".join(map(str, MIN_REDIS))
        raise RedisError(f"broadcast_app needs Redis {wanted} or later; this one is {version}")
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


def unpack(packed: Packed, replies: Iterable[Any]) -> list[list[str] | None]:
    """Each entry's ``[id, prev]`` (text), in the entries' order, or None for an outbox
    event that was already published."""
    results: list[list[str] | None] = [None] * sum(len(span) for span in packed.spans)
    for single, reply, span in zip(packed.single, replies, packed.spans, strict=True):
        if single:  # [id, prev], or None: skipped
            results[span[0]] = None if reply is None else [_text(value) for value in reply]
            continue
        prev, first = (_text(value) for value in reply)  # the id before the first, the first
        for index, event_id in zip(span, following_ids(first, len(span)), strict=True):
            results[index] = [event_id, prev]
            prev = event_id
    return results


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

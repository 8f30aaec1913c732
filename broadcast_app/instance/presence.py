"""Presence in Redis: who has an object open, kept by every instance, read by any.

Each websocket connection that joined an object's presence is one entry in two keys on
the object's model's Redis host (:func:`.layer.route`), or on a Redis Cluster in the
object's hash slot (the keys' tag is ``{<label>:<pk>}``):

- ``<prefix>:presence:d:<label>:<pk>``, a sorted set: connection id → deadline (Redis
  time, milliseconds);
- ``<prefix>:presence:m:<label>:<pk>``, a hash: connection id → ``<since>|<at>|<JSON of
  the user's public fields and the state>`` (``since`` in milliseconds, ``at``, the
  last join or update, in microseconds: a user's state is that of its latest, and two
  tabs' updates often come within one millisecond).

A connection id is ``<process token>/<n>|<user key>``: the user's key is in it, so the
join script can count distinct users without decoding anything. The instance that holds
the connection pushes its deadline ``BROADCAST_PRESENCE_TTL`` seconds ahead every third
of that; an instance that dies stops doing so, and every script removes entries whose
deadline passed before it reads or writes. All times come from Redis' clock (``TIME``
in the scripts), so instances with skewed clocks agree.

Every change (a join, a state update, a leave, expired entries removed) publishes
``[label, pk]`` on ``<prefix>:presence``. Instances never apply it as a delta: they
read the whole list again (:func:`read`), so lists cannot drift apart from Redis or from
each other, and a lost notification costs only time (the periodic re-read catches up).
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from django.core.serializers.json import DjangoJSONEncoder
from django.utils.module_loading import import_string

from ..conf import conf
from ..transport import cluster
from ..transport.redis_clients import make_async_client
from ..transport.routes import layer_config, route
from ..upstream.channels_redis import decode_hosts

# Removes the entries whose deadline passed; then ``now`` is Redis time in ms, and
# ``now_us`` in microseconds, as a string (a Lua number would print it rounded).
_PRUNE = """
local function prune(now)
  local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
  for i = 1, #dead, 500 do
    local chunk = {unpack(dead, i, math.min(i + 499, #dead))}
    redis.call('ZREM', KEYS[1], unpack(chunk))
    redis.call('HDEL', KEYS[2], unpack(chunk))
  end
  return #dead
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_us = t[1] .. string.format('%06d', tonumber(t[2]))
"""

# KEYS: deadlines, data. ARGV: connection, user key, payload, ttl ms, most users (0: no
# limit), channel, note. Returns the entry's since (ms), or -1 when the object is full.
_JOIN = (
    _PRUNE
    + """
prune(now)
local ttl = tonumber(ARGV[4])
local old = redis.call('HGET', KEYS[2], ARGV[1])
local most = tonumber(ARGV[5])
if not old and most > 0 then
  local users, count = {}, 0
  for _, c in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    local u = string.match(c, '^[^|]*|(.*)$')
    if u and not users[u] then
      users[u] = true
      count = count + 1
    end
  end
  if not users[ARGV[2]] and count >= most then return -1 end
end
local since = now
if old then since = tonumber(string.match(old, '^(%d+)|')) or now end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], since .. '|' .. now_us .. '|' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], 2 * ttl)
redis.call('PEXPIRE', KEYS[2], 2 * ttl)
redis.call('PUBLISH', ARGV[6], ARGV[7])
return since
"""
)

# KEYS: deadlines, data. ARGV: channel, note, connection...
_LEAVE = """
local gone = 0
for i = 3, #ARGV do
  gone = gone + redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
if gone > 0 then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return gone
"""

# KEYS: deadlines, data. ARGV: ttl ms, channel, note, connection... Pushes each
# connection's deadline ahead; returns those that are gone (expired, or lost with
# Redis' data): the caller joins them again.
_REFRESH = (
    _PRUNE
    + """
local pruned = prune(now)
local ttl = tonumber(ARGV[1])
local missing = {}
for i = 4, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
  else
    missing[#missing + 1] = ARGV[i]
  end
end
redis.call('PEXPIRE', KEYS[1], 2 * ttl)
redis.call('PEXPIRE', KEYS[2], 2 * ttl)
if pruned > 0 then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return missing
"""
)

# KEYS: deadlines, data. ARGV: channel, note. The live entries, as HGETALL gives them.
_READ = (
    _PRUNE
    + """
if prune(now) > 0 then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return redis.call('HGETALL', KEYS[2])
"""
)


def deadlines_key(label: str, pk: str) -> str:
    if cluster.enabled():  # both keys of a script in one slot: the object's
        return cluster.tagged("presence:d", f"{label}:{pk}")
    return f"{conf.BROADCAST_GROUP_PREFIX}:presence:d:{label}:{pk}"


def data_key(label: str, pk: str) -> str:
    if cluster.enabled():
        return cluster.tagged("presence:m", f"{label}:{pk}")
    return f"{conf.BROADCAST_GROUP_PREFIX}:presence:m:{label}:{pk}"


def channel() -> str:
    """The pub/sub channel (on every host) that says an object's members changed."""
    return f"{conf.BROADCAST_GROUP_PREFIX}:presence"


def note(label: str, pk: str) -> str:
    """What a change notification carries: the object, never the change itself."""
    return json.dumps([label, pk], separators=(",", ":"))


def parse_note(data: object) -> tuple[str, str] | None:
    """The object a notification names (None for anything else)."""
    try:
        label, pk = json.loads(data)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return (label, pk) if isinstance(label, str) and isinstance(pk, str) else None


def ttl_ms() -> int:
    return max(1, int(conf.BROADCAST_PRESENCE_TTL * 1000))


def all_hosts() -> list[dict[str, Any]]:
    """Every Redis host of the channel layer (objects are spread over them by model);
    on a Redis Cluster, the cluster, where a plain ``PUBLISH`` reaches every node."""
    if cluster.enabled():
        return [cluster.cluster_host()]
    config = layer_config().get("CONFIG", {}) or {}
    seen: dict[str, dict[str, Any]] = {}
    for host in decode_hosts(config.get("hosts")):
        seen.setdefault(repr(sorted(host.items())), dict(host))
    return list(seen.values())


# -- clients, one per host and event loop ----------------------------------------------

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, aioredis.Redis]] = (
    weakref.WeakKeyDictionary()
)


def client_for(label: str) -> aioredis.Redis:
    """This loop's client of the host holding ``label``'s presence (its events' host)."""
    found = _clients.setdefault(asyncio.get_running_loop(), {})
    where = route(label)
    client = found.get(where.key)
    if client is None:
        client = found[where.key] = make_async_client(
            where.host, conf.BROADCAST_REDIS_TIMEOUT, decode_responses=True
        )
    return client


async def close_clients() -> None:
    """Close this loop's clients (the instance is stopping)."""
    found = _clients.pop(asyncio.get_running_loop(), {})
    for client in found.values():
        await client.aclose()


async def _run(script: str, label: str, pk: str, args: Iterable[Any]) -> Any:
    client = client_for(label)
    if cluster.enabled():
        # The slot map and redis-py's command table, read once per client, are not part
        # of one call's bound (each of their reads has the socket timeouts).
        await client.initialize()
    keys = [deadlines_key(label, pk), data_key(label, pk)]
    async with asyncio.timeout(2 * conf.BROADCAST_REDIS_TIMEOUT):
        return await client.register_script(script)(keys=keys, args=list(args))


# -- the operations --------------------------------------------------------------------


def connection_id(token: str, number: int, user_key: str) -> str:
    """A connection's id in Redis: ``<process token>/<n>|<user key>``."""
    return f"{token}/{number}|{user_key}"


async def join(
    label: str, pk: str, connection: str, user_key: str, payload: str, most: int
) -> int | None:
    """Add or update one connection's entry; its since (ms), or None if the object
    already has ``most`` other users (0: no limit)."""
    args = [connection, user_key, payload, ttl_ms(), most, channel(), note(label, pk)]
    since = int(await _run(_JOIN, label, pk, args))
    return None if since < 0 else since


async def leave(label: str, pk: str, connections: list[str]) -> int:
    """Remove connections' entries; how many were there."""
    return int(await _run(_LEAVE, label, pk, [channel(), note(label, pk), *connections]))


async def refresh(label: str, pk: str, connections: list[str]) -> list[str]:
    """Push connections' deadlines ahead; those that were gone (to join again)."""
    args = [ttl_ms(), channel(), note(label, pk), *connections]
    return [str(c) for c in await _run(_REFRESH, label, pk, args)]


@dataclass(frozen=True)
class Member:
    """One user present on an object, over all of their connections."""

    user: dict[str, Any]
    state: dict[str, Any]
    connections: int
    since: int  # ms, Redis time
    #: the process tokens holding its connections
    tokens: frozenset[str]

    def as_json(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "state": self.state,
            "connections": self.connections,
            "since": iso(self.since),
        }


def iso(ms: int) -> str:
    """Milliseconds since the epoch as ISO 8601 UTC (milliseconds), as events' ``ts``."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def read(label: str, pk: str) -> list[Member]:
    """The object's members as Redis has them now (expired entries removed first)."""
    flat = await _run(_READ, label, pk, [channel(), note(label, pk)])
    return members(dict(zip(flat[::2], flat[1::2], strict=True)))


def members(entries: dict[str, str]) -> list[Member]:
    """Entries (connection id → stored value) as one member per user: its connections
    counted, its state and fields those of its latest join or update, its since the
    earliest. Ordered by since, then user key."""
    by_user: dict[str, list[tuple[int, int, str, dict[str, Any]]]] = {}
    for connection, value in entries.items():
        token, _, user_key = connection.partition("|")
        since, at, body = value.split("|", 2)
        try:
            decoded = json.loads(body)
        except ValueError:
            continue  # not ours: never let a stray value break a list
        if isinstance(decoded, dict):
            entry = (int(at), int(since), token.partition("/")[0], decoded)
            by_user.setdefault(user_key, []).append(entry)
    found = []
    for user_key, entries_of_user in by_user.items():
        latest = max(entries_of_user, key=lambda item: item[0])[3]
        found.append(
            (
                min(item[1] for item in entries_of_user),
                user_key,
                Member(
                    user=dict(latest.get("user") or {}),
                    state=dict(latest.get("state") or {}),
                    connections=len(entries_of_user),
                    since=min(item[1] for item in entries_of_user),
                    tokens=frozenset(item[2] for item in entries_of_user),
                ),
            )
        )
    return [member for _, _, member in sorted(found, key=lambda item: item[:2])]


# -- what a member shows of its user ----------------------------------------------------


def default_user(user: Any) -> dict[str, Any]:
    """The default ``BROADCAST_PRESENCE_USER``: id, username and full name, nothing else."""
    full_name = getattr(user, "get_full_name", None)
    return {
        "id": user.pk,
        "username": user.get_username(),
        "name": str(full_name() if callable(full_name) else ""),
    }


def user_fields(user: Any) -> dict[str, Any]:
    """What other members see of ``user``: ``BROADCAST_PRESENCE_USER(user)``, as JSON."""
    hook = conf.BROADCAST_PRESENCE_USER
    function = import_string(hook) if isinstance(hook, str) else hook
    fields = function(user)
    if not isinstance(fields, dict):
        raise TypeError(f"BROADCAST_PRESENCE_USER returned {type(fields).__name__}, not a dict")
    # Through JSON now: a value it cannot encode fails here, in the join, not in Redis.
    decoded: dict[str, Any] = json.loads(json.dumps(fields, cls=DjangoJSONEncoder))
    return decoded

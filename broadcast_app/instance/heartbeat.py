"""Heartbeats: each instance reports itself in Redis, so any instance can list them all.

Every ``BROADCAST_HEARTBEAT_INTERVAL`` seconds an instance writes its figures
(:func:`broadcast_app.instance.figures.instance_figures`: counters, never event data) as JSON to
the key ``<prefix>:instance:<id>``, which expires after ``BROADCAST_HEARTBEAT_TTL``,
and adds its id to the set ``<prefix>:instances``. An instance that dies silently
drops out when its key expires; one that stops cleanly deletes it. Readers prune ids
whose key is gone. The Redis is the first host of the broadcast channel layer, or the
Redis Cluster (``BROADCAST_REDIS_CLUSTER``), where the keys carry one hash tag, so that
each heartbeat's transaction and the index's reads stay in one slot.

The task runs beside the listener, started and stopped with it by the instance runtime.
Every Redis call is bounded by ``BROADCAST_REDIS_TIMEOUT``: a slow or absent Redis costs
a logged warning, never a stuck event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import redis
import redis.asyncio as aioredis
from channels_redis.utils import decode_hosts

from ..conf import conf
from ..stats import stats
from ..transport import cluster
from ..transport.redis_clients import make_async_client
from ..transport.routes import layer_config

logger = logging.getLogger(__name__)

_WARN_EVERY = 30.0  # seconds between two warnings about failed heartbeats
_BACKOFF_MAX = 60.0  # seconds between two heartbeats at most while they keep failing


def instance_key(instance_id: str) -> str:
    """The key holding one instance's last heartbeat."""
    if cluster.enabled():
        return f"{cluster.tagged('instance', 'instances')}:{instance_id}"
    return f"{conf.BROADCAST_GROUP_PREFIX}:instance:{instance_id}"


def index_key() -> str:
    """The set of the ids of instances that sent heartbeats."""
    if cluster.enabled():
        return cluster.tagged("instances", "instances")
    return f"{conf.BROADCAST_GROUP_PREFIX}:instances"


def make_client() -> aioredis.Redis:
    """An asyncio Redis client for the layer's first host, every wait bounded; one
    attempt per call (the next heartbeat is the retry)."""
    if cluster.enabled():
        host = cluster.cluster_host()
    else:
        host = decode_hosts((layer_config().get("CONFIG", {}) or {}).get("hosts"))[0]
    return make_async_client(host, conf.BROADCAST_REDIS_TIMEOUT, decode_responses=True)


@asynccontextmanager
async def connect() -> AsyncIterator[aioredis.Redis]:
    """A client for one short job (a status request), closed afterwards."""
    client = make_client()
    try:
        yield client
    finally:
        await client.aclose()


async def beat(client: aioredis.Redis, figures: dict[str, Any]) -> None:
    """Publish one heartbeat: ``figures`` (must hold ``id``) under a key with a TTL."""
    ttl_ms = max(1, int(conf.BROADCAST_HEARTBEAT_TTL * 1000))
    async with client.pipeline(transaction=True) as pipe:
        pipe.set(instance_key(figures["id"]), json.dumps(figures), px=ttl_ms)
        pipe.sadd(index_key(), figures["id"])
        # The index outlives every heartbeat by one TTL, then goes away by itself.
        pipe.pexpire(index_key(), ttl_ms * 2)
        await pipe.execute()


async def live_instances(client: aioredis.Redis) -> list[dict[str, Any]]:
    """The last heartbeat of every instance whose heartbeat has not expired, by id."""
    ids = sorted(str(member) for member in await client.smembers(index_key()))
    if not ids:
        return []
    values = await client.mget([instance_key(i) for i in ids])
    alive: list[dict[str, Any]] = []
    gone: list[str] = []
    for instance_id, value in zip(ids, values, strict=True):
        if value is None:
            gone.append(instance_id)
            continue
        try:
            figures = json.loads(value)
        except ValueError:
            gone.append(instance_id)
            continue
        if isinstance(figures, dict):
            alive.append(figures)
    if gone:
        await client.srem(index_key(), *gone)
    return alive


async def forget(client: aioredis.Redis, instance_id: str) -> None:
    """Remove an instance's heartbeat (it is stopping)."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.delete(instance_key(instance_id))
        pipe.srem(index_key(), instance_id)
        await pipe.execute()


class Heartbeat:
    """This instance's heartbeats; the instance runtime (:mod:`.runtime`) runs the task."""

    def __init__(self) -> None:
        self._last_warning = -_WARN_EVERY
        self._last_failure = -_WARN_EVERY
        #: set once the first heartbeat was sent (or failed) since the last start
        self.sent = asyncio.Event()

    def bind(self) -> None:
        """Start over in a new event loop: an event belongs to one loop."""
        self.sent = asyncio.Event()

    async def run(self, figures: Callable[[], dict[str, Any]]) -> None:
        """Send heartbeats (each ``figures()``: :func:`.figures.instance_figures`, given
        by the runtime) until cancelled, then withdraw this instance's."""
        client = make_client()
        instance_id = conf.BROADCAST_INSTANCE_ID
        failures = 0
        try:
            while True:
                try:
                    await beat(client, figures())
                    stats.incr("heartbeats")
                    failures = 0
                except (redis.RedisError, OSError) as exc:
                    if _cancelling():
                        raise asyncio.CancelledError from exc  # the race above: stop now
                    stats.incr("heartbeat_errors")
                    self._warn(exc)
                except Exception:
                    # Not Redis: a bug or a setting (a figure that fails). The dashboard
                    # would lose this instance for good if the task died, so it goes on,
                    # less often while the failure lasts.
                    stats.incr("heartbeat_errors")
                    failures += 1
                    self._warn_failure()
                self.sent.set()
                interval = conf.BROADCAST_HEARTBEAT_INTERVAL
                await asyncio.sleep(
                    min(interval * 2 ** min(failures, 16), max(interval, _BACKOFF_MAX))
                )
        finally:
            # Stopping cleanly: leave the dashboard now rather than when the key expires.
            # Runs after cancellation; the client's own timeouts bound it.
            try:
                await forget(client, instance_id)
            except (redis.RedisError, OSError):
                logger.debug("broadcast_app heartbeat: could not withdraw", exc_info=True)
            finally:
                await client.aclose()

    def _warn_failure(self) -> None:
        now = time.monotonic()
        if now - self._last_failure >= _WARN_EVERY:
            self._last_failure = now
            logger.exception("broadcast_app heartbeat failed; retrying with backoff")

    def _warn(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY:
            self._last_warning = now
            logger.warning("broadcast_app could not send a heartbeat to Redis: %s", exc)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


heartbeat = Heartbeat()

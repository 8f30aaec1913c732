"""Redis clients for one channel-layer host entry, sync and async, with bounded timeouts.

A host entry is what channels-redis accepts in ``CONFIG["hosts"]``: an address URL, a
Sentinel config (``sentinels`` + ``master_name``), or ``redis.Redis`` keyword arguments;
or a Redis Cluster's startup nodes (``cluster``, see :mod:`.cluster`), for which the
client is redis-py's cluster client, routing each command to its slot's node.

redis-py is imported when the first client is made, not with this module: the saving
side (registry, capture, the publisher's queue) is loaded at ``django.setup()``, and the
publisher thread makes its client, so neither the startup nor a save pays that import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .cluster import CLUSTER

if TYPE_CHECKING:
    import redis
    import redis.asyncio as aioredis


def failures() -> tuple[type[BaseException], ...]:
    """What a failed Redis call raises, for an ``except`` (evaluated only on a failure)."""
    import redis

    return (redis.RedisError, OSError)


def _options(timeout: float, retry: Any) -> dict[str, Any]:
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        # No retry loop inside redis-py: a failed call is counted by the caller and the
        # next one reconnects, which keeps the time lost to an outage bounded.
        "retry": retry,
        "health_check_interval": 30,
    }


def make_client(host: dict[str, Any], timeout: float) -> redis.Redis:
    """A sync client (the publisher thread's)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    host, options = dict(host), _options(timeout, Retry(NoBackoff(), 0))
    if CLUSTER in host:
        from redis.cluster import ClusterNode, RedisCluster

        nodes = [ClusterNode(h, p) for h, p in host.pop(CLUSTER)]  # type: ignore[no-untyped-call]
        # Typed as a plain client: the callers use the commands both share.
        cluster: Any = RedisCluster(startup_nodes=nodes, **{**host, **options})
        return cluster  # type: ignore[no-any-return]
    if "address" in host:
        return redis.Redis.from_url(host.pop("address"), **{**host, **options})
    if "master_name" in host:
        from redis.sentinel import Sentinel

        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            host.pop("sentinels"),
            sentinel_kwargs=host.pop("sentinel_kwargs", None) or options,
            **options,
        )
        master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            host.pop("master_name"), **{**host, **options}
        )
        return master
    return redis.Redis(**{**host, **options})


def make_async_client(host: dict[str, Any], timeout: float, **extra: Any) -> aioredis.Redis:
    """An asyncio client (for reading logs in an instance's event loop)."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import NoBackoff

    host, options = dict(host), {**_options(timeout, AsyncRetry(NoBackoff(), 0)), **extra}
    if CLUSTER in host:
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        nodes = [ClusterNode(h, p) for h, p in host.pop(CLUSTER)]
        # One retry, which redis-py's cluster client makes with a fresh slot map: the
        # first read after a failover or a slot move then finds the slot's new node
        # (an instance would otherwise reset its subscribers for want of one read).
        options["retry"] = AsyncRetry(NoBackoff(), 1)
        cluster: Any = RedisCluster(startup_nodes=nodes, **{**host, **options})
        return cluster  # type: ignore[no-any-return]
    if "address" in host:
        return aioredis.Redis.from_url(host.pop("address"), **{**host, **options})
    if "master_name" in host:
        from redis.asyncio.sentinel import Sentinel

        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            host.pop("sentinels"),
            sentinel_kwargs=host.pop("sentinel_kwargs", None) or options,
            **options,
        )
        master: aioredis.Redis = sentinel.master_for(
            host.pop("master_name"), **{**host, **options}
        )
        return master
    return aioredis.Redis(**{**host, **options})

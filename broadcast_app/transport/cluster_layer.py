"""An instance's listening on a Redis Cluster: sharded pub/sub through redis-py, behind
the few channel-layer methods the listener uses.

channels-redis does not support Redis Cluster (channels-redis #420), so the listener
cannot join groups there. :class:`ClusterLayer` offers it what it calls on a layer
(``new_channel``, ``group_add``, ``receive``, ``group_send`` for its probes, ``flush``,
``deserialize``) over ``SSUBSCRIBE``: each group is the sharded channel of its model's
slot (:func:`.cluster.sharded_channel`), and the channels are grouped per node, one
pub/sub connection and one reader task per node, found in the cluster's slot map when
the layer is made.

Slot moves and failovers are not followed inside a layer: a node's connection that
fails, or a node that tells the layer its channel left (``sunsubscribe`` from the
server: the slot moved), makes ``receive()`` raise. The listener then closes the layer
and makes a new one, which reads the slot map afresh and subscribes on the new owners,
and repairs what was published in between from the log, as after any resubscription.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

import msgpack  # type: ignore[import-untyped]
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..conf import conf
from .cluster import cluster_host, sharded_channel
from .redis_clients import make_async_client

logger = logging.getLogger(__name__)


class SlotMoved(Exception):
    """A node stopped serving a subscribed channel's slot (a slot move or a failover)."""


class _Failure:
    """What a node's reader puts in the queue when it stops: the listener's ``receive``
    raises it, after the messages received before it."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class ClusterLayer:
    """Sharded pub/sub on a Redis Cluster, with the channel-layer methods the listener
    calls (one layer per subscription of the listener's; closed with ``flush``)."""

    def __init__(self) -> None:
        #: the listener's channel and its queue of raw messages (a DirectQueue may take
        #: its place, see fast_path.py: it reads this as channels-redis' own)
        self.channels: dict[str, asyncio.Queue[Any]] = {}
        self._channel = ""
        self._cluster: Any = None
        self._nodes: dict[str, tuple[aioredis.Redis, Any, asyncio.Task[None]]] = {}

    async def new_channel(self, prefix: str = "specific.") -> str:
        """The listener's channel (one per layer)."""
        self._channel = f"{prefix}{secrets.token_hex(8)}"
        self.channels[self._channel] = asyncio.Queue()
        return self._channel

    async def group_add(self, group: str, channel: str) -> None:
        """Subscribe to ``group``'s sharded channel, on the node serving its slot."""
        name = sharded_channel(group)
        node = (await self._client()).get_node_from_key(name)
        found = self._nodes.get(node.name)
        if found is None:
            await self._subscribe(node, name)
            return
        _, pubsub, _ = found
        await pubsub.ssubscribe(name)

    async def _subscribe(self, node: ClusterNode, name: str) -> None:
        timeout = conf.BROADCAST_REDIS_TIMEOUT
        client = aioredis.Redis(
            host=node.host,
            port=int(node.port),
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            # A failed read ends this layer (the listener makes a new one, from a fresh
            # slot map) rather than reconnecting to a node that may serve nothing now.
            retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
        )
        pubsub = client.pubsub()
        await pubsub.ssubscribe(name)
        task = asyncio.get_running_loop().create_task(self._read(node.name, pubsub))
        self._nodes[node.name] = (client, pubsub, task)

    async def _read(self, node: str, pubsub: Any) -> None:
        """Put what ``node`` sends in the queue, until it fails."""
        queue = self.channels[self._channel]
        try:
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is None:
                    continue
                kind = message["type"]
                if kind == "smessage":
                    queue.put_nowait(message["data"])
                elif kind == "sunsubscribe":
                    # Sent by Redis itself: this node no longer serves the slot.
                    raise SlotMoved(f"{message['channel']!r} left node {node}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            queue.put_nowait(_Failure(exc))

    async def receive(self, channel: str) -> dict[str, Any]:
        """The next message on ``channel``; raises what stopped a node's reader."""
        item = await self.channels[channel].get()
        if isinstance(item, _Failure):
            raise item.error
        return self.deserialize(item)

    def deserialize(self, data: Any) -> dict[str, Any]:
        """A raw message as the publish script packed it (msgpack)."""
        if not isinstance(data, bytes):
            raise TypeError(f"not a message: {data!r}")
        message: dict[str, Any] = msgpack.unpackb(data)
        return message

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """``SPUBLISH`` ``message`` on ``group``'s sharded channel (the listener's probes)."""
        client = await self._client()
        await client.spublish(sharded_channel(group), msgpack.packb(message))

    async def flush(self) -> None:
        """Stop the readers and close every connection."""
        nodes, self._nodes = list(self._nodes.values()), {}
        for _, _, task in nodes:
            task.cancel()
        await asyncio.gather(*(task for _, _, task in nodes), return_exceptions=True)
        for client, pubsub, _ in nodes:
            await _quietly(pubsub.aclose())
            await _quietly(client.aclose())
        cluster, self._cluster = self._cluster, None
        if cluster is not None:
            await _quietly(cluster.aclose())

    async def _client(self) -> Any:
        """This layer's cluster client, with the slot map read."""
        if self._cluster is None:
            self._cluster = make_async_client(cluster_host(), conf.BROADCAST_REDIS_TIMEOUT)
            await self._cluster.initialize()
        return self._cluster


async def _quietly(closing: Any) -> None:
    try:
        await closing
    except Exception:  # closing a broken connection may fail too; nothing to save
        logger.debug("broadcast_app: error while closing a cluster connection", exc_info=True)

"""Where events travel: names and Redis routes derived from the channel layer's config.

Events ride a channels-redis ``RedisPubSubChannelLayer``: one group per model, which
each instance's listener joins through the layer. Publishing happens in a Lua script
that assigns the event id and publishes in one atomic step (so ids increase in publish
order even with many publishing processes); it therefore writes the group channel name
and payload format that the layer itself reads, derived here from the layer's config
through :mod:`broadcast_app.upstream.channels_redis` (fast path ``script_publish``).
Without that fast path the script only logs the event and the publisher sends it with
the layer's ``group_send``.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from ..conf import conf
from ..upstream.channels_redis import (
    consistent_hash,
    decode_hosts,
    group_channel,
    script_publishing,
)
from . import cluster

PUBSUB_BACKEND = "channels_redis.pubsub.RedisPubSubChannelLayer"
#: ``type`` of the channel-layer message that carries one event
MESSAGE_TYPE = "broadcast.event"
#: ``type`` of the message that carries several events of one model, in order
BATCH_TYPE = "broadcast.events"
#: ``type`` of the message that says a model's events were lost (outage overflow)
RESET_TYPE = "broadcast.reset"


def layer_config() -> dict[str, Any]:
    """The ``CHANNEL_LAYERS`` entry broadcast_app uses ({} when missing)."""
    layers = getattr(settings, "CHANNEL_LAYERS", {}) or {}
    entry = layers.get(conf.BROADCAST_CHANNEL_LAYER, {})
    return entry if isinstance(entry, dict) else {}


def group_name(label: str) -> str:
    """The channel-layer group of one model's events, e.g. ``broadcast.demo.product``."""
    return f"{conf.BROADCAST_GROUP_PREFIX}.{label}"


def stream_key(label: str) -> str:
    """The Redis stream that assigns (and keeps) one model's event ids."""
    return f"{conf.BROADCAST_GROUP_PREFIX}:log:{label}"


def meta_key(label: str) -> str:
    """The Redis hash holding one model's log epoch and last event id."""
    return f"{conf.BROADCAST_GROUP_PREFIX}:meta:{label}"


def once_key(token: str) -> str:
    """The Redis hash of the events of one outbox transaction already published."""
    return f"{conf.BROADCAST_GROUP_PREFIX}:outbox:{token}"


# Epochs only need to differ from the lost log's: 32 random bits from a generator seeded
# by the OS (reseeded in a forked child), without a system call per event.
_random = random.Random()
os.register_at_fork(after_in_child=_random.seed)


def new_epoch() -> str:
    """A fresh log epoch (used by Redis only when a model's log is new or was lost)."""
    return f"{_random.getrandbits(32):08x}"


@dataclass(frozen=True)
class Route:
    """Where one model's events go: Redis host kwargs, pub/sub channel, stream keys."""

    label: str
    host: dict[str, Any]
    #: the host as a dict key (one client per host)
    key: str
    #: the model's group (for the layer's ``group_send``)
    group: str
    #: the group's Redis channel, which the publish script publishes on; "" when the
    #: publisher sends through the layer instead (fast path ``script_publish`` off)
    channel: str
    stream: str
    meta: str
    serializer_format: str


_routes: dict[str, Route] = {}


def route(label: str) -> Route:
    """The route of ``label``, computed once per model (until the settings change)."""
    found = _routes.get(label)
    if found is None:
        found = _routes[label] = _route(label)
    return found


def forget_routes() -> None:
    """Compute routes again (the channel-layer settings changed)."""
    _routes.clear()


def _route(label: str) -> Route:
    """Compute the route of ``label``: the host the pubsub layer uses for its group
    (where the model's log lives too)."""
    if cluster.enabled():
        return _cluster_route(label)
    config = layer_config().get("CONFIG", {}) or {}
    hosts = decode_hosts(config.get("hosts"))
    prefix = config.get("prefix", "asgi")
    group = group_name(label)
    channel = group_channel(prefix, group)
    host = hosts[consistent_hash(channel, len(hosts))]
    return Route(
        label=label,
        host=dict(host),
        key=repr(sorted(host.items())),
        group=group,
        channel=channel if script_publishing(config) else "",
        stream=stream_key(label),
        meta=meta_key(label),
        serializer_format=str(config.get("serializer_format", "msgpack")),
    )


def _cluster_route(label: str) -> Route:
    """The route of ``label`` on a Redis Cluster: every name in the model's hash slot
    (see :mod:`.cluster`), published with ``SPUBLISH`` by the script itself."""
    return Route(
        label=label,
        host=cluster.cluster_host(),
        key=cluster.CLUSTER,
        group=group_name(label),
        channel=cluster.channel(label),
        stream=cluster.tagged("log", label),
        meta=cluster.tagged("meta", label),
        serializer_format="msgpack",
    )

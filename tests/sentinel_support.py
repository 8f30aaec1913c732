"""A real Redis Sentinel setup for the failover tests: a master, a replica, three sentinels.

All five are ``redis-server`` processes from the same binary (``find_redis_server()``),
on free loopback ports, each in a temporary directory of its own (a sentinel rewrites
its config file). Everything ``SentinelSetup.start()`` started is stopped by ``stop()``.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import redis

from broadcast_app.dev.embedded_redis import EmbeddedRedis, find_redis_server

MASTER_NAME = "mymaster"
#: how long a sentinel waits before it calls a silent master down (small: a fast test)
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
REPLICATION_USER, REPLICATION_PASSWORD = "replication", "replication-secret"


class EmbeddedSentinel(EmbeddedRedis):
    """``redis-server <config> --sentinel`` watching one master."""

    def __init__(self, master_port: int, quorum: int) -> None:
        super().__init__()
        self.master_port = master_port
        self.quorum = quorum
        self.myid = secrets.token_hex(20)
        #: the other sentinels, told in the config (or discovery takes a hello round, 2 s)
        self.peers: list[EmbeddedSentinel] = []

    def arguments(self, directory: str) -> list[str]:
        config = Path(directory) / "sentinel.conf"
        config.write_text(
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            f"sentinel myid {self.myid}\n"
            + "".join(
                f"sentinel known-sentinel {MASTER_NAME} 127.0.0.1 {peer.port} {peer.myid}\n"
                for peer in self.peers
            )
        )
        return [
            find_redis_server(), str(config), "--sentinel",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", directory,
            "--logfile", "",
            "--loglevel", "warning",
        ]  # fmt: skip


class SentinelSetup:
    """Master + replica + three sentinels that agree on both before ``start()`` returns."""

    def __init__(self) -> None:
        # The replica's first full sync would otherwise wait 5 s for other replicas.
        self.master = EmbeddedRedis(None, "--repl-diskless-sync-delay", "0")
        # The replica logs in as a user of its own, so that a test can cut it off.
        self.replica = EmbeddedRedis(
            None,
            "--replicaof", "127.0.0.1", str(self.master.port),
            "--masteruser", REPLICATION_USER,
            "--masterauth", REPLICATION_PASSWORD,
        )  # fmt: skip
        self.sentinels = [EmbeddedSentinel(self.master.port, quorum=2) for _ in range(3)]
        for sentinel in self.sentinels:
            sentinel.peers = [peer for peer in self.sentinels if peer is not sentinel]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", s.port) for s in self.sentinels]

    def host(self, **options: Any) -> dict[str, Any]:
        """The channels-redis ``hosts`` entry for this setup."""
        return {"sentinels": self.addresses, "master_name": MASTER_NAME, **options}

    def start(self, timeout: float = 20.0) -> SentinelSetup:
        try:
            self.master.start()
            with redis.Redis(port=self.master.port) as client:
                client.acl_setuser(
                    REPLICATION_USER,
                    enabled=True,
                    passwords=[f"+{REPLICATION_PASSWORD}"],
                    keys=["*"],
                    channels=["*"],
                    commands=["+@all"],
                )
            self.replica.start()
            _wait(self._replicated, timeout)
            for sentinel in self.sentinels:
                sentinel.start()
            _wait(self._agreed, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _replicated(self) -> bool:
        # "master_link_status:up" comes a moment before writes really flow: probe one.
        try:
            with redis.Redis(port=self.master.port) as master:
                master.set("sentinel-setup:probe", 1)
            with redis.Redis(port=self.replica.port) as replica:
                return bool(replica.exists("sentinel-setup:probe"))
        except redis.RedisError:  # still loading, or not connected yet
            return False

    def _agreed(self) -> bool:
        # Each sentinel sees the master, its replica and the two other sentinels:
        # only then can a quorum vote a failover.
        for sentinel in self.sentinels:
            with redis.Redis(port=sentinel.port, decode_responses=True) as client:
                fields = client.sentinel_master(MASTER_NAME)
                if (
                    int(fields["port"]) != self.master.port
                    or int(fields["num-slaves"]) < 1
                    or int(fields["num-other-sentinels"]) < 2
                ):
                    return False
        return True

    def cut_replication(self, timeout: float = 10.0) -> None:
        """Disconnect the replica and keep it out: what the master writes from now on
        exists nowhere else (async replication lagging behind, made certain)."""
        with redis.Redis(port=self.master.port) as client:
            client.acl_setuser(REPLICATION_USER, enabled=False)
            client.client_kill_filter(user=REPLICATION_USER)
        _wait(lambda: _info(self.replica.port).get("master_link_status") == "down", timeout)

    def master_port(self) -> int | None:
        """The master's port as the first sentinel that answers says it."""
        for sentinel in self.sentinels:
            try:
                with redis.Redis(port=sentinel.port, socket_timeout=1) as client:
                    address = client.sentinel_get_master_addr_by_name(MASTER_NAME)
            except redis.RedisError:
                continue
            if address:
                return int(address[1])
        return None

    def wait_for_failover(self, timeout: float = 20.0) -> float:
        """Wait until the replica is the master (sentinels and itself); seconds waited."""
        start = time.monotonic()
        _wait(
            lambda: (
                self.master_port() == self.replica.port
                and _info(self.replica.port).get("role") == "master"
            ),
            timeout,
        )
        return time.monotonic() - start

    def stop(self) -> None:
        for server in [*self.sentinels, self.replica, self.master]:
            server.stop()


class Arrivals:
    """What reached one subscriber, in order: each event's number, or ``reset:<reason>``."""

    def __init__(self) -> None:
        self.log: list[int | str] = []

    @property
    def received(self) -> set[int]:
        return {item for item in self.log if isinstance(item, int)}

    @property
    def resets(self) -> list[str]:
        return [item for item in self.log if isinstance(item, str)]

    def reset_after(self, number: int) -> bool:
        return any(isinstance(item, str) for item in self.log[self.log.index(number) :])

    def uncovered(self, sent: Iterable[int]) -> list[int]:
        """Events sent but neither received nor followed by a reset after the last event
        received before them: the silent losses (there must be none)."""
        uncovered = []
        for number in sorted(set(sent) - self.received):
            before = [
                i for i, item in enumerate(self.log) if isinstance(item, int) and item < number
            ]
            after = self.log[before[-1] + 1 :] if before else self.log
            if not any(isinstance(item, str) for item in after):
                uncovered.append(number)
        return uncovered

    def figures(self, sent: int) -> dict[str, Any]:
        """Sent / received / reset, as the tests print them."""
        return {
            "sent": sent,
            "received": len(self.received),
            "received_twice": sum(isinstance(i, int) for i in self.log) - len(self.received),
            "resets": len(self.resets),
            "reasons": sorted(set(self.resets)),
        }


def _info(port: int) -> dict[str, Any]:
    try:
        with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as client:
            return dict(client.info("replication"))
    except redis.RedisError:
        return {}


def _wait(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"still not true after {timeout}s: {condition}")
        time.sleep(0.05)


async def eventually(condition: Any, timeout: float) -> bool:
    """Whether ``condition()`` became true within ``timeout`` seconds (polled)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True

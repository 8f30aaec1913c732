"""End to end through a Redis Cluster failover: two uvicorn instances, a real websocket client.

The demo instances use a Redis Cluster of three masters and three replicas
(``REDIS_CLUSTER_NODES``; tests/cluster_support.py). A product is changed through
instance A's admin about 20 times a second while a websocket client of instance B
watches it: events cross instances through the cluster (the publish script on the
model's slot's master, ``SPUBLISH``; B's listener on ``SSUBSCRIBE``). The master of the
model's slot is killed (SIGKILL) mid-stream; neither instance is restarted: the client
must see changes again once a replica is promoted, and every change must have reached it
or be covered by a ``reset`` frame after the last change it did see.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster_support import ClusterSetup
from tests.demo.test_e2e_sentinel import ADMIN, CHANGE_EVERY, SETUP, Watcher
from tests.e2e_support import Instance, admin_change, demo_stack, http_client, login, websocket
from tests.sentinel_support import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

RECOVERY_TIMEOUT = 30.0
SETTLE_TIMEOUT = 15.0
#: a name in demo.product's hash slot (the demo's keys carry the model's label as tag)
SLOT_KEY = "{demo.product}"


@pytest.fixture
def cluster_setup() -> Iterator[ClusterSetup]:
    setup = ClusterSetup().start()
    yield setup
    setup.stop()


async def test_a_websocket_client_sees_changes_again_after_a_cluster_failover(
    cluster_setup: ClusterSetup, tmp_path: Path, fault_report: Any
) -> None:
    password = secrets.token_urlsafe(16)
    # demo_stack() also checks that neither instance logged a traceback.
    with demo_stack(
        None, tmp_path, SETUP, password, "cluster-setup",
        REDIS_CLUSTER_NODES=",".join(cluster_setup.addresses),
    ) as demo:  # fmt: skip
        session_id = await asyncio.to_thread(login, demo.a.base_url, ADMIN, password)
        figures = await _run(cluster_setup, demo.a.base_url, demo.b, session_id, demo.setup_output)
    fault_report("cluster failover, two instances, websocket client", **figures)


async def _run(
    setup: ClusterSetup, admin_url: str, b: Instance, session_id: str, pk: int
) -> dict[str, Any]:
    watcher = Watcher()
    sent: list[int] = []
    async with (
        websocket(b.ws_url, origin=b.origin, session_id=session_id) as socket,
        http_client(admin_url, session_id) as admin,
    ):
        await socket.subscribe("demo.product")

        async def watch() -> None:
            while True:
                watcher.record(await socket.receive(timeout=RECOVERY_TIMEOUT + SETTLE_TIMEOUT))

        async def change() -> None:
            value = len(sent) + 1
            await admin_change(admin, "demo.product", pk, stock=str(value))
            sent.append(value)
            await asyncio.sleep(CHANGE_EVERY)

        watching = asyncio.ensure_future(watch())
        try:
            # Events cross from A to B through the cluster.
            while len(watcher.received) < 10:
                await change()
                assert len(sent) < 100, "no change reached the client before the failover"
            failover = asyncio.ensure_future(asyncio.to_thread(setup.kill_master_of, SLOT_KEY))
            killed_at = time.monotonic()
            await asyncio.sleep(0.1)  # the kill is the thread's first step
            killed_after = sent[-1]
            while not failover.done() or max(watcher.received) <= killed_after:
                await change()
                assert time.monotonic() - killed_at < RECOVERY_TIMEOUT, "nothing after failover"
            flowing_after = time.monotonic() - killed_at
            for _ in range(10):
                await change()
            # The last changes, or a reset, are on their way (asserted below).
            await eventually(lambda: not watcher.uncovered(sent), SETTLE_TIMEOUT)
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
    assert watcher.uncovered(sent) == [], watcher.log
    assert set(sent[-10:]) <= watcher.received, watcher.log
    _, failover_seconds = await failover
    return {
        **watcher.figures(len(sent)),
        "failover_s": round(failover_seconds, 1),
        "flowing_again_s": round(flowing_after, 1),
    }

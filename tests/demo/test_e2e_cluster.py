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
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster_support import ClusterSetup
from tests.demo.test_e2e_sentinel import ADMIN, SETUP, run_failover
from tests.e2e_support import demo_stack, login

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio, pytest.mark.cluster]

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

        async def fail_over() -> Awaitable[float]:
            killing = asyncio.to_thread(cluster_setup.kill_master_of, SLOT_KEY)
            failover = asyncio.ensure_future(killing)
            await asyncio.sleep(0.1)  # the kill is the thread's first step
            return asyncio.ensure_future(_seconds(failover))

        figures = await run_failover(
            fail_over, demo.a.base_url, demo.b, session_id, demo.setup_output
        )
    fault_report("cluster failover, two instances, websocket client", **figures)


async def _seconds(failover: Awaitable[tuple[Any, float]]) -> float:
    _, seconds = await failover
    return seconds

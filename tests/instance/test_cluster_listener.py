"""Listening on a Redis Cluster (sharded pub/sub), and a master's death followed.

A real cluster of three masters and three replicas (tests/cluster_support.py); the
publisher and one running listener use it through ``BROADCAST_REDIS_CLUSTER``. The
master of testapp.product's slot is killed (SIGKILL) while products are being saved; after
its replica takes over, the same listener, never restarted, receives events again
(a new slot map, resubscribed on the new master), and every saved event has either
reached its subscriber or is covered by a ``reset`` sent after the last event it did
receive. The figures go to the session's terminal summary.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.db import connections, transaction
from django.test import override_settings

from broadcast_app.conf import conf
from broadcast_app.instance.heartbeat import instance_key
from broadcast_app.instance.hub import hub
from broadcast_app.instance.listener import listener
from broadcast_app.instance.runtime import runtime
from broadcast_app.models import OutboxEvent
from broadcast_app.publish import publisher
from broadcast_app.publish.relay import Relay
from broadcast_app.stats import stats
from broadcast_app.transport.log_reader import event_log
from broadcast_app.transport.redis_transport import RedisTransport
from broadcast_app.transport.routes import route
from tests.cluster_support import ClusterSetup
from tests.instance.failover_drive import SETTLE_TIMEOUT, Recorder, save, save_through_failover
from tests.instance.test_presence import connect, join, make_user, members_until, subscribe
from tests.sentinel_support import eventually

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.asyncio,
    pytest.mark.slow,
    pytest.mark.cluster,
]


@pytest.fixture
def cluster_setup() -> Iterator[ClusterSetup]:
    setup = ClusterSetup().start()
    yield setup
    setup.stop()


@pytest_asyncio.fixture
async def recorder(cluster_setup: ClusterSetup) -> AsyncIterator[Recorder]:
    """The listener on the cluster, and a subscriber of testapp.product there."""
    recorder = Recorder()
    hub.add(recorder, "testapp.product", None)
    listener.continuity.last.clear()
    try:
        with override_settings(
            BROADCAST_REDIS_CLUSTER=cluster_setup.addresses,
            BROADCAST_RECOVERY_INTERVAL=0.5,
            BROADCAST_HEARTBEAT_INTERVAL=0.5,
        ):
            await runtime.start()
            assert listener.subscribed.is_set()
            yield recorder
            assert listener.running  # the same listener task throughout
    finally:
        hub.remove(recorder, "testapp.product", None)
        await runtime.stop()
        await event_log.close()
        hub.last_ids.clear()
        await sync_to_async(connections.close_all)()


async def test_events_flow_again_after_a_cluster_failover(
    cluster_setup: ClusterSetup, recorder: Recorder, fault_report: Any
) -> None:
    slot_key = route("testapp.product").stream

    def failover() -> float:
        return cluster_setup.kill_master_of(slot_key)[1]

    sent, flowing_after, failover_seconds = await save_through_failover(recorder, failover)

    figures = recorder.figures(sent)
    figures.update(failover_s=round(failover_seconds, 1), flowing_again_s=round(flowing_after, 1))
    fault_report("cluster failover, in-process listener", **figures)
    assert recorder.uncovered(range(sent)) == [], recorder.log
    # Its probes, in each model's slot, come back on the new master's connection too
    # (confirmation may have lapsed during a long outage: it comes back).
    assert await eventually(listener.confirmed, SETTLE_TIMEOUT)
    # The heartbeat, on a cluster client of its own, goes on too (whichever node its
    # slot is on now).
    key = instance_key(conf.BROADCAST_INSTANCE_ID)
    with cluster_setup.client() as client:
        client.delete(key)
        assert await eventually(lambda: bool(client.exists(key)), SETTLE_TIMEOUT)
    # Once the failover is over, nothing is missed.
    assert set(range(sent - 20, sent)) <= recorder.received


async def test_presence_works_on_a_cluster(recorder: Recorder) -> None:
    """Joins reach another connection's subscriber through the cluster (keys in the
    object's slot, notes by plain ``PUBLISH``, which every node relays)."""
    alice = await database_sync_to_async(make_user)("alice")
    bob = await database_sync_to_async(make_user)("bob")
    sockets = [await connect(alice), await connect(bob)]
    try:
        for ws in sockets:
            await subscribe(ws, "11")
        await join(sockets[0], "11", {"editing": "price"})
        for ws in sockets:
            members = await members_until(ws, "11", lambda m: bool(m))
            assert [m["user"]["username"] for m in members] == ["alice"]
    finally:
        for ws in sockets:
            await ws.disconnect()


async def test_the_outbox_relays_through_the_cluster_once(recorder: Recorder) -> None:
    """A relay that dies after publishing but before its delete commits: the events
    relayed again are skipped by the publish script (their records in the model's slot)."""
    relay = Relay()

    def crashed_pass() -> int:
        for number in range(3):
            save(number)
        with transaction.atomic():
            outcome = relay.relay_once()
            transaction.set_rollback(True)  # as if the process died here
        return outcome.published

    try:
        with override_settings(BROADCAST_DELIVERY="outbox", BROADCAST_OUTBOX_RELAY=False):
            assert await database_sync_to_async(crashed_pass)() == 3
            again = await database_sync_to_async(relay.drain)()
            assert (again.rows, again.published, again.duplicates) == (3, 0, 3)
            await database_sync_to_async(save)(3)
            await database_sync_to_async(relay.drain)()
            assert not await database_sync_to_async(OutboxEvent.objects.exists)()
            assert await eventually(lambda: len(recorder.log) >= 4, SETTLE_TIMEOUT)
    finally:
        relay.publisher.close()
    assert recorder.log == [0, 1, 2, 3]


async def test_events_follow_a_slot_moved_to_another_master(
    cluster_setup: ClusterSetup, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    """Resharding moves testapp.product's slot, log included, to another master: Redis
    unsubscribes the listener from the channel there, and the listener resubscribes on
    the new owner (a new slot map), with nothing lost or reset."""
    for number in range(5):
        await database_sync_to_async(save)(number)
    assert await eventually(lambda: len(recorder.received) == 5, SETTLE_TIMEOUT)
    await asyncio.to_thread(cluster_setup.move_slot_of, route("testapp.product").stream)
    # Told by Redis (sunsubscribe), not found out later by the log watchdog.
    assert await eventually(lambda: "left node" in caplog.text, SETTLE_TIMEOUT)
    for number in range(5, 10):
        await database_sync_to_async(save)(number)
    assert await database_sync_to_async(publisher.flush)(SETTLE_TIMEOUT)
    assert await eventually(lambda: len(recorder.received) == 10, SETTLE_TIMEOUT)
    assert recorder.log == list(range(10))


async def test_a_batch_in_one_sharded_message_arrives_event_by_event(
    recorder: Recorder,
) -> None:
    def body(n: int) -> str:
        data = {"id": n, "sku": f"F-{n}", "name": f"F-{n}", "price": "1.00"}
        frame = json.dumps(
            {"op": "created", "model": "testapp.product", "pk": str(n), "data": data,
             "ts": "2026-12-07T03:00:00.000000Z", "origin": "test"},
            separators=(",", ":"),
        )  # fmt: skip
        return frame[1:]

    transport = RedisTransport()
    try:
        # The listener's first event of the model, then 40 in one script call.
        first = [("testapp.product", body(0))]
        assert await asyncio.to_thread(transport.publish_batch, first) == (1, 0)
        assert await eventually(lambda: recorder.log == [0], SETTLE_TIMEOUT), recorder.log
        recovered = stats.get("recovered")
        batch = [("testapp.product", body(n)) for n in range(1, 41)]
        assert await asyncio.to_thread(transport.publish_batch, batch) == (40, 0)
    finally:
        transport.close()
    assert await eventually(lambda: len(recorder.log) >= 41, SETTLE_TIMEOUT), recorder.log
    assert recorder.log == list(range(41))
    assert stats.get("recovered") == recovered  # each named the one before it
    assert listener.continuity.last["testapp.product"] == recorder.ids[40]

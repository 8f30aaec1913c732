"""Redis Sentinel failover against real processes: events flow again, nothing is lost silently.

A master, a replica and three sentinels (tests/sentinel_support.py); the publisher and
one running listener use the channels-redis Sentinel host entry. The master is killed
(SIGKILL) while products are being saved; after the sentinels promote the replica the
same listener, never restarted, receives events again, and every saved event has
either reached its subscriber or is covered by a ``reset`` sent after the last event
it did receive. The figures go to the session's terminal summary (docs/reliability.md
quotes them).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import redis
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.db import connections
from django.test import override_settings

from broadcast_app.conf import conf
from broadcast_app.instance.heartbeat import instance_key
from broadcast_app.instance.hub import hub
from broadcast_app.instance.listener import listener
from broadcast_app.instance.runtime import runtime
from broadcast_app.publish import publisher
from broadcast_app.transport.log_reader import event_log
from broadcast_app.transport.routes import PUBSUB_BACKEND
from tests.instance.failover_drive import SETTLE_TIMEOUT, Recorder, save, save_through_failover
from tests.sentinel_support import SentinelSetup, eventually

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest_asyncio.fixture
async def recorder(sentinel_setup: SentinelSetup) -> AsyncIterator[Recorder]:
    """The listener on the Sentinel setup, and a subscriber of testapp.product there."""
    recorder = Recorder()
    hub.add(recorder, "testapp.product", None)
    # A fresh start: nothing remembered of another test's Redis (that would be a reset).
    listener.continuity.last.clear()
    # As docs/reliability.md advises: every wait on a sentinel or a master bounded.
    host = sentinel_setup.host(
        socket_connect_timeout=1,
        sentinel_kwargs={"socket_timeout": 1, "socket_connect_timeout": 1},
    )
    layers = {"default": {"BACKEND": PUBSUB_BACKEND, "CONFIG": {"hosts": [host]}}}
    try:
        with override_settings(
            CHANNEL_LAYERS=layers,
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


async def test_events_flow_again_after_a_sentinel_failover(
    sentinel_setup: SentinelSetup, recorder: Recorder, fault_report: Any
) -> None:
    def failover() -> float:
        sentinel_setup.master.kill()
        return sentinel_setup.wait_for_failover()

    sent, flowing_after, failover_seconds = await save_through_failover(recorder, failover)
    # The heartbeat, on a client of its own, found the new master too.
    key = instance_key(conf.BROADCAST_INSTANCE_ID)
    with redis.Redis(port=sentinel_setup.replica.port) as new_master:
        new_master.delete(key)
        assert await eventually(lambda: bool(new_master.exists(key)), SETTLE_TIMEOUT)

    figures = recorder.figures(sent)
    figures.update(failover_s=round(failover_seconds, 1), flowing_again_s=round(flowing_after, 1))
    fault_report("sentinel failover, in-process listener", **figures)
    assert recorder.uncovered(range(sent)) == []
    # Once the failover is over, nothing is missed.
    assert set(range(sent - 20, sent)) <= recorder.received


async def test_writes_the_replica_never_got_become_a_reset(
    sentinel_setup: SentinelSetup, recorder: Recorder
) -> None:
    """Asynchronous replication: what the master acknowledged but never replicated is
    gone after the failover. The instance that received it resets its subscribers, and a
    client resuming from one of those ids gets ``reset`` too: never a silent gap."""
    for number in range(5):
        await database_sync_to_async(save)(number)
    assert await eventually(lambda: len(recorder.received) == 5, SETTLE_TIMEOUT)
    sentinel_setup.cut_replication()
    for number in range(5, 10):  # received live, but on the master only
        await database_sync_to_async(save)(number)
    assert await eventually(lambda: len(recorder.received) == 10, SETTLE_TIMEOUT)
    sentinel_setup.master.kill()
    await asyncio.to_thread(sentinel_setup.wait_for_failover)
    for number in range(10, 15):
        await database_sync_to_async(save)(number)
    assert await database_sync_to_async(publisher.flush)(SETTLE_TIMEOUT)
    # The first event on the new master follows an id older than the publisher's last:
    # it resets the model ("lost"). The listener may reset first, for a reason of its
    # own: that event does not follow the last one it received ("too_old", or "epoch"
    # after the publisher's reset), or its watchdog found the log behind it
    # ("unknown") or in a new epoch ("epoch").
    assert await eventually(
        lambda: recorder.received >= set(range(10, 15)) or recorder.reset_after(9),
        SETTLE_TIMEOUT,
    )
    # Events 11-14 may still be on their way behind the reset: wait for them too.
    await eventually(lambda: not recorder.uncovered(range(15)), SETTLE_TIMEOUT)  # below
    assert recorder.log[:10] == list(range(10))
    assert str(recorder.log[10]).startswith("reset:")
    assert recorder.uncovered(range(15)) == []
    # Resuming from before the lost events must not look complete either.
    for since in (4, 5, 9):
        replay = await event_log.read_after("testapp.product", recorder.ids[since])
        assert (replay.complete, replay.reason) == (False, "epoch")

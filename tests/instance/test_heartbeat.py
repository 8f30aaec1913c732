"""Heartbeats: every instance listed through Redis, gone when it stops or falls silent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from django.test import override_settings

from broadcast_app.conf import conf
from broadcast_app.instance import heartbeat as hb
from broadcast_app.instance.figures import instance_figures
from broadcast_app.instance.runtime import InstanceRuntime, runtime
from broadcast_app.stats import stats
from tests.conftest import layers_for

pytestmark = pytest.mark.asyncio

TIMEOUT = 5


@pytest_asyncio.fixture
async def client() -> AsyncIterator[aioredis.Redis]:
    async with hb.connect() as connection:
        await connection.delete(hb.index_key())
        yield connection
        await connection.delete(hb.index_key())


def figures(instance_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": instance_id, "received": 0, **extra}


async def test_two_instances_are_listed(client: aioredis.Redis) -> None:
    await hb.beat(client, figures("one", received=3))
    await hb.beat(client, figures("two", received=5))
    listed = await hb.live_instances(client)
    assert [(i["id"], i["received"]) for i in listed] == [("one", 3), ("two", 5)]
    ttl_ms = await client.pttl(hb.instance_key("one"))
    assert 0 < ttl_ms <= conf.BROADCAST_HEARTBEAT_TTL * 1000


async def test_an_instance_whose_heartbeat_expired_is_pruned(client: aioredis.Redis) -> None:
    await hb.beat(client, figures("alive"))
    await hb.beat(client, figures("dead"))
    await client.delete(hb.instance_key("dead"))  # what its TTL does when it dies silently
    assert [i["id"] for i in await hb.live_instances(client)] == ["alive"]
    assert await client.smembers(hb.index_key()) == {"alive"}


async def test_the_task_beats_at_once_and_withdraws_on_stop(client: aioredis.Redis) -> None:
    beat, tasks = hb.Heartbeat(), InstanceRuntime()
    with override_settings(BROADCAST_INSTANCE_ID="task-test"):
        tasks.spawn("heartbeat", partial(beat.run, instance_figures))
        try:
            await asyncio.wait_for(beat.sent.wait(), TIMEOUT)
            (listed,) = await hb.live_instances(client)
            assert listed["id"] == "task-test"
            assert {"uptime_s", "connections", "published", "received"} <= set(listed)
        finally:
            await tasks.cancel("heartbeat")
    assert not tasks.running("heartbeat")
    assert await hb.live_instances(client) == []


async def test_redis_down_is_counted_not_raised() -> None:
    beat, tasks = hb.Heartbeat(), InstanceRuntime()
    errors = stats.get("heartbeat_errors")
    with override_settings(CHANNEL_LAYERS=layers_for("redis://127.0.0.1:1/0")):
        tasks.spawn("heartbeat", partial(beat.run, instance_figures))
        await asyncio.wait_for(beat.sent.wait(), TIMEOUT)
        assert tasks.running("heartbeat")
        await asyncio.wait_for(tasks.cancel("heartbeat"), TIMEOUT)
    assert stats.get("heartbeat_errors") == errors + 1


async def test_a_failure_that_is_not_redis_is_logged_and_the_task_goes_on(
    client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A figure that cannot be read (here: the cache alias names no cache) used to kill
    the task for good; it is logged, counted, and heartbeats resume once it is fixed."""
    beat, tasks = hb.Heartbeat(), InstanceRuntime()
    errors = stats.get("heartbeat_errors")
    with override_settings(BROADCAST_INSTANCE_ID="failing", BROADCAST_HEARTBEAT_INTERVAL=0.05):
        with override_settings(BROADCAST_CACHE_ALIAS="no-such-cache"):
            tasks.spawn("heartbeat", partial(beat.run, instance_figures))
            await asyncio.wait_for(beat.sent.wait(), TIMEOUT)
            assert tasks.running("heartbeat")
            assert stats.get("heartbeat_errors") == errors + 1
            assert "heartbeat failed" in caplog.text
        try:
            beats = stats.get("heartbeats")
            beat.sent.clear()  # the next beat starts after the fix (the backoff: 0.1 s)
            await asyncio.wait_for(beat.sent.wait(), TIMEOUT)
            assert stats.get("heartbeats") == beats + 1
            assert [i["id"] for i in await hb.live_instances(client)] == ["failing"]
        finally:
            await tasks.cancel("heartbeat")


async def test_the_listener_runs_a_heartbeat(running_listener: Any) -> None:
    assert runtime.running("heartbeat")
    await runtime.stop()
    assert not runtime.running("heartbeat")


async def test_stop_survives_a_cancellation_turned_into_a_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """asyncio.timeout's race: a cancel landing as a Redis timeout expires is a TimeoutError."""
    entered = asyncio.Event()

    async def racing_beat(client: Any, figures: dict[str, Any]) -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise TimeoutError("Timeout reading from socket") from None

    monkeypatch.setattr(hb, "beat", racing_beat)
    beat, tasks = hb.Heartbeat(), InstanceRuntime()
    tasks.spawn("heartbeat", partial(beat.run, instance_figures))
    await asyncio.wait_for(entered.wait(), TIMEOUT)
    await asyncio.wait_for(tasks.cancel("heartbeat"), TIMEOUT)
    assert not tasks.running("heartbeat")


async def test_a_sentinel_host_keeps_its_connection_options() -> None:
    """The master's ``db`` and ``password`` in a Sentinel host entry are not dropped."""
    host = {"sentinels": [("127.0.0.1", 1)], "master_name": "mymaster", "db": 3, "password": "pw"}
    layers = layers_for("unused")
    layers["default"]["CONFIG"]["hosts"] = [host]
    with override_settings(CHANNEL_LAYERS=layers):
        client = hb.make_client()  # connects lazily: nothing listens on port 1
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["db"], kwargs["password"]) == (3, "pw")
    await client.aclose()

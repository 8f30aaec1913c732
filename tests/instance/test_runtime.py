"""The instance runtime: one owner starts, supervises and stops the background work."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.test import override_settings

from broadcast_app.dev.embedded_redis import EmbeddedRedis
from broadcast_app.instance.heartbeat import heartbeat
from broadcast_app.instance.listener import listener
from broadcast_app.instance.runtime import Backoff, InstanceRuntime, runtime
from broadcast_app.publish.relay import InProcessRelay, RelayLoop, in_process
from broadcast_app.stats import stats
from broadcast_app.transport.log_reader import event_log
from tests.conftest import layers_for

TIMEOUT = 10.0
_SLACK = 0.01  # seconds a timer may fire early (the loop's clock resolution, and rounding)


def failures_logged(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == "broadcast_app.instance.runtime"
        and record.levelno == logging.ERROR
        and f"task {name!r} failed" in record.getMessage()
    ]


class Failures(logging.Handler):
    """Sets ``twice`` once the runtime logged two failures of the task ``name``."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name, self.count, self.twice = name, 0, asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if f"task {self.name!r} failed" in record.getMessage():
            self.count += 1
            if self.count >= 2:
                self.twice.set()


@pytest.mark.asyncio
@pytest.mark.slow
async def test_a_failing_task_is_logged_once_per_failure_and_restarted_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hook of our own that raises on its first three runs: each failure is logged
    once with its traceback, and the runs start after doubling delays (capped)."""
    tasks = InstanceRuntime(first_delay=0.1, max_delay=0.25)
    loop = asyncio.get_running_loop()
    starts: list[float] = []
    healthy = asyncio.Event()

    async def hook() -> None:
        starts.append(loop.time())
        if len(starts) <= 3:
            raise RuntimeError(f"injected failure {len(starts)}")
        healthy.set()
        await asyncio.Event().wait()

    restarts = stats.get("task_restarts")
    tasks.spawn("hook", hook)
    try:
        await asyncio.wait_for(healthy.wait(), TIMEOUT)
        assert tasks.running("hook")
    finally:
        await tasks.cancel("hook")
    assert not tasks.running("hook")
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert len(gaps) == 3
    for gap, delay in zip(gaps, (0.1, 0.2, 0.25), strict=True):
        assert gap >= delay - _SLACK
    logged = failures_logged(caplog, "hook")
    assert [record.exc_info[1].args[0] for record in logged if record.exc_info] == [
        "injected failure 1",
        "injected failure 2",
        "injected failure 3",
    ]
    assert stats.get("task_restarts") == restarts + 3


@pytest.mark.asyncio
async def test_a_task_meant_to_run_forever_that_returns_is_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks = InstanceRuntime(first_delay=0.01)
    runs = 0
    again = asyncio.Event()

    async def returns_once() -> None:
        nonlocal runs
        runs += 1
        if runs == 2:
            again.set()
            await asyncio.Event().wait()

    tasks.spawn("returns", returns_once)
    await asyncio.wait_for(again.wait(), TIMEOUT)
    await tasks.cancel("returns")
    assert "task 'returns' ended; restarting" in caplog.text


@pytest.mark.asyncio
async def test_a_task_that_may_end_is_not_restarted() -> None:
    tasks = InstanceRuntime(first_delay=0.01)
    runs = 0

    async def once() -> None:
        nonlocal runs
        runs += 1

    task = tasks.spawn("once", once, forever=False)
    await asyncio.wait_for(task, TIMEOUT)
    assert runs == 1 and not tasks.running("once")


def test_the_backoff_doubles_up_to_its_cap_and_starts_over_after_a_long_run() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.after(0.1) for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff.after(3600) == 0.5


@pytest.mark.asyncio
@pytest.mark.slow
async def test_the_heartbeat_comes_back_after_a_failure_it_cannot_handle(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A layer host redis-py refuses makes the heartbeat's client fail before its loop:
    that task used to die silently; it is logged and restarted, and beats resume once
    the setting is fixed."""
    bad = layers_for("nope://127.0.0.1:1/0")
    failures = Failures("heartbeat")
    logging.getLogger("broadcast_app.instance.runtime").addHandler(failures)
    try:
        with override_settings(CHANNEL_LAYERS=bad):
            await runtime.start(wait=False)
            await asyncio.wait_for(failures.twice.wait(), TIMEOUT)
            assert runtime.running("heartbeat")
        first, second = failures_logged(caplog, "heartbeat")[:2]
        assert "restarting in 0.5s" in first.getMessage()
        assert "restarting in 1.0s" in second.getMessage()
        assert second.created - first.created >= 0.5 - _SLACK
        heartbeat.sent.clear()
        await asyncio.wait_for(heartbeat.sent.wait(), TIMEOUT)
        await asyncio.wait_for(listener.subscribed.wait(), TIMEOUT)
    finally:
        logging.getLogger("broadcast_app.instance.runtime").removeHandler(failures)
        await runtime.stop()


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server for one test, so every connection to it is this test's."""
    server = EmbeddedRedis().start()
    try:
        with override_settings(CHANNEL_LAYERS=layers_for(server.url)):
            yield server
    finally:
        server.stop()


def other_clients(client: redis.Redis) -> list[dict[str, Any]]:
    me = client.client_id()
    return [entry for entry in client.client_list() if int(entry["id"]) != me]


def ours(task: asyncio.Task[Any]) -> bool:
    return task is not asyncio.current_task()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_stop_cancels_every_task_joins_the_thread_and_closes_every_connection(
    own_redis: EmbeddedRedis,
) -> None:
    before = {task for task in asyncio.all_tasks() if ours(task)}
    checker = redis.Redis.from_url(own_redis.url)
    try:
        with override_settings(BROADCAST_OUTBOX_RELAY=True):
            await runtime.start()
            try:
                assert listener.subscribed.is_set() and in_process.running
                await asyncio.wait_for(heartbeat.sent.wait(), TIMEOUT)
                # A resume's read, in this loop, as a consumer's would be.
                await event_log.read_after("testapp.product", "1-0:epoch")
                assert all(runtime.running(n) for n in ("listener", "confirmation", "heartbeat"))
                assert other_clients(checker)  # the test can fail
            finally:
                await runtime.stop()
        assert other_clients(checker) == []
        assert {task for task in asyncio.all_tasks() if ours(task)} <= before
        assert not in_process.running
        assert not [t for t in threading.enumerate() if t.name == "broadcast-outbox-relay"]
        assert not listener.running and not runtime.running("heartbeat")
        # A start() after this waits for a new subscription, not the old one's flag.
        assert not listener.subscribed.is_set()
    finally:
        checker.close()


@pytest.mark.slow
def test_the_relay_thread_is_restarted_with_backoff_when_its_loop_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A relay loop over a database alias that does not exist fails for real (its
    cleanup raises ConnectionDoesNotExist): the thread logs it and runs it again."""
    failed_twice = threading.Event()
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "outbox relay thread failed" in record.getMessage():
                records.append(record)
                if len(records) == 2:
                    failed_twice.set()

    handler = Collect()
    logging.getLogger("broadcast_app.publish.relay").addHandler(handler)
    loop = RelayLoop(aliases=["no-such-database"], interval=0.01)
    thread = threading.Thread(target=InProcessRelay._supervise, args=(loop,))
    thread.start()
    try:
        assert failed_twice.wait(TIMEOUT)
    finally:
        loop.stop()
        thread.join(TIMEOUT)
        logging.getLogger("broadcast_app.publish.relay").removeHandler(handler)
    assert not thread.is_alive()
    first, second = records[:2]
    assert "restarting in 0.5s" in first.getMessage()
    assert "restarting in 1.0s" in second.getMessage()
    assert second.created - first.created >= 0.5 - _SLACK
    assert first.exc_info is not None


@pytest.mark.asyncio
async def test_a_task_spawned_from_another_loop_leaves_the_instance_alone(
    running_listener: Any,
) -> None:
    """A second event loop (a thread running ``async_to_sync`` work) that starts a task
    of its own does not make the runtime forget this loop's tasks."""
    subscribed = listener.subscribed
    listener_task = runtime.task("listener")

    async def elsewhere() -> bool:
        ran = asyncio.Event()

        async def job() -> None:
            ran.set()
            await asyncio.Event().wait()

        runtime.spawn("elsewhere", job)
        await asyncio.wait_for(ran.wait(), TIMEOUT)
        await runtime.cancel("elsewhere")
        return True

    assert await asyncio.to_thread(asyncio.run, elsewhere())
    assert runtime.task("listener") is listener_task and runtime.running("listener")
    assert listener.subscribed is subscribed and subscribed.is_set()

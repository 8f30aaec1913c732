"""An instance repairs what its listener missed from the log, or resets."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis
from channels.db import database_sync_to_async
from django.test import override_settings

from broadcast_app.instance import cache
from broadcast_app.instance.hub import hub
from broadcast_app.instance.runtime import runtime
from broadcast_app.publish import publisher
from broadcast_app.signals import change_received
from broadcast_app.transport.routes import meta_key, stream_key
from tests.conftest import layers_for
from tests.testapp.models import Product

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

TIMEOUT = 5


@pytest.fixture
def seen() -> Iterator[asyncio.Queue[dict[str, Any]]]:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def receiver(sender: Any, event: dict[str, Any], **kwargs: Any) -> None:
        await queue.put(event)

    change_received.connect(receiver, weak=False, dispatch_uid="test-continuity")
    yield queue
    change_received.disconnect(dispatch_uid="test-continuity")


def deaf_layers(url: str) -> dict[str, Any]:
    """Same Redis and logs, but a channel nobody listens on: the listener misses these."""
    layers = layers_for(url)
    layers["default"]["CONFIG"]["prefix"] = "deaf"
    return layers


def save_stock(product: Product, values: range) -> None:
    for value in values:
        product.stock = value
        product.save()
    publisher.flush(TIMEOUT)


async def next_stocks(queue: asyncio.Queue[dict[str, Any]], count: int) -> list[int]:
    return [(await asyncio.wait_for(queue.get(), TIMEOUT))["data"]["stock"] for _ in range(count)]


async def test_gap_is_replayed_in_order_before_the_next_event(
    running_listener: Any, seen: asyncio.Queue[dict[str, Any]], redis_server: Any
) -> None:
    product = await database_sync_to_async(Product.objects.create)(
        name="G", sku="G", price=Decimal(1)
    )
    assert (await asyncio.wait_for(seen.get(), TIMEOUT))["op"] == "created"
    with override_settings(CHANNEL_LAYERS=deaf_layers(redis_server.url)):
        await database_sync_to_async(save_stock)(product, range(1, 6))
    await database_sync_to_async(save_stock)(product, range(6, 7))
    assert await next_stocks(seen, 6) == [1, 2, 3, 4, 5, 6]
    assert (await database_sync_to_async(cache.fetch)(Product, product.pk)).data["stock"] == 6


@override_settings(BROADCAST_RECOVERY_INTERVAL=0.1)
@pytest.mark.slow
async def test_watchdog_finds_a_gap_no_later_event_reveals(
    running_listener: Any, seen: asyncio.Queue[dict[str, Any]], redis_server: Any
) -> None:
    await runtime.stop()  # restart it with the short interval
    await runtime.start()
    product = await database_sync_to_async(Product.objects.create)(
        name="W", sku="W", price=Decimal(1)
    )
    await asyncio.wait_for(seen.get(), TIMEOUT)
    with override_settings(CHANNEL_LAYERS=deaf_layers(redis_server.url)):
        await database_sync_to_async(save_stock)(product, range(1, 4))
    assert await next_stocks(seen, 3) == [1, 2, 3]


async def test_the_first_events_of_a_log_empty_at_start_are_repaired_too(
    running_listener: Any,
    seen: asyncio.Queue[dict[str, Any]],
    redis_server: Any,
    redis_client: redis.Redis,
) -> None:
    """A model with no event yet when the listener starts: its first events, if
    missed, are a gap like any other (nothing before them tells, but the log does)."""
    redis_client.delete(stream_key("testapp.product"), meta_key("testapp.product"))
    await runtime.stop()  # follow the now empty log from its start
    await runtime.start()
    with override_settings(CHANNEL_LAYERS=deaf_layers(redis_server.url)):
        product = await database_sync_to_async(Product.objects.create)(
            name="E", sku="E", price=Decimal(1)
        )  # logged, unheard: the log's first event
        assert await asyncio.to_thread(publisher.flush, TIMEOUT)
    await database_sync_to_async(save_stock)(product, range(5, 6))
    first = await asyncio.wait_for(seen.get(), TIMEOUT)
    assert (first["op"], first["pk"]) == ("created", str(product.pk))
    assert await next_stocks(seen, 1) == [5]


async def test_lost_log_resets_cache_and_subscribers(
    running_listener: Any, seen: asyncio.Queue[dict[str, Any]], redis_client: redis.Redis
) -> None:
    class Subscriber:
        def __init__(self) -> None:
            self.resets: list[tuple[str, str | None, str]] = []

        def deliver(self, frame: str, event: dict[str, Any]) -> None:
            pass

        def reset(self, label: str, pk: str | None, reason: str) -> None:
            self.resets.append((label, pk, reason))

    subscriber = Subscriber()
    hub.add(subscriber, "testapp.product", None)
    try:
        product = await database_sync_to_async(Product.objects.create)(
            name="L", sku="L", price=Decimal(1)
        )
        await asyncio.wait_for(seen.get(), TIMEOUT)
        assert (await database_sync_to_async(cache.fetch)(Product, product.pk)).hit
        # Redis loses its data (restart without persistence): a new epoch begins.
        redis_client.delete(stream_key("testapp.product"), meta_key("testapp.product"))
        other = await database_sync_to_async(Product.objects.create)(
            name="M", sku="M", price=Decimal(1)
        )
        event = await asyncio.wait_for(seen.get(), TIMEOUT)
        assert event["pk"] == str(other.pk)
        assert subscriber.resets == [("testapp.product", None, "epoch")]
        # The entry cached before the loss is gone: the next read is a miss.
        assert not (await database_sync_to_async(cache.fetch)(Product, product.pk)).hit
    finally:
        hub.remove(subscriber, "testapp.product", None)


async def test_a_listener_behind_but_processing_is_not_taken_for_deaf() -> None:
    from broadcast_app.instance.continuity import Continuity
    from broadcast_app.transport.log_reader import event_log

    product = await database_sync_to_async(Product.objects.create)(
        name="B", sku="B", price=Decimal(1)
    )
    await asyncio.to_thread(publisher.flush, TIMEOUT)
    ids = [await event_log.last_id("testapp.product")]
    for stock in (1, 2):
        await database_sync_to_async(save_stock)(product, range(stock, stock + 1))
        ids.append(await event_log.last_id("testapp.product"))
    first, second, third = ids
    continuity = Continuity()
    continuity.last["testapp.product"] = first
    assert await continuity.stale_labels() == []  # the first check only notes the log's end
    # A whole interval later the log's end then is still not processed, but the
    # listener processed an event since: it is behind (a queue before it), not deaf.
    continuity.last["testapp.product"] = second
    assert await continuity.stale_labels() == []
    # One more interval without any progress: its subscription stopped delivering.
    assert await continuity.stale_labels() == ["testapp.product"]
    continuity.last["testapp.product"] = third
    assert await continuity.stale_labels() == []
    await event_log.close()


class _Resets:
    """A local subscriber that records the resets it gets."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.seen = asyncio.Event()

    def deliver(self, frame: str, event: dict[str, Any]) -> None:
        pass

    def reset(self, label: str, pk: str | None, reason: str) -> None:
        self.reasons.append(reason)
        self.seen.set()


@pytest.mark.slow
async def test_a_silent_host_of_two_ends_cache_hits_and_resets_until_it_answers() -> None:
    """Probes go to every Redis host the listener hears from: one that hangs (SIGSTOP:
    connections open, no answer) lapses the confirmation within the bound."""
    import os
    import signal

    from broadcast_app.instance.listener import listener
    from tests.publish.test_pipeline import two_hosts

    subscriber = _Resets()
    with two_hosts() as (_first, second, _products, _articles):
        assert second.process is not None
        with override_settings(BROADCAST_CONFIRM_TIMEOUT=1.0):
            await runtime.start()
            hub.add(subscriber, "testapp.product", None)
            try:
                assert listener.subscribed.is_set() and cache.serving_hits()
                os.kill(second.process.pid, signal.SIGSTOP)
                await asyncio.wait_for(subscriber.seen.wait(), 2 * TIMEOUT)
                assert subscriber.reasons == ["disconnected"]
                assert not cache.serving_hits() and not listener.subscribed.is_set()
                os.kill(second.process.pid, signal.SIGCONT)
                await asyncio.wait_for(listener.subscribed.wait(), 2 * TIMEOUT)
                assert cache.serving_hits() and subscriber.reasons == ["disconnected"]
            finally:
                os.kill(second.process.pid, signal.SIGCONT)
                hub.remove(subscriber, "testapp.product", None)
                await runtime.stop()
    assert cache.serving_hits()  # no listener: hits as before

"""Events processed where channels-redis' reader hands them over, when nothing is in the way."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import channel_layers
from django.test import override_settings

from broadcast_app import cache
from broadcast_app.events.wire import id_key
from broadcast_app.instance.hub import hub
from broadcast_app.instance.listener import Listener
from broadcast_app.publish import publisher
from broadcast_app.signals import change_received
from broadcast_app.stats import stats
from broadcast_app.transport import fast_path as direct
from broadcast_app.transport.routes import MESSAGE_TYPE
from tests.instance.recording import TIMEOUT, Recorder
from tests.testapp.models import Product

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


def raw_event(layer: Any, number: int, prev: str) -> tuple[bytes, str]:
    """A layer message as the publish script sends it, serialized as the layer reads it."""
    event_id = f"1-{number}:test"
    frame = json.dumps(
        {"type": "change", "id": event_id, "op": "updated", "model": "testapp.product",
         "pk": "7", "data": {"id": 7, "stock": number}, "changed": ["stock"],
         "ts": "2026-11-24T21:00:00.000000Z", "origin": "test"},
        separators=(",", ":"),
    )  # fmt: skip
    return layer.serialize({"type": MESSAGE_TYPE, "frame": frame, "prev": prev}), event_id


@pytest.fixture
def rare_probes() -> Iterator[None]:
    """The listener's probes (probe.py) share the layer's connection: one arriving with
    the event would be in its way and send it through the queue. Started with this, the
    listener probes every 120 s once confirmed, so none comes during the test."""
    with override_settings(BROADCAST_CONFIRM_TIMEOUT=600):
        yield


async def test_a_saved_change_reaches_clients_without_the_layers_queue(
    rare_probes: None, running_listener: Any, recorder: Recorder
) -> None:
    product = await database_sync_to_async(Product.objects.create)(
        name="D", sku="D-1", price=Decimal(1)
    )
    await recorder.wait_for(1)
    before = stats.get("received_direct")

    def save() -> None:
        product.stock = 5
        product.save()
        publisher.flush(TIMEOUT)

    await database_sync_to_async(save)()
    await recorder.wait_for(2)
    assert stats.get("received_direct") == before + 1
    assert [f["op"] for f in recorder.frames] == ["created", "updated"]
    assert recorder.frames[1]["changed"] == ["stock"]
    assert (await database_sync_to_async(cache.fetch)(Product, product.pk)).data["stock"] == 5


async def test_a_burst_still_goes_through_in_order(
    running_listener: Any, recorder: Recorder
) -> None:
    products = await database_sync_to_async(
        lambda: [
            Product.objects.create(name="B", sku=f"B-{n}", price=Decimal(1)) for n in range(30)
        ]
    )()
    await recorder.wait_for(30)
    await database_sync_to_async(
        lambda: Product.objects.filter(sku__startswith="B-").update(stock=9)
    )()
    await recorder.wait_for(60)
    updates = [f for f in recorder.frames if f["op"] == "updated"]
    assert sorted(f["pk"] for f in updates) == sorted(str(p.pk) for p in products)
    ids = [f["id"] for f in recorder.frames]
    assert ids == sorted(ids, key=id_key)  # in publish order
    assert len(set(ids)) == 60  # each event once


async def test_at_most_one_event_per_turn_of_the_loop_and_only_the_next_one() -> None:
    layer = channel_layers.make_backend("default")
    listener = Listener()
    listener.continuity.last["testapp.product"] = "1-1:test"
    recorder = Recorder()
    hub.add(recorder, "testapp.product", None)
    try:
        second, second_id = raw_event(layer, 2, "1-1:test")
        third, _ = raw_event(layer, 3, second_id)
        gap, _ = raw_event(layer, 5, "1-4:test")
        assert listener.handle_now(layer, second)
        assert not listener.handle_now(layer, third)  # the same turn: queued instead
        await asyncio.sleep(0)  # the next turn of the loop
        assert not listener.handle_now(layer, gap)  # a gap before it: repaired from the log
        assert listener.handle_now(layer, third)
        await asyncio.sleep(0)
        async with listener._order:  # the listener is busy (a repair, say)
            assert not listener.handle_now(layer, raw_event(layer, 4, "1-3:test")[0])
        assert [f["data"]["stock"] for f in recorder.frames] == [2, 3]
        assert listener.continuity.last["testapp.product"] == "1-3:test"

        async def receiver(**kwargs: Any) -> None:
            pass

        change_received.connect(receiver, dispatch_uid="test-direct")
        try:  # a receiver may let requests run: the ordinary path keeps cache first
            assert not listener.handle_now(layer, raw_event(layer, 4, "1-3:test")[0])
        finally:
            change_received.disconnect(dispatch_uid="test-direct")
    finally:
        hub.remove(recorder, "testapp.product", None)


async def test_the_queue_offers_an_item_only_when_nothing_waits_before_it() -> None:
    offered: list[str] = []
    accept = True

    def take(item: str) -> bool:
        offered.append(item)
        return accept

    queue = direct.DirectQueue(take)
    queue.put_nowait("a")  # taken
    accept = False
    queue.put_nowait("b")  # refused: queued
    accept = True
    queue.put_nowait("c")  # "b" waits before it: queued without an offer
    assert offered == ["a", "b"]
    assert [queue.get_nowait(), queue.get_nowait()] == ["b", "c"]


async def test_a_layer_without_channels_redis_queues_is_left_alone() -> None:
    class OtherLayer:
        pass

    layer = channel_layers.make_backend("default")
    await layer.new_channel("direct-test.")
    assert not direct.install(OtherLayer(), "x", lambda item: True)
    assert not direct.install(layer, "unknown-channel", lambda item: True)
    await layer.flush()

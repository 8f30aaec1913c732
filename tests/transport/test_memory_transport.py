"""The in-memory transport (broadcast_app.transport.memory): what capture_events uses."""

from __future__ import annotations

from typing import Any

from broadcast_app.events.wire import HIDDEN
from broadcast_app.transport.interface import PublishingTransport
from broadcast_app.transport.memory import MemoryTransport, decode

BODY = '"op":"updated","model":"demo.product","pk":"1","data":{"stock":2},"changed":["stock"]}'


def test_it_is_a_publishing_transport() -> None:
    assert isinstance(MemoryTransport([].append), PublishingTransport)


def test_an_event_arrives_as_its_frame_without_an_id_or_its_hidden_tail() -> None:
    event = decode(BODY + HIDDEN + '{"stock":1}')
    assert event == {
        "type": "change",
        "id": None,
        "op": "updated",
        "model": "demo.product",
        "pk": "1",
        "data": {"stock": 2},
        "changed": ["stock"],
    }


def test_events_arrive_in_order_and_once_per_outbox_record() -> None:
    received: list[dict[str, Any]] = []
    transport = MemoryTransport(received.append)
    paused: list[bool] = []
    batch = [("demo.product", BODY), ("demo.product", BODY.replace('"1"', '"2"'))]
    once = [("outbox:t", "demo.product:1"), ("outbox:t", "demo.product:2")]
    assert transport.publish_batch(batch, once, lambda: paused.append(True)) == (2, 0)
    assert [e["pk"] for e in received] == ["1", "2"] and paused == [True]
    # Published again (a relay pass rolled back after publishing): skipped.
    assert transport.publish_batch(batch, once) == (2, 2)
    assert len(received) == 2
    # Without ``once`` (best_effort): every event.
    assert transport.publish_batch(batch) == (2, 0)
    assert len(received) == 4
    # Records forgotten (their rows were deleted): published again.
    transport.forget([("demo.product", "outbox:t")])
    assert transport.publish_batch(batch, once) == (2, 0)
    assert len(received) == 6


def test_resets_are_recorded_and_nothing_is_lost() -> None:
    transport = MemoryTransport([].append)
    assert transport.send_resets({"demo.product"}, "test") == {"demo.product"}
    assert transport.resets == [({"demo.product"}, "test")]
    assert transport.lost == set()
    transport.reset()
    transport.close()

"""``outbox`` delivery: rows written in the saving transaction, relayed in order, once.

Real redis-server, real database (SQLite, or PostgreSQL with DATABASE_URL), no mocks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from channels.db import database_sync_to_async
from django.db import transaction
from django.test import override_settings

from broadcast_app import publish_changes
from broadcast_app.capture.outbox import to_payload
from broadcast_app.capture.registry import get_config
from broadcast_app.events.change import Change
from broadcast_app.events.wire import origin_id, split_hidden
from broadcast_app.models import OutboxEvent
from broadcast_app.publish import publisher
from broadcast_app.publish.relay import Relay
from broadcast_app.testing import capture_events
from broadcast_app.transport.routes import route
from tests.conftest import Received
from tests.logged import logged_events
from tests.publish.test_pipeline import make
from tests.testapp.models import Product

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 10.0


@pytest.fixture
def outbox_mode() -> Iterator[None]:
    # These tests run the relay themselves: no relay thread beside the listener.
    with override_settings(BROADCAST_DELIVERY="outbox", BROADCAST_OUTBOX_RELAY=False):
        yield


@pytest.fixture
def relay() -> Iterator[Relay]:
    relay = Relay()
    yield relay
    relay.publisher.close()


def skus_in_log(client: redis.Redis, label: str = "testapp.product") -> list[str | None]:
    """The ``sku`` of every event in ``label``'s log (None: an event without one)."""
    bodies = [body for _, _, body in logged_events(client, route(label))]
    events = [json.loads("{" + split_hidden(body)[0]) for body in bodies]
    return [event.get("data", {}).get("sku") for event in events]


def stored_skus() -> list[str]:
    return [json.loads(row.payload)["data"]["sku"] for row in OutboxEvent.objects.all()]


def test_rows_are_written_in_the_saving_transaction(
    outbox_mode: None, redis_client: redis.Redis
) -> None:
    with transaction.atomic():
        make("TX-1")
        assert stored_skus() == ["TX-1"]  # visible inside the transaction, not yet outside
    with pytest.raises(RuntimeError), transaction.atomic():
        make("TX-rolled-back")
        raise RuntimeError
    with transaction.atomic():
        make("TX-2")
        with pytest.raises(RuntimeError), transaction.atomic():
            make("TX-savepoint-rolled-back")
            raise RuntimeError
        make("TX-3")
    make("TX-autocommit")
    assert stored_skus() == ["TX-1", "TX-2", "TX-3", "TX-autocommit"]
    tokens = list(OutboxEvent.objects.values_list("token", flat=True))
    assert tokens[1] == tokens[2]  # one transaction: coalesced together by the relay
    assert len({tokens[0], tokens[1], tokens[3]}) == 3
    # Nothing reaches Redis until a relay publishes it.
    assert publisher.flush(TIMEOUT)
    assert not {"TX-1", "TX-2"} & set(skus_in_log(redis_client))


@pytest.mark.asyncio
async def test_relay_publishes_in_order_once_and_deletes(
    outbox_mode: None, relay: Relay, running_listener: Any, received: Received
) -> None:
    def changes() -> None:
        product = make("ORDER-1", stock=1)
        for stock in (2, 3):
            product.stock = stock
            product.save()
        make("ORDER-2")
        with transaction.atomic():  # created then updated: one "created", final state
            other = make("ORDER-3", stock=1)
            other.stock = 9
            other.save()
        with transaction.atomic():  # created then deleted: nothing at all
            make("ORDER-gone").delete()
        product.save()  # nothing changed: nothing published

    await database_sync_to_async(changes)()
    outcome = await database_sync_to_async(relay.drain)()
    assert (outcome.rows, outcome.published, outcome.duplicates) == (9, 5, 0)
    assert not await database_sync_to_async(OutboxEvent.objects.exists)()
    got = await received.wait_for(5)
    assert [(e["op"], e["data"]["sku"], e["data"]["stock"]) for e in got] == [
        ("created", "ORDER-1", 1),
        ("updated", "ORDER-1", 2),
        ("updated", "ORDER-1", 3),
        ("created", "ORDER-2", 1),
        ("created", "ORDER-3", 9),
    ]
    assert got[1]["changed"] == ["stock"]
    # Nothing else went out: the next event is the next change.
    await database_sync_to_async(make)("ORDER-last")
    await database_sync_to_async(relay.drain)()
    assert (await received.wait_for(6))[5]["data"]["sku"] == "ORDER-last"


@pytest.mark.asyncio
async def test_rows_relayed_twice_are_published_once(
    outbox_mode: None,
    relay: Relay,
    running_listener: Any,
    received: Received,
    redis_client: redis.Redis,
) -> None:
    """A relay that dies after publishing but before its delete commits."""

    def crashed_pass() -> int:
        for i in range(3):
            make(f"TWICE-{i}")
        with transaction.atomic():
            outcome = relay.relay_once()
            # As if the process died here: the pass's deletes never commit.
            transaction.set_rollback(True)
        return outcome.published

    assert await database_sync_to_async(crashed_pass)() == 3
    assert await database_sync_to_async(OutboxEvent.objects.count)() == 3
    again = await database_sync_to_async(relay.drain)()
    assert (again.rows, again.published, again.duplicates) == (3, 0, 3)
    await database_sync_to_async(make)("TWICE-after")
    await database_sync_to_async(relay.drain)()
    got = await received.wait_for(4)
    assert [e["data"]["sku"] for e in got] == ["TWICE-0", "TWICE-1", "TWICE-2", "TWICE-after"]
    assert skus_in_log(redis_client)[-4:] == [e["data"]["sku"] for e in got]
    # Once the rows are deleted, Redis forgets which events went out.
    assert redis_client.keys("broadcast:outbox:*") == []


@pytest.mark.asyncio
async def test_in_process_relay_publishes_right_after_commit(received: Received) -> None:
    from broadcast_app.instance.runtime import runtime
    from broadcast_app.publish.relay import in_process

    # A long interval: only the commit's wake-up can make the event arrive in time.
    with override_settings(
        BROADCAST_DELIVERY="outbox", BROADCAST_OUTBOX_RELAY=True, BROADCAST_OUTBOX_INTERVAL=60
    ):
        await runtime.start()
        try:
            assert in_process.running
            await database_sync_to_async(make)("INPROC-1")
            assert (await received.wait_for(1))[0]["data"]["sku"] == "INPROC-1"
        finally:
            await runtime.stop()
    assert not in_process.running


@pytest.mark.asyncio
async def test_bulk_operations_are_read_back_at_relay_time(
    outbox_mode: None, relay: Relay, running_listener: Any, received: Received
) -> None:
    def changes() -> list[int]:
        with override_settings(BROADCAST_INSTANCE_ID="the-saver"):
            a, b = make("BULK-A", stock=1), make("BULK-B", stock=1)
            with transaction.atomic():  # created, then bulk-updated: one "created"
                c = make("BULK-C", stock=1)
                Product.objects.filter(pk=c.pk).update(stock=5)
            Product.objects.filter(pk__in=[a.pk, b.pk]).update(stock=2)
            # No real change: nothing (an update by pk would publish: it reads no old value).
            Product.objects.filter(sku="BULK-A").update(stock=2)
            publish_changes(Product, [b.pk], changed=["name"])
        return [a.pk, b.pk, c.pk]

    await database_sync_to_async(changes)()
    await database_sync_to_async(relay.drain)()
    got = await received.wait_for(6)
    assert [(e["op"], e["data"]["sku"], e["data"]["stock"], e["changed"]) for e in got] == [
        ("created", "BULK-A", 1, []),
        ("created", "BULK-B", 1, []),
        ("created", "BULK-C", 5, []),
        ("updated", "BULK-A", 2, ["stock"]),
        ("updated", "BULK-B", 2, ["stock"]),
        ("updated", "BULK-B", 2, ["name"]),
    ]
    assert {e["origin"] for e in got} == {origin_id("the-saver")}  # the saver, opaque


@pytest.mark.asyncio
async def test_a_queryset_delete_keeps_each_rows_data_until_relayed(
    outbox_mode: None, relay: Relay, running_listener: Any, received: Received
) -> None:
    def changes() -> list[int]:
        with override_settings(BROADCAST_ENABLED=False):
            pks = [make(f"GONE-{i}", stock=i).pk for i in range(3)]
        Product.objects.filter(sku__startswith="GONE-").delete()
        assert OutboxEvent.objects.count() == 3
        return pks

    pks = await database_sync_to_async(changes)()
    await database_sync_to_async(relay.drain)()
    got = await received.wait_for(3)
    assert sorted((e["op"], e["pk"], e["data"]["sku"], e["data"]["stock"]) for e in got) == [
        ("deleted", str(pk), f"GONE-{i}", i) for i, pk in enumerate(pks)
    ]
    assert all("cost_price" not in e["data"] for e in got)


def test_bulk_create_stores_each_rows_data_from_the_objects(outbox_mode: None) -> None:
    """The database returned the pks: each row goes to the outbox with its data, as
    created in the transaction (a later update in it is folded in by the relay)."""
    with capture_events() as events:
        with transaction.atomic():
            objs = [Product(name=f"BC{i}", sku=f"BC-{i}", price="1", stock=i) for i in range(2)]
            first, second = Product.objects.bulk_create(objs)
            assert stored_skus() == ["BC-0", "BC-1"]
            Product.objects.filter(pk=second.pk).update(stock=9)
    assert [(e["op"], e["pk"], e["data"]["stock"]) for e in events] == [
        ("created", str(first.pk), 0),
        ("created", str(second.pk), 9),
    ]


def test_transactions_go_out_in_the_order_they_changed_each_object(
    outbox_mode: None, redis_client: redis.Redis
) -> None:
    """Rows as two concurrent transactions leave them on PostgreSQL: B writes Y first,
    then waits for A's lock on X; A writes X and commits; B writes X. B's first row is
    the oldest, yet A's change of X must go out first. A batch of one row must still
    take A in (its row lies below B's last)."""
    config = get_config(Product)

    def row(token: str, sku: str, stock: int) -> OutboxEvent:
        data = {"sku": sku, "stock": stock}
        change = Change(config, sku, "updated", data, {"stock": stock}, before={"stock": 0})
        return OutboxEvent(token=token, label=config.label, payload=to_payload(change))

    for saved in (row("b" * 32, "ORD-Y", 1), row("a" * 32, "ORD-X", 1), row("b" * 32, "ORD-X", 2)):
        saved.save()
    relay = Relay(batch=1)
    try:
        outcome = relay.drain()
    finally:
        relay.publisher.close()
    assert (outcome.rows, outcome.published) == (3, 3)
    bodies = [body for _, _, body in logged_events(redis_client, route("testapp.product"))]
    x_stocks = [
        data["stock"]
        for data in (json.loads("{" + split_hidden(body)[0])["data"] for body in bodies[-3:])
        if data.get("sku") == "ORD-X"
    ]
    assert x_stocks == [1, 2]


def test_capture_events_sees_outbox_events_at_commit(outbox_mode: None) -> None:
    with capture_events() as events:
        with transaction.atomic():
            product = make("CAPTURE-1", stock=1)
            product.stock = 2
            product.save()
            events.assert_none()  # not committed yet
        created = events.assert_one(op="created", pk=product.pk)
        assert created["data"]["stock"] == 2
        pk = product.pk
        product.delete()  # autocommit
        events.assert_one(op="deleted", pk=pk)
    assert len(events) == 2
    assert not OutboxEvent.objects.exists()


@pytest.mark.asyncio
async def test_events_spilled_at_exit_are_read_back_and_lost_ones_become_a_reset(
    relay: Relay, running_listener: Any, received: Received
) -> None:
    """What a best_effort process could not publish before it exited (spill_events): an
    update goes out with the row as it is at relay time, never the older state it was
    saved with; a delete keeps its data; a model whose events were dropped gets a reset."""
    from broadcast_app.capture.outbox import spill_events
    from broadcast_app.stats import stats

    def spill() -> int:
        kept, gone = make("SPILL-KEPT", stock=1), make("SPILL-GONE", stock=1)
        publisher.flush(TIMEOUT)
        with override_settings(BROADCAST_ENABLED=False):
            # Saved by the exiting process with stock 2, then by another one with 9
            # (whose event is not in this test); and a row deleted by the exiting one.
            Product.objects.filter(pk=kept.pk).update(stock=9)
            Product.objects.filter(pk=gone.pk).delete()
        common = {"model": "testapp.product", "ts": "2026-12-01T10:00:00.000000Z", "origin": "x"}
        updated = {**common, "op": "updated", "pk": str(kept.pk), "changed": ["stock"]}
        deleted = {**common, "op": "deleted", "pk": str(gone.pk), "changed": []}
        bodies = [
            {**updated, "data": {"id": kept.pk, "sku": "SPILL-KEPT", "stock": 2}},
            {**deleted, "data": {"id": gone.pk, "sku": "SPILL-GONE", "stock": 1}},
        ]
        events = [("testapp.product", json.dumps(body)[1:]) for body in bodies]
        return spill_events(events, {"testapp.article"})

    resets = stats.get("instance_resets")
    written = await database_sync_to_async(spill)()
    assert written == 3
    await received.wait_for(2)  # the two creations
    outcome = await database_sync_to_async(relay.drain)()
    assert (outcome.rows, outcome.failed) == (3, False)
    late = (await received.wait_for(4))[2:]
    assert [(e["op"], e["data"]["sku"], e["data"]["stock"]) for e in late] == [
        ("updated", "SPILL-KEPT", 9),
        ("deleted", "SPILL-GONE", 1),
    ]
    assert late[0]["changed"] == ["stock"] and late[0]["ts"] == "2026-12-01T10:00:00.000000Z"
    assert stats.get("instance_resets") == resets + 1  # testapp.article, on the listener
    assert not await database_sync_to_async(OutboxEvent.objects.exists)()

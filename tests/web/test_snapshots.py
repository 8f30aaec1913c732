"""Snapshots on subscribe (``"snapshot": true``), with real Redis, and writers racing."""

from __future__ import annotations

import asyncio
import threading
import time
from decimal import Decimal
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import OperationalError, close_old_connections, connection
from django.test import override_settings

from broadcast_app.capture.registry import get_config
from broadcast_app.events.change import field_values, to_json_data
from broadcast_app.instance.continuity import not_after
from broadcast_app.publish import publisher
from tests.testapp.models import Product
from tests.web.test_consumers import TIMEOUT, ask, connect, make, make_quietly, viewer, viewer_ws
from tests.web.test_filtered_subscriptions import frame

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

__all__ = ["viewer_ws"]  # (a fixture)


def data_of(product: Product) -> dict[str, Any]:
    return to_json_data(field_values(get_config(Product), product))


async def test_a_snapshot_follows_subscribed_with_the_rows_as_events_carry_them(
    viewer_ws: WebsocketCommunicator,
) -> None:
    products = [
        await database_sync_to_async(make_quietly)(sku, stock=stock, cost_price=Decimal("9.99"))
        for sku, stock in (("S-1", 3), ("S-2", 8), ("S-3", 1))
    ]
    message = {"type": "subscribe", "model": "testapp.product", "snapshot": True, "ref": 1}
    reply = await ask(viewer_ws, message)
    assert (reply["type"], reply["snapshot"]) == ("subscribed", True)
    snapshot = await frame(viewer_ws)
    assert snapshot == {
        "type": "snapshot",
        "model": "testapp.product",
        "pk": None,
        "rows": [{"pk": str(p.pk), "data": data_of(p)} for p in products],
        "last_id": reply["last_id"],
        "complete": True,
    }
    assert "cost_price" not in snapshot["rows"][0]["data"]
    created = await database_sync_to_async(make)("S-4")
    assert (await frame(viewer_ws))["pk"] == str(created.pk)  # then live events


async def test_a_filtered_snapshot_in_order_and_limited(viewer_ws: WebsocketCommunicator) -> None:
    for sku, stock, price in (("T-1", 3, "5.00"), ("T-2", 8, "1.00"), ("T-3", 1, "7.50")):
        await database_sync_to_async(make_quietly)(sku, stock=stock, price=Decimal(price))
    await database_sync_to_async(make_quietly)("other", stock=2, price=Decimal("6.00"))
    where = {"stock__lt": 5, "name__startswith": "T-"}
    message = {"type": "subscribe", "model": "testapp.product", "where": where, "snapshot": True}
    await ask(viewer_ws, {**message, "order": "-price"})
    snapshot = await frame(viewer_ws)
    assert [row["data"]["sku"] for row in snapshot["rows"]] == ["T-3", "T-1"]
    assert (snapshot["where"], snapshot["pk"], snapshot["complete"]) == (where, None, True)

    await viewer_ws.send_json_to(
        {"type": "unsubscribe", "model": "testapp.product", "where": where}
    )
    await ask(viewer_ws, {**message, "order": ["price"], "limit": 1})
    snapshot = await frame(viewer_ws)
    assert [row["data"]["sku"] for row in snapshot["rows"]] == ["T-1"]
    assert snapshot["complete"] is False


async def test_one_object_and_the_object_check(running_listener: Any, reregister: Any) -> None:
    reregister(exclude=["cost_price"], object_check=lambda user, data: data["stock"] > 0)
    shown = await database_sync_to_async(make_quietly)("O-1", stock=2)
    await database_sync_to_async(make_quietly)("O-2", stock=0)
    ws = await connect(await database_sync_to_async(viewer)())
    try:
        message = {"type": "subscribe", "model": "testapp.product", "snapshot": True}
        await ask(ws, {**message, "pk": shown.pk})
        assert [row["pk"] for row in (await frame(ws))["rows"]] == [str(shown.pk)]
        await ask(ws, message)
        assert [row["pk"] for row in (await frame(ws))["rows"]] == [str(shown.pk)]
    finally:
        await ws.disconnect()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ({"snapshot": "yes"}, "bad_request"),
        ({"snapshot": True, "limit": 0}, "bad_request"),
        ({"snapshot": True, "limit": 1001}, "bad_request"),
        ({"snapshot": True, "limit": True}, "bad_request"),
        ({"snapshot": True, "order": "cost_price"}, "forbidden"),
        ({"snapshot": True, "order": "-nope"}, "bad_request"),
        ({"snapshot": True, "order": [1]}, "bad_request"),
        ({"snapshot": True, "order": ["name"] * 5}, "bad_request"),
    ],
)
async def test_refused_snapshots(
    viewer_ws: WebsocketCommunicator, extra: dict[str, Any], code: str
) -> None:
    reply = await ask(viewer_ws, {"type": "subscribe", "model": "testapp.product", **extra})
    assert (reply["type"], reply["code"]) == ("error", code)


async def test_with_since_a_complete_replay_answers_instead(
    viewer_ws: WebsocketCommunicator,
) -> None:
    since = (await ask(viewer_ws, {"type": "subscribe", "model": "testapp.product"}))["last_id"]
    await viewer_ws.send_json_to({"type": "unsubscribe", "model": "testapp.product"})
    created = await database_sync_to_async(make)("R-1")
    await database_sync_to_async(publisher.flush)(TIMEOUT)
    message = {"type": "subscribe", "model": "testapp.product", "snapshot": True}
    reply = await ask(viewer_ws, {**message, "since": since})
    assert reply["snapshot"] is False
    assert (await frame(viewer_ws))["pk"] == str(created.pk)  # replayed
    await viewer_ws.send_json_to({"type": "unsubscribe", "model": "testapp.product"})
    # A resume the log cannot answer: the snapshot does (no reset).
    reply = await ask(viewer_ws, {**message, "since": "1-0:gone"})
    assert reply["snapshot"] is True
    snapshot = await frame(viewer_ws)
    assert (snapshot["type"], [row["pk"] for row in snapshot["rows"]]) == (
        "snapshot",
        [str(created.pk)],
    )


@override_settings(BROADCAST_RESUME_RATE=1, BROADCAST_RESUME_WINDOW=1000)
async def test_snapshots_are_budgeted_like_resumes(viewer_ws: WebsocketCommunicator) -> None:
    message = {"type": "subscribe", "model": "testapp.product", "snapshot": True}
    await ask(viewer_ws, message)
    assert (await frame(viewer_ws))["type"] == "snapshot"
    await viewer_ws.send_json_to({"type": "unsubscribe", "model": "testapp.product"})
    await ask(viewer_ws, message)
    assert (await frame(viewer_ws))["reason"] == "rate_limited"


# -- writers racing the snapshot ---------------------------------------------------------

WHERE = {"stock__lt": 50}


class Writers:
    """Threads that create, update and delete products until stopped."""

    def __init__(self, count: int) -> None:
        self.stop = threading.Event()
        self.saves = 0
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(count)]

    def _run(self, n: int) -> None:
        try:
            self._write(n)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)
        finally:
            connection.close()

    def _write(self, n: int) -> None:
        step = 0
        mine: list[Product] = []
        while not self.stop.is_set():
            step += 1
            product = None
            try:
                if len(mine) < 5:
                    mine.append(make(f"W{n}-{step}", stock=step % 100))
                elif step % 7 == 0:
                    mine.pop(0).delete()
                else:
                    product = mine[step % len(mine)]
                    # Always another stock: a save that changes only updated_at (not
                    # tracked) publishes nothing, and the test's truth would differ.
                    product.stock = (product.stock + 1 + step % 50) % 100
                    product.save()
            except OperationalError:  # (SQLite: "database table is locked")
                close_old_connections()
                if product is not None:
                    # Its stock was set but not saved: an instance out of step with its
                    # row, which the test's writers (unlike an application) keep using.
                    mine.remove(product)
                continue
            self.saves += 1

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


async def saves_reach(writers: Writers, count: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while writers.saves < count:
        assert time.monotonic() < deadline, "the writers stalled"
        await asyncio.sleep(0.01)


async def subscribe_with_snapshot(
    ws: WebsocketCommunicator, message: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Subscribe until a snapshot comes, as a client does after a ``reset``: SQLite's
    shared-cache test database refuses a read while a writer holds the table
    (``unavailable``), which no server database does."""
    for _attempt in range(20):
        reply = await ask(ws, message)
        while reply["type"] != "subscribed":
            reply = await frame(ws)  # (live events of the previous attempt)
        answer = await frame(ws)
        if answer["type"] == "snapshot":
            return reply, answer
        assert (answer["type"], answer["reason"]) == ("reset", "unavailable"), answer
        await ws.send_json_to({**message, "type": "unsubscribe"})
    raise AssertionError("no snapshot in 20 attempts")


@override_settings(BROADCAST_RESUME_RATE=100)
@pytest.mark.parametrize("where", [None, WHERE])
@pytest.mark.slow
async def test_a_snapshot_under_concurrent_writers_has_no_gap_and_no_duplicate(
    viewer_ws: WebsocketCommunicator, where: dict[str, Any] | None
) -> None:
    message: dict[str, Any] = {"type": "subscribe", "model": "testapp.product", "snapshot": True}
    if where is not None:
        message["where"] = where
    with Writers(2) as writers:
        await saves_reach(writers, 30)
        reply, snapshot = await subscribe_with_snapshot(viewer_ws, message)
        started = writers.saves
        await saves_reach(writers, started + 30)  # more writes after the snapshot's query
    assert writers.errors == []
    marker = await database_sync_to_async(make)("MARKER", stock=1)
    assert snapshot["last_id"] == reply["last_id"]
    state = {row["pk"]: row["data"] for row in snapshot["rows"]}
    ids: list[str] = []
    while True:
        event = await frame(viewer_ws)
        assert event["type"] == "change", event
        ids.append(event["id"])
        if event["op"] == "deleted" or event.get("match") == "leave":
            state.pop(event["pk"], None)
        else:
            state[event["pk"]] = event["data"]
        if event["pk"] == str(marker.pk):
            break
    # None up to last_id, none twice, and (the state proves it) none missed after it.
    assert ids, "the writers' events after the snapshot did not arrive"
    assert not [i for i in ids if snapshot["last_id"] and not_after(i, snapshot["last_id"])]
    assert len(ids) == len(set(ids))

    def truth() -> dict[str, Any]:
        rows = Product.objects.filter(**(where or {}))
        return {str(p.pk): data_of(p) for p in rows}

    assert state == await database_sync_to_async(truth)()

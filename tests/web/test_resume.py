"""Resume with ``since``: replay from the per-model log, all or nothing, then live."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import override_settings

from broadcast_app.events.wire import id_key
from broadcast_app.instance.hub import hub
from broadcast_app.publish import publisher
from broadcast_app.routing import websocket_urlpatterns
from tests.testapp.models import Product

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

TIMEOUT = 5


@pytest.fixture
def admin_user(db: None) -> User:
    return User.objects.create_superuser("root", password="pw")


async def connect(user: User) -> WebsocketCommunicator:
    ws = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/broadcast/")
    ws.scope["user"] = user
    assert (await ws.connect(TIMEOUT))[0]
    return ws


async def subscribe(ws: WebsocketCommunicator, **frame: Any) -> dict[str, Any]:
    await ws.send_json_to({"type": "subscribe", "model": "testapp.product", **frame})
    reply: dict[str, Any] = await ws.receive_json_from(TIMEOUT)
    assert reply["type"] == "subscribed", reply
    return reply


def changes(count: int, start: int = 0, sku: str = "R") -> list[int]:
    product, _ = Product.objects.get_or_create(sku=sku, defaults={"name": sku, "price": 1})
    for stock in range(start, start + count):
        product.stock = stock + 1
        product.save()
    publisher.flush(TIMEOUT)
    return [product.pk]


async def resume_point(user: User) -> str:
    """One change, seen by a client that then goes away: the id it would resume from."""
    await database_sync_to_async(changes)(1)
    ws = await connect(user)
    since: str = (await subscribe(ws))["last_id"]
    await ws.disconnect()
    return since


async def frames(ws: WebsocketCommunicator, count: int) -> list[dict[str, Any]]:
    return [await ws.receive_json_from(TIMEOUT) for _ in range(count)]


async def test_client_back_after_50_changes_gets_exactly_those_in_order(
    running_listener: Any, admin_user: User
) -> None:
    ws = await connect(admin_user)
    await subscribe(ws)
    await database_sync_to_async(changes)(3)
    seen = await frames(ws, 4)  # created + 2 updates... and one more update
    last = seen[-1]["id"]
    await ws.disconnect()

    await database_sync_to_async(changes)(50, start=3)
    hub.last_ids.clear()  # this instance's memory does not matter: the log does
    ws = await connect(admin_user)
    reply = await subscribe(ws, since=last, ref="again")
    replayed = await frames(ws, 50)
    assert [f["type"] for f in replayed] == ["change"] * 50
    assert [f["data"]["stock"] for f in replayed] == list(range(4, 54))
    ids = [f["id"] for f in replayed]
    assert ids == sorted(ids, key=id_key)
    assert reply["last_id"] == ids[-1]
    # Then live, with nothing else queued in between.
    await database_sync_to_async(changes)(1, start=53)
    live = await ws.receive_json_from(TIMEOUT)
    assert (live["type"], live["data"]["stock"]) == ("change", 54)
    assert id_key(live["id"]) > id_key(ids[-1])
    await ws.disconnect()


async def test_live_events_during_the_replay_arrive_once_and_in_order(
    running_listener: Any, admin_user: User
) -> None:
    since = await resume_point(admin_user)
    await database_sync_to_async(changes)(30, start=1)
    ws = await connect(admin_user)
    await ws.send_json_to({"type": "subscribe", "model": "testapp.product", "since": since})
    writer = asyncio.ensure_future(database_sync_to_async(changes)(30, start=31))
    received = await frames(ws, 61)
    await writer
    assert received[0]["type"] == "subscribed"
    events = received[1:]
    assert [e["data"]["stock"] for e in events] == list(range(2, 62))
    assert len({e["id"] for e in events}) == 60
    await ws.disconnect()


@pytest.mark.parametrize(
    ("since", "reason"),
    [("garbage", "malformed"), (12, "malformed"), ("1-0:feedbeef", "epoch"), ("", "malformed")],
)
async def test_unusable_since_gets_reset_then_live(
    running_listener: Any, admin_user: User, since: Any, reason: str
) -> None:
    await database_sync_to_async(changes)(1)
    ws = await connect(admin_user)
    await subscribe(ws, since=since)
    reset = await ws.receive_json_from(TIMEOUT)
    assert reset == {"type": "reset", "model": "testapp.product", "pk": None, "reason": reason}
    await database_sync_to_async(changes)(1, start=5)
    assert (await ws.receive_json_from(TIMEOUT))["data"]["stock"] == 6
    await ws.disconnect()


async def test_since_older_than_the_log_gets_reset_never_a_partial_replay(
    running_listener: Any, admin_user: User
) -> None:
    since = await resume_point(admin_user)
    with override_settings(BROADCAST_LOG_MAXLEN=10):
        await database_sync_to_async(changes)(400, start=1)
    ws = await connect(admin_user)
    await subscribe(ws, since=since)
    reset = await ws.receive_json_from(TIMEOUT)
    assert (reset["type"], reset["reason"]) == ("reset", "too_old")
    await ws.send_json_to({"type": "ping"})
    assert await ws.receive_json_from(TIMEOUT) == {"type": "pong"}
    await ws.disconnect()


async def test_object_subscription_replays_only_that_object(
    running_listener: Any, admin_user: User
) -> None:
    [pk] = await database_sync_to_async(changes)(1, sku="ONE")
    await database_sync_to_async(changes)(1, sku="TWO")
    ws = await connect(admin_user)
    since = (await subscribe(ws, pk=str(pk)))["last_id"]
    await ws.disconnect()
    await database_sync_to_async(changes)(3, start=10, sku="TWO")
    await database_sync_to_async(changes)(2, start=20, sku="ONE")
    ws = await connect(admin_user)
    await subscribe(ws, pk=str(pk), since=since)
    replayed = await frames(ws, 2)
    assert [(e["pk"], e["data"]["stock"]) for e in replayed] == [(str(pk), 21), (str(pk), 22)]
    await ws.send_json_to({"type": "ping"})
    assert await ws.receive_json_from(TIMEOUT) == {"type": "pong"}
    await ws.disconnect()


async def test_since_equal_to_the_last_id_replays_nothing(
    running_listener: Any, admin_user: User
) -> None:
    await database_sync_to_async(changes)(2)
    ws = await connect(admin_user)
    last = (await subscribe(ws))["last_id"]
    assert last is not None
    await ws.disconnect()
    ws = await connect(admin_user)
    await subscribe(ws, since=last)
    await ws.send_json_to({"type": "ping"})
    assert await ws.receive_json_from(TIMEOUT) == {"type": "pong"}
    await ws.disconnect()

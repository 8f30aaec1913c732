"""Hot rows (max_rate) and echo control (X-Socket-ID, to_others)."""

from __future__ import annotations

import json
import threading
from decimal import Decimal
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
from django.test import Client, override_settings

from broadcast_app.events import socket_ids as echo
from broadcast_app.publish import publisher
from broadcast_app.routing import websocket_urlpatterns
from broadcast_app.testing import CapturedEvents, capture_events
from broadcast_app.transport.memory import MemoryTransport
from tests.testapp.models import Product

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 5


def make(sku: str = "H-1") -> Product:
    return Product.objects.create(name=sku, sku=sku, price=Decimal("1.00"))


def test_hot_row_is_rate_limited_and_its_last_state_arrives(reregister: Any) -> None:
    reregister(exclude=["cost_price"], max_rate=5)
    final = 300
    arrived = threading.Event()
    with capture_events() as events:
        publisher._publisher.inline.append(
            MemoryTransport(lambda e: arrived.set() if e["data"].get("stock") == final else None)
        )
        try:
            product = make()
            for stock in range(1, final + 1):
                product.stock = stock
                product.save()
            # Without any flush: the held last state is published by the thread, in time.
            assert arrived.wait(TIMEOUT)
        finally:
            publisher._publisher.inline.pop()
    updates = events.matching(op="updated")
    assert 1 <= len(updates) < 30, len(updates)
    assert updates[-1]["data"]["stock"] == final
    assert updates[-1]["changed"] == ["stock"]
    assert events[0]["op"] == "created"


def test_other_rows_are_not_held_back_by_a_hot_row(reregister: Any) -> None:
    reregister(exclude=["cost_price"], max_rate=1)
    with override_settings(BROADCAST_ENABLED=False):
        hot, cold = make("HOT"), make("COLD")
    with capture_events() as events:
        for stock in range(5):
            hot.stock = stock + 10
            hot.save()
        cold.stock = 1
        cold.save()
        assert events.matching(pk=cold.pk, op="updated")  # published at once
        publisher.flush(TIMEOUT)  # releases what is held
    assert events.matching(pk=hot.pk, op="updated")[-1]["data"]["stock"] == 14


def test_from_socket_attributes_changes(broadcast_events: CapturedEvents) -> None:
    with echo.from_socket("tab-1", to_others=True):
        make("E-1")
    with echo.from_socket("bad id with spaces"):
        make("E-2")
    first, second = broadcast_events
    assert (first["socket_id"], first["to_others"]) == ("tab-1", True)
    assert "socket_id" not in second


def test_x_socket_id_header_reaches_the_event(broadcast_events: CapturedEvents) -> None:
    User.objects.create_superuser("root", password="pw")
    product = make("E-3")
    client = Client()
    client.login(username="root", password="pw")
    response = client.post(
        f"/admin/testapp/product/{product.pk}/change/",
        {"name": "via admin", "sku": "E-3", "price": "1.00", "stock": "4", "cost_price": "0"},
        headers={"X-Socket-ID": "tab-9", "X-Broadcast-To-Others": "1"},
    )
    assert response.status_code == 302
    event = broadcast_events.assert_one(op="updated")
    # The id as bound to the request's session: what that session's socket compares.
    bound = echo.bind(client.session.session_key, "tab-9")
    assert bound is not None and bound != "tab-9"
    assert (event["socket_id"], event["to_others"], event["changed"]) == (
        bound,
        True,
        ["name", "stock"],
    )


@pytest.mark.asyncio
async def test_to_others_skips_only_the_originating_socket(running_listener: Any) -> None:
    user = await database_sync_to_async(User.objects.create_superuser)("su", password="pw")
    session = SessionStore()
    await database_sync_to_async(session.create)()
    sockets = []
    for socket_id in ("me", "you"):
        ws = WebsocketCommunicator(
            URLRouter(websocket_urlpatterns), f"/ws/broadcast/?socket_id={socket_id}"
        )
        ws.scope["user"], ws.scope["session"] = user, session
        assert (await ws.connect(TIMEOUT))[0]
        await ws.send_json_to({"type": "subscribe", "model": "testapp.product"})
        assert (await ws.receive_json_from(TIMEOUT))["type"] == "subscribed"
        sockets.append(ws)
    me, you = sockets

    def save_from_me() -> None:
        with echo.from_socket(echo.bind(session.session_key, "me"), to_others=True):
            make("MINE")
        make("THEIRS")

    await database_sync_to_async(save_from_me)()
    assert [json.loads(await you.receive_from(TIMEOUT))["data"]["sku"] for _ in range(2)] == [
        "MINE",
        "THEIRS",
    ]
    # "me" gets only the change it did not make.
    assert (await me.receive_json_from(TIMEOUT))["data"]["sku"] == "THEIRS"
    for ws in sockets:
        await ws.disconnect()

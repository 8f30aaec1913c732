"""Echo control cannot be aimed at others: socket ids are bound to their session.

Real sessions (logged in through the test client), real requests through the
project's middleware, websockets through channels' AuthMiddlewareStack with the
session cookie, and the instance listener on the test Redis.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client, RequestFactory
from django.test.utils import override_settings

from broadcast_app.events import socket_ids as echo
from broadcast_app.routing import websocket_urlpatterns
from tests.testapp.models import Product

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

TIMEOUT = 5
PRODUCT = "testapp.product"


def logged_in(username: str) -> Client:
    User.objects.create_superuser(username, password="pw")
    client = Client()
    assert client.login(username=username, password="pw")
    return client


async def open_socket(client: Client | None, socket_id: str) -> WebsocketCommunicator:
    """A websocket sending ``client``'s session cookie (none for None), subscribed."""
    headers = []
    if client is not None:
        headers.append((b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()))
    ws = WebsocketCommunicator(
        AuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
        f"/ws/broadcast/?socket_id={socket_id}",
        headers=headers,
    )
    assert (await ws.connect(TIMEOUT))[0]
    await ws.send_json_to({"type": "subscribe", "model": PRODUCT})
    reply = await ws.receive_json_from(TIMEOUT)
    assert reply["type"] == "subscribed", reply
    return ws


def edit(client: Client, pk: int, stock: int, **headers: str) -> None:
    """Change a product through the admin, as a page would (a real request)."""
    response = client.post(
        f"/admin/testapp/product/{pk}/change/",
        {"name": "N", "sku": "ECHO", "price": "1.00", "stock": str(stock), "cost_price": "0"},
        headers=headers,
    )
    assert response.status_code == 302, response.content[:500]


async def next_change(ws: WebsocketCommunicator) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await ws.receive_from(TIMEOUT))
    assert frame["type"] == "change", frame
    return frame


async def nothing_queued(ws: WebsocketCommunicator) -> None:
    """Frames go out in order: a pong next means no event was queued before it."""
    await ws.send_json_to({"type": "ping"})
    assert await ws.receive_json_from(TIMEOUT) == {"type": "pong"}


@pytest_asyncio.fixture
async def product(running_listener: Any) -> AsyncIterator[Product]:
    with override_settings(BROADCAST_ENABLED=False):  # (no event to race with the test's)
        created = await database_sync_to_async(Product.objects.create)(
            name="N", sku="ECHO", price=Decimal("1.00"), stock=0
        )
    yield created


async def test_another_session_cannot_suppress_my_events(product: Product) -> None:
    alice = await database_sync_to_async(logged_in)("alice")
    mallory = await database_sync_to_async(logged_in)("mallory")
    alice_ws = await open_socket(alice, "tab-a")
    mallory_ws = await open_socket(mallory, "tab-m")
    try:
        # Alice's own change names her socket: every subscriber sees the id it carries.
        await sync_to_async(edit)(alice, product.pk, 1, **{"X-Socket-ID": "tab-a"})
        seen = await next_change(mallory_ws)
        assert (await next_change(alice_ws))["id"] == seen["id"]
        alice_bound = seen["socket_id"]
        assert alice_bound == echo.bind(alice.session.session_key, "tab-a")
        # Mallory names Alice's socket, as the page chose it and as events show it.
        for stock, named in ((2, "tab-a"), (3, alice_bound)):
            headers = {"X-Socket-ID": named, "X-Broadcast-To-Others": "1"}
            await sync_to_async(edit)(mallory, product.pk, stock, **headers)
            event = await next_change(alice_ws)
            assert event["data"]["stock"] == stock  # Alice still gets it
            assert event["socket_id"] != alice_bound
            assert (await next_change(mallory_ws))["data"]["stock"] == stock
        # A socket opened by Mallory under Alice's bound id is not Alice's socket either.
        decoy = await open_socket(mallory, alice_bound)
        await sync_to_async(edit)(alice, product.pk, 4, **{"X-Socket-ID": "tab-a"})
        assert (await next_change(decoy))["data"]["stock"] == 4
        await decoy.disconnect()
        await next_change(alice_ws), await next_change(mallory_ws)

        # The owner's own echo suppression still works.
        headers = {"X-Socket-ID": "tab-a", "X-Broadcast-To-Others": "1"}
        await sync_to_async(edit)(alice, product.pk, 5, **headers)
        assert (await next_change(mallory_ws))["data"]["stock"] == 5
        await nothing_queued(alice_ws)
        await sync_to_async(edit)(mallory, product.pk, 6)
        assert (await next_change(alice_ws))["data"]["stock"] == 6  # (5 was skipped)
    finally:
        await alice_ws.disconnect()
        await mallory_ws.disconnect()


async def test_without_a_session_the_socket_id_is_ignored(product: Product) -> None:
    anonymous_ws = WebsocketCommunicator(
        AuthMiddlewareStack(URLRouter(websocket_urlpatterns)), "/ws/broadcast/?socket_id=tab-x"
    )
    assert (await anonymous_ws.connect(TIMEOUT))[0]
    await anonymous_ws.disconnect()
    request = RequestFactory().post("/", headers={"X-Socket-ID": "tab-x"})
    assert echo.request_socket_id(request) is None  # no session middleware ran
    assert echo.bind(None, "tab-x") is None and echo.bind("", "tab-x") is None
    assert echo.bind("k" * 32, "bad id") is None
    assert echo.bind("k" * 32, "tab-x") != echo.bind("j" * 32, "tab-x")

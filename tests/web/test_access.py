"""broadcast_app.web.access in one process: ``previous`` under the same checks as ``data``,
and open websockets checked again (the end-to-end figures are in test_revocation.py).

Websockets go through channels' AuthMiddlewareStack with a real session cookie from
the test client, against the instance listener on the test Redis.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio
from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Permission, User
from django.contrib.sessions.backends.db import SessionStore
from django.test import override_settings

from broadcast_app.routing import websocket_urlpatterns
from broadcast_app.testing import CapturedEvents
from broadcast_app.web import access
from broadcast_app.web.access import revalidator
from tests.testapp.models import Product
from tests.web.logins import viewer

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 5
PRODUCT = "testapp.product"


async def open_socket(session_key: str | None, user: Any = None) -> WebsocketCommunicator:
    """A websocket with the session cookie; or, with ``user``, no session at all (as a
    project's own authentication middleware would leave it)."""
    if user is not None:
        ws = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/broadcast/")
        ws.scope["user"] = user
    else:
        ws = WebsocketCommunicator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
            "/ws/broadcast/",
            headers=[(b"cookie", f"sessionid={session_key}".encode())],
        )
    assert (await ws.connect(TIMEOUT))[0]
    return ws


async def subscribe(ws: WebsocketCommunicator, pk: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "subscribe", "model": PRODUCT, "ref": "r"}
    if pk is not None:
        frame["pk"] = pk
    await ws.send_json_to(frame)
    reply: dict[str, Any] = await ws.receive_json_from(TIMEOUT)
    return reply


def make(sku: str, stock: int) -> Product:
    with override_settings(BROADCAST_ENABLED=False):
        return Product.objects.create(sku=sku, name=sku, price=Decimal("1.00"), stock=stock)


def set_stock(pk: int, stock: int) -> None:
    product = Product.objects.get(pk=pk)
    product.stock = stock
    product.save()


@pytest_asyncio.fixture
async def listening(running_listener: Any) -> AsyncIterator[None]:
    yield
    await revalidator.stop()


# -- previous ---------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.usefixtures("listening")
async def test_previous_is_withheld_from_whoever_could_not_see_the_object_before(
    reregister: Any,
) -> None:
    # Visible from 10 in stock: the reader could not see the product at 5.
    reregister(
        exclude=["cost_price"], previous=True, object_check=lambda user, data: data["stock"] >= 10
    )
    product = await database_sync_to_async(make)("PREV", 5)
    _user, key = await database_sync_to_async(viewer)()
    ws = await open_socket(key)
    assert (await subscribe(ws))["type"] == "subscribed"
    try:
        await database_sync_to_async(set_stock)(product.pk, 20)  # becomes visible
        await database_sync_to_async(set_stock)(product.pk, 30)  # was visible
        became = json.loads(await ws.receive_from(TIMEOUT))
        stayed = json.loads(await ws.receive_from(TIMEOUT))
        assert (became["data"]["stock"], became["changed"]) == (20, ["stock"])
        assert "previous" not in became  # 5 was not for this reader
        assert stayed["previous"] == {"stock": 20}
        assert list(became) == [k for k in stayed if k != "previous"]  # same frame otherwise
    finally:
        await ws.disconnect()


def test_previous_never_carries_what_data_does_not(
    reregister: Any, broadcast_events: CapturedEvents
) -> None:
    # A serializer hook that leaves the price out: its old value must stay out too.
    reregister(
        exclude=["cost_price"],
        previous=True,
        serializer=lambda p: {"id": p.pk, "name": p.name, "stock": p.stock, "cost_price": 1},
    )
    product = make("SER", 1)
    product.price, product.stock, product.cost_price = Decimal("9.00"), 2, Decimal("8.00")
    product.save()
    event = broadcast_events.assert_one(op="updated")
    assert "price" not in event["data"] and "cost_price" not in event["data"]
    assert event["previous"] == {"stock": 1}
    assert "8.00" not in json.dumps(event) and "1.00" not in json.dumps(event["previous"])


# -- revalidation -----------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.usefixtures("listening")
@override_settings(BROADCAST_REVALIDATE_INTERVAL=0.2)
async def test_a_flushed_session_closes_the_socket_with_4003() -> None:
    _user, key = await database_sync_to_async(viewer)()
    ws = await open_socket(key)
    assert (await subscribe(ws))["type"] == "subscribed"
    await database_sync_to_async(SessionStore(key).delete)()  # what logout does
    assert await ws.receive_output(TIMEOUT) == {"type": "websocket.close", "code": 4003}
    await ws.disconnect(code=4003)  # (the client answers the close)


@pytest.mark.asyncio
@pytest.mark.usefixtures("listening")
@override_settings(BROADCAST_REVALIDATE_INTERVAL=0.2)
@pytest.mark.slow
async def test_a_lost_permission_drops_the_subscription_and_keeps_the_socket() -> None:
    user, key = await database_sync_to_async(viewer)()
    product = await database_sync_to_async(make)("PERM", 1)
    ws = await open_socket(key)
    assert (await subscribe(ws))["type"] == "subscribed"
    assert (await subscribe(ws, str(product.pk)))["type"] == "subscribed"
    try:
        await database_sync_to_async(user.user_permissions.clear)()
        frames = [await ws.receive_json_from(TIMEOUT) for _ in range(2)]
        detail = f"You may no longer see {PRODUCT}."
        assert frames == [
            {"type": "error", "code": "forbidden", "detail": detail, "model": PRODUCT,
             "pk": pk, "ref": None}
            for pk in (None, str(product.pk))
        ]  # fmt: skip
        await database_sync_to_async(set_stock)(product.pk, 2)
        assert await ws.receive_nothing(0.5)
        await ws.send_json_to({"type": "ping"})
        assert await ws.receive_json_from(TIMEOUT) == {"type": "pong"}
    finally:
        await ws.disconnect()


def give_back(user: User) -> None:
    user.user_permissions.add(Permission.objects.get(codename="view_product"))


@pytest.mark.asyncio
@pytest.mark.usefixtures("listening")
@override_settings(BROADCAST_REVALIDATE_INTERVAL=0.2)
@pytest.mark.slow
async def test_a_permission_given_back_lets_the_socket_subscribe_again() -> None:
    """A lost permission marks the model forbidden on the connection (its queued events
    are dropped); a new subscription, once the permission is back, lifts that."""
    user, key = await database_sync_to_async(viewer)()
    product = await database_sync_to_async(make)("BACK", 1)
    ws = await open_socket(key)
    assert (await subscribe(ws))["type"] == "subscribed"
    try:
        await database_sync_to_async(user.user_permissions.clear)()
        assert (await ws.receive_json_from(TIMEOUT))["code"] == "forbidden"
        await database_sync_to_async(give_back)(user)
        await asyncio.sleep(0.2)  # the next subscription checks the user again first
        assert (await subscribe(ws))["type"] == "subscribed"
        await database_sync_to_async(set_stock)(product.pk, 2)
        event = await ws.receive_json_from(TIMEOUT)
        assert (event["type"], event["pk"], event["data"]["stock"]) == (
            "change",
            str(product.pk),
            2,
        )
    finally:
        await ws.disconnect()


@pytest.mark.asyncio
@pytest.mark.usefixtures("listening")
async def test_a_subscription_after_the_interval_checks_first() -> None:
    _user, key = await database_sync_to_async(viewer)()
    interval = 0.05
    with override_settings(BROADCAST_REVALIDATE_INTERVAL=interval):
        ws = await open_socket(key)
        connected = access.now()  # the handshake's check was at or before this
        await database_sync_to_async(SessionStore(key).delete)()
        # Once the interval has passed since the handshake, a subscription checks the
        # session first. (The interval itself is what is waited for: no event marks it.)
        await asyncio.sleep(max(0.0, connected + interval - access.now()))
        await ws.send_json_to({"type": "subscribe", "model": PRODUCT, "ref": "r"})
        assert await ws.receive_output(TIMEOUT) == {"type": "websocket.close", "code": 4003}
    await ws.disconnect(code=4003)  # (the client answers the close)


@pytest.mark.asyncio
@pytest.mark.usefixtures("listening")
@override_settings(BROADCAST_REVALIDATE_INTERVAL=0.2)
async def test_without_a_session_a_deactivated_user_is_closed() -> None:
    user, _key = await database_sync_to_async(viewer)()
    ws = await open_socket(None, user=await database_sync_to_async(User.objects.get)(pk=user.pk))
    assert (await subscribe(ws))["type"] == "subscribed"
    await database_sync_to_async(User.objects.filter(pk=user.pk).update)(is_active=False)
    assert await ws.receive_output(TIMEOUT) == {"type": "websocket.close", "code": 4003}
    await ws.disconnect(code=4003)  # (the client answers the close)


def test_fresh_user_refuses_a_changed_hash_and_another_user() -> None:
    user, key = viewer()
    assert access.fresh_user(key, user).pk == user.pk
    other, _ = viewer("other")
    assert access.fresh_user(key, other) is None  # the session names someone else
    user.set_password("new-password-1")
    user.save()
    assert access.fresh_user(key, user) is None  # the session's hash no longer matches
    assert access.fresh_user("no-such-session-key", user) is None


@pytest.mark.asyncio
@pytest.mark.usefixtures("listening")
@override_settings(BROADCAST_REVALIDATE_INTERVAL=0.2)
@pytest.mark.slow
async def test_the_periodic_check_ends_with_the_last_subscription_and_on_stop() -> None:
    _user, key = await database_sync_to_async(viewer)()
    ws = await open_socket(key)
    assert not revalidator.running  # a connection without subscriptions costs nothing
    assert (await subscribe(ws))["type"] == "subscribed"
    task = revalidator.task
    assert task is not None and revalidator.running
    await ws.disconnect()
    # Nothing left to check: the task ends by itself at its next pass.
    await asyncio.wait_for(asyncio.shield(task), TIMEOUT)
    assert not revalidator.running and not task.cancelled()

    ws = await open_socket(key)
    assert (await subscribe(ws))["type"] == "subscribed"
    task = revalidator.task
    assert task is not None and not task.done()
    await revalidator.stop()  # (what the listener's stop does at shutdown)
    assert task.cancelled()
    await ws.disconnect()


@pytest.mark.asyncio
@pytest.mark.usefixtures("listening")
async def test_a_check_that_fails_keeps_the_connection_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    users = [await database_sync_to_async(viewer)(f"v{i}") for i in range(3)]
    sockets = [await open_socket(key) for _user, key in users]
    for ws in sockets:
        assert (await subscribe(ws))["type"] == "subscribed"
    try:
        # Sessions that cannot be read (here: an engine that does not import).
        with override_settings(SESSION_ENGINE="broadcast_app.no_such_engine"):
            await access.check([c for c in list(revalidator._watched)])
        warnings = [r for r in caplog.records if "could not check" in r.getMessage()]
        assert len(warnings) == 1 and "3 websocket user(s)" in warnings[0].getMessage()
        for ws in sockets:
            await ws.send_json_to({"type": "ping"})
            assert await ws.receive_json_from(TIMEOUT) == {"type": "pong"}  # still open
    finally:
        for ws in sockets:
            await ws.disconnect()

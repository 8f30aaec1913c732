"""broadcast_app.web.endpoint and session_auth: the websocket endpoint of
``websocket_application()`` checks Origin and path, reads the session cookie as
channels' AuthMiddlewareStack would, and keeps neither the session nor a copy of the
scope (docs/scaling.md). Real sessions from the test client, the listener on the test
Redis; a session store that is down is a Redis cache on a port nothing listens on.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from asgiref.compatibility import is_double_callable
from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
from django.test import Client, override_settings

from broadcast_app.instance.hub import hub
from broadcast_app.routing import websocket_application, websocket_urlpatterns
from broadcast_app.web.access import revalidator
from broadcast_app.web.endpoint import BroadcastEndpoint
from tests.web.logins import viewer

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 5
PRODUCT = "testapp.product"
ORIGIN = (b"origin", b"http://testserver")


def socket(
    cookie: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    path: str = "/ws/broadcast/",
) -> WebsocketCommunicator:
    if headers is None:
        headers = [ORIGIN]
        if cookie is not None:
            headers.append((b"cookie", f"csrftoken=x; sessionid={cookie}".encode()))
    return WebsocketCommunicator(websocket_application(), path, headers=headers)


async def subscribe(ws: WebsocketCommunicator) -> dict[str, Any]:
    await ws.send_json_to({"type": "subscribe", "model": PRODUCT, "ref": "r"})
    reply: dict[str, Any] = await ws.receive_json_from(TIMEOUT)
    return reply


def the_connection() -> Any:
    (consumer,) = hub._subs[PRODUCT][None]
    return consumer


@pytest_asyncio.fixture
async def listening(running_listener: Any) -> AsyncIterator[None]:
    yield
    await revalidator.stop()


@pytest.mark.usefixtures("listening")
@pytest.mark.asyncio
async def test_the_session_cookies_user_subscribes_and_only_user_and_key_are_kept() -> None:
    user, key = await database_sync_to_async(viewer)()
    ws = socket(key)
    assert (await ws.connect(TIMEOUT))[0]
    try:
        assert (await subscribe(ws))["type"] == "subscribed"
        connection = the_connection()
        assert (connection.user.pk, connection.session_key) == (user.pk, key)
        # The server's scope as it was: no session, cookies or user copied into it.
        assert connection.scope is ws.scope
        assert not {"session", "cookies", "user"} & set(connection.scope)
    finally:
        await ws.disconnect()


@pytest.mark.usefixtures("listening")
@pytest.mark.parametrize("cookie", [None, "", "no-such-session-key", "x" * 5000])
@pytest.mark.asyncio
async def test_without_a_valid_session_the_socket_is_anonymous(cookie: str | None) -> None:
    ws = socket(cookie)
    assert (await ws.connect(TIMEOUT))[0]
    try:
        reply = await subscribe(ws)
        assert (reply["type"], reply["code"]) == ("error", "forbidden")
    finally:
        await ws.disconnect()


@pytest.mark.usefixtures("listening")
@pytest.mark.asyncio
async def test_a_session_whose_password_changed_is_anonymous() -> None:
    user, key = await database_sync_to_async(viewer)()

    def change_password() -> None:
        user.set_password("other")
        user.save()

    await database_sync_to_async(change_password)()
    ws = socket(key)
    assert (await ws.connect(TIMEOUT))[0]
    try:
        assert (await subscribe(ws))["code"] == "forbidden"
        # Nor was the session flushed, as django.contrib.auth.get_user would.
        assert await database_sync_to_async(SessionStore(key).exists)(key)
    finally:
        await ws.disconnect()


@pytest.mark.usefixtures("listening")
@override_settings(BROADCAST_REVALIDATE_INTERVAL=0.2)
@pytest.mark.asyncio
async def test_a_flushed_session_closes_an_endpoint_socket_with_4003() -> None:
    _user, key = await database_sync_to_async(viewer)()
    ws = socket(key)
    assert (await ws.connect(TIMEOUT))[0]
    assert (await subscribe(ws))["type"] == "subscribed"
    await database_sync_to_async(SessionStore(key).delete)()  # what logout does
    assert await ws.receive_output(TIMEOUT) == {"type": "websocket.close", "code": 4003}
    await ws.disconnect(code=4003)  # (the client answers the close)


@pytest.mark.parametrize(
    ("headers", "path"),
    [
        ([], "/ws/broadcast/"),  # no Origin
        ([(b"origin", b"http://evil.example")], "/ws/broadcast/"),
        ([(b"origin", b"\xff\xfe")], "/ws/broadcast/"),
        ([(b"origin", b"http://[::1")], "/ws/broadcast/"),  # urlparse raises
        ([ORIGIN], "/ws/other/"),
        ([ORIGIN], "/ws/broadcast/extra/"),
    ],
)
@pytest.mark.asyncio
async def test_a_foreign_origin_or_another_path_is_refused(
    headers: list[tuple[bytes, bytes]], path: str
) -> None:
    ws = socket(headers=headers, path=path)
    connected, _code = await ws.connect(TIMEOUT)
    assert not connected
    await ws.wait(TIMEOUT)  # and the application ended without an exception


@pytest.mark.usefixtures("listening")
@pytest.mark.asyncio
async def test_the_path_is_read_under_the_root_path() -> None:
    ws = socket(path="/app/ws/broadcast/")
    ws.scope["root_path"] = "/app"
    assert (await ws.connect(TIMEOUT))[0]
    await ws.disconnect()
    outside = socket(path="/ws/broadcast/")
    outside.scope["root_path"] = "/app"
    assert not (await outside.connect(TIMEOUT))[0]


@pytest.mark.asyncio
async def test_only_websockets_are_served() -> None:
    with pytest.raises(ValueError, match="serves websockets, not 'http'"):
        await BroadcastEndpoint()({"type": "http"}, None, None)


def test_servers_see_an_asgi3_application() -> None:
    # What uvicorn and asgiref (daphne, channels' testing) tell ASGI 3 by.
    assert asyncio.iscoroutinefunction(BroadcastEndpoint().__call__)
    assert not is_double_callable(BroadcastEndpoint())


@pytest.mark.usefixtures("listening")
@pytest.mark.asyncio
async def test_a_user_an_outer_middleware_put_in_the_scope_is_kept() -> None:
    user, _key = await database_sync_to_async(viewer)()
    ws = socket()
    ws.scope["user"] = await database_sync_to_async(User.objects.get)(pk=user.pk)
    assert (await ws.connect(TIMEOUT))[0]
    try:
        assert (await subscribe(ws))["type"] == "subscribed"
        assert (the_connection().user.pk, the_connection().session_key) == (user.pk, None)
    finally:
        await ws.disconnect()


UNREACHABLE = "tests.testapp.auth_backends.UnreachableBackend"


def logged_in_through_unreachable() -> str:
    user = User.objects.create_user("remote", password="pw")
    client = Client()
    client.force_login(user, backend=UNREACHABLE)
    return client.cookies["sessionid"].value


@pytest.mark.usefixtures("listening")
@pytest.mark.asyncio
@override_settings(
    AUTHENTICATION_BACKENDS=["django.contrib.auth.backends.ModelBackend", UNREACHABLE]
)
async def test_a_backend_that_fails_refuses_the_handshake_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = await database_sync_to_async(logged_in_through_unreachable)()
    with caplog.at_level(logging.WARNING, logger="broadcast_app"):
        ws = socket(key)
        assert not (await ws.connect(TIMEOUT))[0]
        await ws.wait(TIMEOUT)  # and the application ended without an exception
    (record,) = [r for r in caplog.records if "could not authenticate" in r.getMessage()]
    assert "directory unreachable" in record.getMessage()
    assert record.levelno == logging.WARNING and record.exc_info is None


def _owner(trace: tracemalloc.Traceback) -> str | None:
    """The library an allocation belongs to: its innermost frame outside the standard
    library and the test harness (channels' and asgiref's communicators)."""
    for frame in reversed(trace):
        name = frame.filename.replace("\\", "/")
        if name.endswith(("/channels/testing/websocket.py", "/asgiref/testing.py")):
            return None
        for library in ("broadcast_app", "channels", "django", "asgiref"):
            if f"/{library}/" in name:
                return library
    return None


async def kept_per_connection(app: Any, key: str, count: int = 100) -> dict[str, float]:
    """What ``count`` more idle subscribed connections through ``app`` keep, per
    connection and library (tracemalloc; 10 connections opened first, for caches)."""
    sockets = []

    async def open_subscribed(count: int) -> None:
        for _ in range(count):
            ws = WebsocketCommunicator(
                app,
                "/ws/broadcast/",
                headers=[ORIGIN, (b"cookie", f"sessionid={key}".encode())],
            )
            assert (await ws.connect(TIMEOUT))[0]
            assert (await subscribe(ws))["type"] == "subscribed"
            sockets.append(ws)

    try:
        await open_subscribed(10)
        tracemalloc.start(25)
        try:
            gc.collect()
            before = tracemalloc.take_snapshot()
            await open_subscribed(count)
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
    finally:
        for ws in sockets:
            await ws.disconnect()
    kept: dict[str, float] = {}
    for stat in after.compare_to(before, "traceback"):
        owner = _owner(stat.traceback)
        if owner is not None:
            kept[owner] = kept.get(owner, 0) + stat.size_diff / count
    return kept


@pytest.mark.usefixtures("listening")
@pytest.mark.asyncio
@pytest.mark.slow  # memory bounds: 220 connections under tracemalloc
async def test_an_idle_connection_keeps_far_less_than_behind_channels_stack() -> None:
    """What the endpoint saves (docs/scaling.md): no scope copies, session object or
    cookies, no middleware coroutines, no context variables left by worker-thread
    calls. The same connections behind channels' standard stack, in the same process,
    are the measure."""
    _user, key = await database_sync_to_async(viewer)()
    channels_stack = AllowedHostsOriginValidator(
        AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
    )
    theirs = await kept_per_connection(channels_stack, key)
    ours = await kept_per_connection(websocket_application(), key)
    libraries = ("channels", "django", "asgiref")
    # Measured (bytes per connection): ours channels 0, asgiref 37, Django 1,560-1,720
    # (the user, and what the test database's connections keep); theirs 4,370, 121
    # and 2,570-2,710.
    assert ours.get("channels", 0) < 500, (ours, theirs)
    assert ours.get("asgiref", 0) < 100, (ours, theirs)
    assert sum(ours.get(name, 0) for name in libraries) + 4000 < sum(
        theirs.get(name, 0) for name in libraries
    ), (ours, theirs)

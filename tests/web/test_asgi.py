"""The ASGI wrapper: lifespan starts and stops the listener; other scopes pass through."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator

from broadcast_app.asgi import with_broadcast
from broadcast_app.instance.listener import listener
from broadcast_app.instance.runtime import runtime

pytestmark = pytest.mark.asyncio


async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def test_lifespan_starts_and_stops_the_listener() -> None:
    app = with_broadcast(inner)
    lifespan = ApplicationCommunicator(app, {"type": "lifespan", "asgi": {"version": "3.0"}})
    await lifespan.send_input({"type": "lifespan.startup"})
    assert await lifespan.receive_output(5) == {"type": "lifespan.startup.complete"}
    assert listener.running
    assert listener.subscribed.is_set()
    await lifespan.send_input({"type": "lifespan.shutdown"})
    assert await lifespan.receive_output(5) == {"type": "lifespan.shutdown.complete"}
    assert not listener.running
    await lifespan.wait(5)


async def test_http_scope_starts_the_listener_lazily_and_passes_through() -> None:
    app = with_broadcast(inner)
    try:
        http = ApplicationCommunicator(app, {"type": "http", "method": "GET", "path": "/"})
        await http.send_input({"type": "http.request", "body": b""})
        assert (await http.receive_output(5))["status"] == 204
        assert listener.running
    finally:
        await runtime.stop()
    assert not listener.running

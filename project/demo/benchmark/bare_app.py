"""The bare websocket app: what uvicorn alone spends to hold a connection open.

Run it with ``python -m uvicorn project.demo.benchmark.bare_app:app``. Each websocket is
accepted, told it is ready (the fleet's clients count as connected on that frame) and
held until it closes. No Redis, no Django, no fan-out: the scale rows price each of
broadcast_app's connections against one of these.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Message = dict[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]

READY_FRAME = '{"type":"subscribed"}'


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Lifespan, one websocket route for every path, a plain HTTP answer."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
    elif scope["type"] == "websocket":
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": READY_FRAME})
        while (await receive())["type"] != "websocket.disconnect":
            pass  # what clients send is ignored
    else:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"bare websocket app\n"})

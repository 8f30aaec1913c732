"""ASGI glue: run the instance's background work for the lifetime of the server.

``with_broadcast(app)`` answers the ASGI ``lifespan`` protocol itself (uvicorn, and any
server that speaks it): the instance runtime (listener, heartbeat, relay; see
broadcast_app.instance.runtime) starts before the first request and is stopped cleanly on
shutdown. Servers without lifespan (daphne, its ``runserver``) get it started lazily by
the first HTTP request or websocket connection. Either way the
server's websocket frame limit is checked once (see broadcast_app.web.server_limits).
"""

from __future__ import annotations

import logging
from typing import Any

from ..instance.runtime import runtime
from .server_limits import check_server

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Any
Send = Any


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            check_server()
            try:
                await runtime.start()
            except Exception as exc:  # report it the way ASGI servers expect
                logger.exception("broadcast_app listener failed to start")
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await runtime.stop()
            await send({"type": "lifespan.shutdown.complete"})
            return


def with_broadcast(app: Any) -> Any:
    """Wrap an ASGI application so the instance's broadcast work runs alongside it."""

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        check_server()  # once per process; a flag test afterwards
        await runtime.ensure_started()
        await app(scope, receive, send)

    return application

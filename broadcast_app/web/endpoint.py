"""The websocket endpoint as one ASGI application: Origin, path, session, consumer.

channels' standard stack, ``AllowedHostsOriginValidator(AuthMiddlewareStack(
URLRouter(...)))``, keeps for as long as a websocket lives a copy of the scope per
middleware, the parsed cookies, the session object with its decoded data, a lazy user
and a coroutine per layer: more than broadcast_app's own per-connection state
(docs/scaling.md). Its consumer needs the user and the session key only (the key binds
socket ids and lets the periodic check see a logout, see access.py), so
:class:`BroadcastEndpoint` makes the same checks without a layer of its own and keeps
the server's scope as it is:

- the ``Origin`` header as channels' ``AllowedHostsOriginValidator`` checks it
  (``ALLOWED_HOSTS``; its ``valid_origin``), else the handshake is refused (HTTP 403);
- the path, ``/ws/broadcast/`` under the scope's ``root_path``, else refused;
- then the consumer reads the session cookie, the session and its user at its
  ``connect`` (session_auth.py), unless an outer middleware put a ``user`` in the scope.

What it does not give: ``scope["session"]`` and ``scope["cookies"]``, which consumers of
a project's own that use the session need; with such routes, put broadcast_app's
``websocket_urlpatterns`` in your ``URLRouter`` behind channels' stack instead
(broadcast_app's consumer works behind either).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any
from urllib.parse import ParseResult, urlparse

from asgiref.sync import markcoroutinefunction
from channels.security.websocket import AllowedHostsOriginValidator

from .consumers import BroadcastConsumer

#: the endpoint's path (under the scope's ``root_path``)
PATH = "/ws/broadcast/"


def _origin(scope: dict[str, Any]) -> ParseResult | None:
    """The ``Origin`` header as channels' ``OriginValidator`` reads it (the last one)."""
    parsed = None
    for header, value in scope.get("headers", ()):
        if header == b"origin":
            try:
                parsed = urlparse(value.decode("latin-1"))
            except ValueError:
                parsed = None
    return parsed


def _on_path(scope: dict[str, Any]) -> bool:
    path = scope.get("path", "")
    root_path = scope.get("root_path", "")
    if root_path:
        if not path.startswith(root_path):
            return False
        path = path[len(root_path) :]
    return bool(path == PATH)


class BroadcastEndpoint:
    """ASGI application of the ``/ws/broadcast/`` websocket (see the module)."""

    def __init__(self) -> None:
        # Only its check is used: it reads ALLOWED_HOSTS (and DEBUG) once, as here.
        self._origins = AllowedHostsOriginValidator(None)

    # Not a coroutine function: it returns the connection's own coroutine, so no frame
    # of its own stays for the connection's life; marked as one, since servers and
    # asgiref tell ASGI 3 applications by that.
    @markcoroutinefunction
    def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[None]:
        if scope["type"] != "websocket":
            raise ValueError(f"BroadcastEndpoint serves websockets, not {scope['type']!r}")
        if not (_on_path(scope) and self._origins.valid_origin(_origin(scope))):
            return _refuse(receive, send)
        consumer = BroadcastConsumer()
        consumer.origin_checked = True
        return consumer(scope, receive, send)


async def _refuse(receive: Any, send: Any) -> None:
    """Refuse the handshake (the client sees HTTP 403), as channels' validators do."""
    message = await receive()
    if message["type"] == "websocket.connect":
        await send({"type": "websocket.close"})

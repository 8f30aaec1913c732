"""``SocketIdMiddleware`` (for ``MIDDLEWARE``) and ``from_socket()``: where a change came from.

A public entry point (see ``broadcast_app.urls``); the code is in ``broadcast_app.web``.
"""

from __future__ import annotations

from broadcast_app.events.socket_ids import from_socket
from broadcast_app.web.middleware import SocketIdMiddleware

__all__ = ["SocketIdMiddleware", "from_socket"]

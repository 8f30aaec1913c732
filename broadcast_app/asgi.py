"""``with_broadcast(app)``: runs an instance's background work with the ASGI server.

A public entry point (see ``broadcast_app.urls``); the code is in ``broadcast_app.web``.
"""

from __future__ import annotations

from broadcast_app.web.asgi import with_broadcast

__all__ = ["with_broadcast"]

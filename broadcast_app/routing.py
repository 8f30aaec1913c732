"""The websocket route and the stack it runs behind, for a project's ``asgi.py``.

A public entry point (see ``broadcast_app.urls``); the code is in ``broadcast_app.web``.
"""

from __future__ import annotations

from broadcast_app.web.routing import websocket_application, websocket_urlpatterns

__all__ = ["websocket_application", "websocket_urlpatterns"]

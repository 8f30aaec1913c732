"""Websocket URL patterns of broadcast_app, and the stack they should run behind."""

from __future__ import annotations

from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.security.websocket import AllowedHostsOriginValidator
from django.urls import path

from .consumers import BroadcastConsumer

websocket_urlpatterns = [
    path("ws/broadcast/", BroadcastConsumer.as_asgi(), name="broadcast"),
]


def websocket_application() -> Any:
    """The endpoint behind Origin checking (ALLOWED_HOSTS) and session authentication.

    Use it as the ``"websocket"`` entry of ``ProtocolTypeRouter`` when broadcast_app is
    your only websocket route; otherwise wrap your own ``URLRouter`` the same way.
    """
    from channels.routing import URLRouter

    return AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))

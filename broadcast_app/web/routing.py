"""Websocket URL patterns of broadcast_app, and the stack they should run behind."""

from __future__ import annotations

from django.urls import path

from .consumers import BroadcastConsumer
from .endpoint import BroadcastEndpoint

websocket_urlpatterns = [
    path("ws/broadcast/", BroadcastConsumer.as_asgi(), name="broadcast"),
]


def websocket_application() -> BroadcastEndpoint:
    """The endpoint behind Origin checking (ALLOWED_HOSTS) and session authentication.

    Use it as the ``"websocket"`` entry of ``ProtocolTypeRouter`` when broadcast_app is
    your only websocket route (it serves ``/ws/broadcast/`` and refuses other paths;
    see endpoint.py for what it keeps per socket). With websocket routes of your own,
    put :data:`websocket_urlpatterns` in your ``URLRouter`` behind channels'
    ``AllowedHostsOriginValidator(AuthMiddlewareStack(...))`` instead.
    """
    return BroadcastEndpoint()

"""Django middleware of broadcast_app: the socket a request's changes come from.

Add ``"broadcast_app.middleware.SocketIdMiddleware"`` to ``MIDDLEWARE``, after
``SessionMiddleware``: echo control (:mod:`broadcast_app.events.socket_ids`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

from ..events.socket_ids import from_socket, request_socket_id


class SocketIdMiddleware:
    """Reads ``X-Socket-ID`` / ``X-Broadcast-To-Others`` for the changes a request makes
    (place it after ``SessionMiddleware``: the id is bound to the request's session)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    @staticmethod
    def _socket(request: HttpRequest) -> tuple[str | None, bool]:
        to_others = request.headers.get("X-Broadcast-To-Others", "").lower() in {"1", "true"}
        return request_socket_id(request), to_others

    def __call__(self, request: HttpRequest) -> Any:
        if iscoroutinefunction(self):
            return self._acall(request)
        socket_id, to_others = self._socket(request)
        with from_socket(socket_id, to_others=to_others):
            return self.get_response(request)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        socket_id, to_others = self._socket(request)
        with from_socket(socket_id, to_others=to_others):
            response: Awaitable[HttpResponse] = self.get_response(request)
            return await response

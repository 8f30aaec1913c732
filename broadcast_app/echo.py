"""Echo control: which websocket a change came from, and whether to spare it the echo.

A page that makes a change over HTTP sends its websocket's id (``client.socketId`` in
broadcast.js) in the ``X-Socket-ID`` header; :class:`SocketIdMiddleware` attaches it to
every change the request makes, and the events carry it. The instance then skips that
socket when the model is registered with ``to_others=True`` or the request sent
``X-Broadcast-To-Others: 1`` (Laravel's ``toOthers()``). Outside requests, use
:func:`from_socket`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

#: what a socket id may look like (the JS client sends a UUID)
SOCKET_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

_current: ContextVar[tuple[str, bool] | None] = ContextVar("broadcast_socket", default=None)


def current() -> tuple[str, bool] | None:
    """The ``(socket_id, to_others)`` of the code running now, if any."""
    return _current.get()


def valid_socket_id(value: object) -> str | None:
    """``value`` if it is a well-formed socket id, else None."""
    if isinstance(value, str) and SOCKET_ID_RE.match(value):
        return value
    return None


@contextmanager
def from_socket(socket_id: str | None, *, to_others: bool = False) -> Iterator[None]:
    """Attribute the changes made in the block to ``socket_id`` (ignored if malformed)."""
    socket_id = valid_socket_id(socket_id)
    token = _current.set((socket_id, to_others) if socket_id else None)
    try:
        yield
    finally:
        _current.reset(token)


class SocketIdMiddleware:
    """Reads ``X-Socket-ID`` / ``X-Broadcast-To-Others`` for the changes a request makes."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    @staticmethod
    def _socket(request: HttpRequest) -> tuple[str | None, bool]:
        to_others = request.headers.get("X-Broadcast-To-Others", "").lower() in {"1", "true"}
        return request.headers.get("X-Socket-ID"), to_others

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

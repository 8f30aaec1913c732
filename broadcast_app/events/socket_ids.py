"""Echo control: which websocket a change came from, and whether to spare it the echo.

A page that makes a change over HTTP sends its websocket's id (``client.socketId`` in
broadcast.js) in the ``X-Socket-ID`` header; ``SocketIdMiddleware``
(:mod:`broadcast_app.web.middleware`) attaches it to every change the request makes,
and the events carry it. The instance then skips that socket when the model is
registered with ``to_others=True`` or the request sent ``X-Broadcast-To-Others: 1``
(Laravel's ``toOthers()``). Outside requests, use :func:`from_socket`.

The id the page chose is not used as it is: both the websocket and the request use
:func:`bind` of it and their session key, a keyed hash. Events (which every subscriber
reads) carry only the bound id, and a request can only produce ids bound to its own
session, so nobody can name another session's socket to keep its events from it.
Without a session (no cookie, or sessions not installed) the id is ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from django.http import HttpRequest
from django.utils.crypto import salted_hmac

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


def bind(session_key: str | None, socket_id: object) -> str | None:
    """The id of the socket a page named ``socket_id``, within the session ``session_key``.

    None when either is missing or ``socket_id`` is malformed. The result is what the
    websocket consumer compares events with, and what :func:`from_socket` takes.
    """
    client_id = valid_socket_id(socket_id)
    if not session_key or client_id is None:
        return None
    # SECRET_KEY keyed: the bound id of another session cannot be computed, and seeing
    # one in an event tells nothing of the session it belongs to.
    value = f"{session_key}\x00{client_id}"
    return salted_hmac(_BIND_SALT, value, algorithm="sha256").hexdigest()[:32]


_BIND_SALT = "broadcast_app.echo.bind"


def request_socket_id(request: HttpRequest) -> str | None:
    """The bound id of the socket a request names in ``X-Socket-ID`` (None if none)."""
    session = getattr(request, "session", None)
    session_key = getattr(session, "session_key", None) if session is not None else None
    return bind(session_key, request.headers.get("X-Socket-ID"))


@contextmanager
def from_socket(socket_id: str | None, *, to_others: bool = False) -> Iterator[None]:
    """Attribute the changes made in the block to ``socket_id`` (ignored if malformed).

    ``socket_id`` is a bound id (:func:`bind`, :func:`request_socket_id`): pass a task
    the request's ``request_socket_id(request)``, not the raw header.
    """
    socket_id = valid_socket_id(socket_id)
    token = _current.set((socket_id, to_others) if socket_id else None)
    try:
        yield
    finally:
        _current.reset(token)

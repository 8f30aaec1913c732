"""The user of a websocket from its handshake's session cookie, keeping nothing else.

What channels' ``AuthMiddlewareStack`` finds, found the way it finds it (the first
``Cookie`` header's session cookie, the session, its user as
``django.contrib.auth.get_user`` reads it, without its side effects), for
:class:`~.endpoint.BroadcastEndpoint`'s connections: only the user and the session
key stay with the connection, not the cookies, the session object or a copy of the
scope (see endpoint.py).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.cookie import parse_cookie

from . import access
from .contexts import in_worker


def session_cookie(scope: dict[str, Any]) -> str | None:
    """The session cookie of the scope's first ``Cookie`` header (as channels'
    ``CookieMiddleware`` reads it)."""
    for header, value in scope.get("headers", ()):
        if header == b"cookie":
            return parse_cookie(value.decode("latin-1")).get(settings.SESSION_COOKIE_NAME)
    return None


def _authenticate(cookie: str | None) -> tuple[str | None, Any]:
    if not cookie:
        return None, AnonymousUser()
    session = access.session_store()(cookie)
    user = access.session_user(session)
    # Read after the load: the store drops a key that names no session.
    key = session.session_key
    return key or None, AnonymousUser() if user is None else user


_authenticate_in_thread = in_worker(_authenticate, thread_sensitive=False)


async def authenticate(scope: dict[str, Any]) -> tuple[str | None, Any]:
    """The session key (None unless that session exists) and its user (AnonymousUser
    unless logged in and still valid) of a websocket's handshake."""
    return await _authenticate_in_thread(session_cookie(scope))

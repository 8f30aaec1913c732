"""The presence frames (``presence.join``, ``presence.leave``) and the consumer's hooks.

A connection joins an object it subscribes to (a ``pk`` subscription), as a logged-in
user allowed to see it now (the subscription's checks run again: view permission and
``object_check``). Joining again updates its ``state``. Each join is bounded: ``state``
by ``BROADCAST_PRESENCE_STATE_BYTES``, joins per connection by
``BROADCAST_PRESENCE_RATE``, users per object by ``BROADCAST_PRESENCE_MAX_MEMBERS``.
Whatever ends a connection's subscription to the object (``unsubscribe``, a lost
permission, the connection closing for any reason) ends its presence there too.

The Redis side is :mod:`.presence`; this instance's side :mod:`.presence_local`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeGuard

from redis.exceptions import RedisError

from ..conf import conf
from ..events.filters import Where
from ..events.frames import ProtocolError
from ..instance import presence
from ..instance.presence_local import Joined, local
from ..stats import stats
from . import access
from .contexts import in_worker
from .limits import JoinBucket
from .targets import target


def _is_object(pk: str | None) -> TypeGuard[str]:
    """Whether a subscription's key names one object (not a model, not a filter)."""
    return pk is not None and not isinstance(pk, Where)


def _object(message: dict[str, Any]) -> tuple[Any, str]:
    if message.get("where") is not None:
        raise ProtocolError("bad_request", "Presence is per object: 'pk', not 'where'.")
    config, pk = target(message)
    if not _is_object(pk):
        raise ProtocolError("bad_request", "Presence is per object: 'pk' is required.")
    return config, pk


def _state(message: dict[str, Any]) -> str:
    """The frame's ``state`` as compact JSON text, within its bound."""
    state = message.get("state", {})
    if not isinstance(state, dict):
        raise ProtocolError("bad_request", "'state' must be a JSON object.")
    text = json.dumps(state, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        size = len(text.encode())
    except UnicodeEncodeError:  # a lone surrogate
        raise ProtocolError("bad_request", "'state' is not valid Unicode text.") from None
    limit = conf.BROADCAST_PRESENCE_STATE_BYTES
    if size > limit:
        raise ProtocolError("too_large", f"'state' is limited to {limit} bytes of JSON.")
    return text


#: what a member list shows of a user, read in a worker thread
_user_fields = in_worker(presence.user_fields)


async def on_join(consumer: Any, message: dict[str, Any]) -> None:
    """``presence.join``: be one of the object's members, with ``state``; again: update it."""
    config, pk = _object(message)
    key = (config.label, pk)
    if not consumer.user.is_authenticated:
        raise ProtocolError("forbidden", "Log in to join an object's presence.")
    state = _state(message)
    bucket = getattr(consumer, "presence_joins", None)
    if bucket is None:
        bucket = consumer.presence_joins = JoinBucket()
    if not bucket.take():
        stats.incr("presence_refused")
        rate = conf.BROADCAST_PRESENCE_RATE
        raise ProtocolError("rate_limited", f"At most {rate:g} presence joins per second.")
    # The permission and object_check as of now (a subscription may be older).
    await access.authorize(consumer, config, pk)
    if consumer.closing:
        return
    if key not in consumer.subscriptions:
        raise ProtocolError(
            "bad_request", f"Subscribe to {config.label} {pk} before joining its presence."
        )
    fields = await _user_fields(consumer.user)
    payload = json.dumps({"user": fields}, separators=(",", ":"))[:-1] + f',"state":{state}}}'
    user_key = str(consumer.user.pk)
    joined = local.entry(consumer, key)
    if joined is None or joined.user_key != user_key:
        joined = Joined(local.new_id(user_key), user_key, payload)
    local.ensure_running()
    try:
        since = await presence.join(
            *key, joined.connection_id, user_key, payload, conf.BROADCAST_PRESENCE_MAX_MEMBERS
        )
    except (RedisError, OSError, TimeoutError):
        stats.incr("presence_errors")
        detail = "Presence is unavailable: Redis did not answer."
        raise ProtocolError("unavailable", detail) from None
    if since is None:
        most = conf.BROADCAST_PRESENCE_MAX_MEMBERS
        raise ProtocolError("too_many_members", f"At most {most} users per object.")
    joined.payload = payload
    local.record(consumer, key, joined)
    if consumer.closing or key not in consumer.subscriptions:
        local.leave(consumer, key)  # (it ended while Redis answered)


async def on_leave(consumer: Any, message: dict[str, Any]) -> None:
    """``presence.leave``: no longer a member (silently, if not one)."""
    config, pk = _object(message)
    local.leave(consumer, (config.label, pk))


#: the frames this module handles, for the consumer's ``handlers``
HANDLERS: dict[str, Callable[[Any, dict[str, Any]], Awaitable[None]]] = {
    "presence.join": on_join,
    "presence.leave": on_leave,
}


# -- the consumer's hooks ----------------------------------------------------------------


def subscribed(consumer: Any, label: str, pk: str | None) -> None:
    """After ``subscribe``: an object's subscriber gets its member list, and changes."""
    if _is_object(pk) and (label, pk) in consumer.subscriptions and not consumer.closing:
        local.watch(consumer, (label, pk))


def unsubscribed(consumer: Any, label: str, pk: str | None) -> None:
    """The subscription ended (``unsubscribe``, or its permission was lost): its presence
    on the object ends with it."""
    if _is_object(pk):
        local.unwatch(consumer, (label, pk))


def forget(consumer: Any) -> None:
    """The connection ended, however: it leaves every object at once."""
    local.forget(consumer)

"""Who may still see what: open websockets are checked again (revocation).

channels' ``AuthMiddlewareStack`` reads the user once, at the handshake; without more,
an open socket keeps that user, and what it was allowed to see, for as long as it
lives. So every ``BROADCAST_REVALIDATE_INTERVAL`` seconds each connection holding
subscriptions is checked again, against the database, the way
``django.contrib.auth.get_user`` checks a request:

- its session still exists and still names the same user (logout flushes it);
- the session's authentication backend still returns that user (``ModelBackend``
  refuses inactive users);
- the session's auth hash still matches the user's (a password change elsewhere);
- a fresh user object still has each subscribed model's permission.

A connection whose user is no longer authenticated is closed with code 4003; a
subscription whose permission was lost is dropped with an ``error`` frame (code
``forbidden``, naming the model and pk). So a revocation stops delivery within one
interval plus the time of one pass. The same check runs before a subscription when
the connection's last one is older than the interval.

Cost: one pass per interval for the whole instance, in batches on worker threads;
connections sharing a session share one check (a session read, a user read, and the
user's permissions: two queries with ``ModelBackend``, none for a superuser).
Connections without subscriptions are not checked until they subscribe.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
import weakref
from collections.abc import Callable, Hashable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Protocol

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_user_model,
    load_backend,
)
from django.contrib.sessions.backends.base import SessionBase
from django.core.exceptions import ValidationError
from django.utils.crypto import constant_time_compare

from ..conf import conf
from ..events.filters import Where
from ..events.frames import ProtocolError
from ..events.model_configs import ModelConfig, NotRegistered, all_configs, get_config
from ..instance import cache
from ..instance.runtime import runtime
from ..stats import stats
from .contexts import in_worker

logger = logging.getLogger(__name__)

#: close code of a connection whose user is no longer authenticated
CLOSE_REVOKED = 4003
#: sessions (distinct users) checked in one worker-thread call
_BATCH = 50


class Watched(Protocol):
    """What the checks need from a websocket connection."""

    user: Any
    #: the key of the session the user was read from (None: none, or not a session's)
    session_key: str | None
    #: never mutated: replaced (connections sharing a session share one)
    permissions: Mapping[str, bool]
    subscriptions: set[tuple[str, str | None]]
    #: labels whose permission was lost (their events still queued are dropped)
    forbidden: AbstractSet[str]
    closing: bool
    #: ``time.monotonic()`` of the last check (the handshake counts as one)
    checked_at: float

    async def revoke(self) -> None:
        """Close the connection: its user is no longer authenticated."""

    def forbid(self, label: str, pk: str | None) -> None:
        """Drop one subscription whose permission was lost, telling the client."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a check found: the fresh user (None: no longer authenticated) and the
    permissions asked about."""

    user: Any
    permissions: dict[str, bool]


def now() -> float:
    """The clock ``checked_at`` is read on."""
    return time.monotonic()


def session_key(scope: dict[str, Any]) -> str | None:
    """The session key of a websocket's scope (None without a session), where channels'
    ``SessionMiddleware`` put the session."""
    key = getattr(scope.get("session"), "session_key", None)
    return key if isinstance(key, str) and key else None


def session_store() -> Callable[[str], SessionBase]:
    """The ``SessionStore`` class of ``SESSION_ENGINE``."""
    store: Callable[[str], SessionBase] = import_module(settings.SESSION_ENGINE).SessionStore
    return store


def session_user(session: SessionBase) -> Any:
    """The user ``session`` is logged in as, or None (not logged in, or no longer
    valid): ``django.contrib.auth.get_user`` without its side effects (it flushes or
    cycles the session; a websocket cannot hand a browser a new cookie)."""
    try:
        user_id = get_user_model()._meta.pk.to_python(session[SESSION_KEY])
        backend_path = session[BACKEND_SESSION_KEY]
    except (KeyError, ValidationError):
        return None  # logged out, expired, or never a logged-in session
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return None
    user = load_backend(backend_path).get_user(user_id)
    if user is None:
        return None
    if hasattr(user, "get_session_auth_hash"):
        session_hash = session.get(HASH_SESSION_KEY)
        if not session_hash:
            return None
        hashes = [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
        if not any(constant_time_compare(session_hash, known) for known in hashes):
            return None
    return user


def fresh_user(key: str | None, user: Any) -> Any:
    """``user`` as the database has it now, or None if it is no longer authenticated
    (see :func:`session_user`). A connection authenticated without a session (a
    project's own middleware) can only be reloaded by pk: deactivation and permissions
    apply to it, logout is up to that scheme.
    """
    if key is None:
        manager = getattr(type(user), "_default_manager", None)
        if manager is None:
            return user  # not a model instance: nothing to reload it from
        fresh = manager.filter(pk=user.pk).first()
        if fresh is None or not getattr(fresh, "is_active", True):
            return None
        return fresh
    fresh = session_user(session_store()(key))
    if fresh is None or fresh.pk != user.pk:
        return None
    return fresh


def verify(key: str | None, user: Any, permissions: Iterable[str]) -> Verdict:
    """Check one session's user again, and the given permissions on the fresh user."""
    if user.is_authenticated:
        user = fresh_user(key, user)
        if user is None:
            return Verdict(None, {})
    return Verdict(user, {perm: bool(user.has_perm(perm)) for perm in permissions})


def _identity(connection: Watched) -> Hashable:
    user = connection.user
    if not user.is_authenticated:
        return (None, None, type(user))
    return (connection.session_key, user.pk, type(user))


def _needed(connection: Watched) -> set[str]:
    perms = set()
    for label, _pk in connection.subscriptions:
        try:
            perms.add(get_config(label).view_permission)
        except NotRegistered:
            continue
    return perms


def _verify_all(work: list[tuple[str | None, Any, set[str]]]) -> list[Verdict | None]:
    """``verify`` each entry (None for one whose check failed: it waits for the next)."""
    verdicts: list[Verdict | None] = []
    failed: Exception | None = None
    for key, user, perms in work:
        try:
            verdicts.append(verify(key, user, perms))
        except Exception as exc:
            stats.incr("revalidation_errors")
            failed = exc
            verdicts.append(None)
    if failed is not None:
        # Once per batch: a database outage fails them all. The connections keep
        # what they had until a check succeeds (a revocation needs the database too).
        count = sum(verdict is None for verdict in verdicts)
        logger.warning("broadcast_app could not check %d websocket user(s): %r", count, failed)
    return verdicts


_verify_batch = database_sync_to_async(_verify_all, thread_sensitive=False)


async def apply(connection: Watched, verdict: Verdict, checked_at: float) -> None:
    """Act on a check of ``connection``: close it, or drop what it may no longer see."""
    if connection.closing:
        return
    if verdict.user is not None and checked_at < connection.checked_at:
        return  # a later check (before a subscription) already applied
    if verdict.user is None:
        stats.incr("revoked_connections")
        await connection.revoke()
        return
    connection.user = verdict.user
    # Permissions not asked about are asked again (of the fresh user) when needed. One
    # dict for the connections the check was for (authorize replaces, never mutates it).
    connection.permissions = verdict.permissions
    connection.checked_at = checked_at
    for label, pk in sorted(connection.subscriptions, key=lambda item: (item[0], item[1] or "")):
        try:
            perm = get_config(label).view_permission
        except NotRegistered:
            continue
        # (A subscription made while this check ran was just checked on its own.)
        if verdict.permissions.get(perm) is False:
            stats.incr("revoked_subscriptions")
            connection.forbid(label, pk)


async def check(connections: list[Watched]) -> None:
    """Check ``connections`` again: those sharing a session with one check."""
    groups: dict[Hashable, list[Watched]] = {}
    for connection in connections:
        if not connection.closing:
            groups.setdefault(_identity(connection), []).append(connection)
    items = list(groups.values())
    for start in range(0, len(items), _BATCH):
        batch = items[start : start + _BATCH]
        work = [
            (
                members[0].session_key,
                members[0].user,
                set().union(*(_needed(member) for member in members)),
            )
            for members in batch
        ]
        checked_at = now()
        verdicts = await _verify_batch(work)
        for members, verdict in zip(batch, verdicts, strict=True):
            if verdict is None:
                continue
            for member in members:
                await apply(member, verdict, checked_at)


def visible_frame(config: ModelConfig, user: Any, frame: str, event: dict[str, Any]) -> str | None:
    """``frame`` as ``user`` may see it under the model's ``object_check``: None if the
    check refuses the object, and without ``previous`` if it refuses the object as it
    was before the change (its old values are not for someone who could not see it).

    On a filtered subscription, ``match`` says that the row matched before (``stay``,
    ``leave``): for a reader the check refused the row before, a ``stay`` is an
    ``enter`` and a ``leave`` is not sent, as if it had not matched."""
    assert config.object_check is not None
    if not allows(config, user, event["data"]):
        return None
    old = event.get("old")  # (filters.fan_out: the row before, for a stay or a leave)
    refused_before = old is not None and not allows(config, user, old)
    if refused_before:
        if event["match"] == "leave":
            return None
        event = {**event, "match": "enter"}
    previous = event.get("previous")
    before = {**event["data"], **previous} if previous else None
    if not refused_before and (before is None or allows(config, user, before)):
        return frame
    stats.incr("previous_withheld")
    return json.dumps(
        {key: value for key, value in event.items() if key not in _NOT_SENT},
        separators=(",", ":"),
    )


#: what ``visible_frame`` leaves out of a frame it rebuilds (``sub`` and ``old``: what
#: filters.fan_out hands the consumer beside a filtered subscription's frame)
_NOT_SENT = frozenset({"previous", "sub", "old"})


#: when each model's failing object_check was last logged with its traceback
_failure_logged: dict[str, float] = {}
#: seconds between two tracebacks of one model's failing object_check
_FAILURE_LOG_EVERY = 60.0


def allows(config: ModelConfig, user: Any, data: Mapping[str, Any]) -> bool:
    """``object_check(user, data)``; a check that raises denies (fails closed)."""
    assert config.object_check is not None
    try:
        return bool(config.object_check(user, data))
    except Exception:
        stats.incr("object_check_errors")
        # It runs per event and subscriber: one traceback per model and minute is
        # enough to find the bug, and a client cannot flood the log with it.
        last = _failure_logged.get(config.label)
        if last is None or time.monotonic() - last >= _FAILURE_LOG_EVERY:
            _failure_logged[config.label] = time.monotonic()
            logger.exception("object_check of %s failed (denied)", config.label)
        return False


async def authorize(connection: Watched, config: ModelConfig, pk: str | None) -> None:
    """Let ``connection`` subscribe to ``config``'s model (its object ``pk``, if given),
    or raise ``forbidden``; from then on, check it every interval."""
    # The user loaded at the handshake may be out of date.
    await refresh(connection)
    if connection.closing:
        return
    perm = config.view_permission
    if perm not in connection.permissions:
        allowed = await _has_perm(connection.user, perm)
        connection.permissions = {**connection.permissions, perm: allowed}
    if not connection.permissions[perm]:
        raise ProtocolError("forbidden", f"You may not subscribe to {config.label}.")
    if pk is not None and config.object_check is not None and not isinstance(pk, Where):
        data = await _cached_row(config.model, pk)
        if data is None or not allows(config, connection.user, data):
            raise ProtocolError("forbidden", f"You may not subscribe to {config.label} {pk}.")
    if config.label in connection.forbidden:
        connection.forbidden = connection.forbidden - {config.label}
    revalidator.watch(connection)


def _ask(user: Any, perm: str) -> bool:
    """``user.has_perm(perm)``, asked of a copy unless a model has an ``object_check``.

    Django's backends cache all of a user's permissions on the object asked, and the
    handshake's user lives as long as the connection (its scope holds it), so each
    connection would keep its own copy of them. An ``object_check`` gets that user in
    the event loop, though, where a permission it asks must come from that cache (a
    query there fails): with one registered, the user is asked itself, as before.
    """
    if any(config.object_check is not None for config in all_configs()):
        return bool(user.has_perm(perm))
    return bool(copy.copy(user).has_perm(perm))


_has_perm = in_worker(_ask)
#: the row an ``object_check`` is asked about, from the cache (else the database)
_cached_row = in_worker(cache.get)


async def refresh(connection: Watched) -> None:
    """Check ``connection`` now if its last check is older than the interval."""
    if now() - connection.checked_at >= conf.BROADCAST_REVALIDATE_INTERVAL:
        await check([connection])


class Revalidator:
    """The periodic check of this event loop's connections (run by the instance runtime
    as its ``revalidate`` task while a connection holds a subscription)."""

    def __init__(self) -> None:
        # Weak: a connection that went away needs no unwatching.
        self._watched: weakref.WeakSet[Any] = weakref.WeakSet()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> bool:
        return runtime.running("revalidate")

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The task of the periodic check, if one was started in this loop."""
        return runtime.task("revalidate")

    def watch(self, connection: Watched) -> None:
        """Check ``connection`` every interval from now on (it holds a subscription)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # The connections of a previous loop went with it.
            self._loop = loop
            self._watched = weakref.WeakSet()
        self._watched.add(connection)
        runtime.spawn("revalidate", self._run, forever=False)

    async def stop(self) -> None:
        """Cancel the periodic check and wait for it."""
        await runtime.cancel("revalidate")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(conf.BROADCAST_REVALIDATE_INTERVAL)
            if not await self._pass():
                # Nothing to check: the task ends; the next subscription starts another.
                return

    async def _pass(self) -> bool:
        """Check every watched connection once; False if none holds a subscription.

        A method of its own so that the connections it holds are let go before the
        next sleep (a closed connection must not live on until the next pass).
        """
        due = [c for c in list(self._watched) if c.subscriptions and not c.closing]
        if not due:
            return False
        started = now()
        try:
            await check(due)
        except Exception:
            stats.incr("revalidation_errors")
            logger.exception("broadcast_app: checking websocket users failed")
        took = now() - started
        if took > conf.BROADCAST_REVALIDATE_INTERVAL:
            logger.warning(
                "broadcast_app took %.1fs to check %d websocket(s), more than "
                "BROADCAST_REVALIDATE_INTERVAL",
                took,
                len(due),
            )
        return True


revalidator = Revalidator()

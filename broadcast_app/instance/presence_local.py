"""This instance's side of presence: its members kept alive, its watchers kept current.

- **Members.** The connections of this process that joined an object; the
  ``presence-refresh`` task pushes their deadlines ahead every third of
  ``BROADCAST_PRESENCE_TTL`` (and joins again any that Redis lost), so they stay while
  the process lives. A connection that leaves, unsubscribes, loses the permission or
  ends in any way is removed from Redis by the ``presence-send`` task at once.
- **Watchers.** The connections of this process subscribed to one object (a ``pk``
  subscription): they get the object's member list each time it changes. One
  ``presence-notes`` task per Redis host hears that an object changed; the
  ``presence-send`` task reads its whole list again from Redis and sends it to the
  watchers if it differs from the one last sent (to a new watcher, if it is not empty).
  One task reads and sends, so lists go out in the order they were read: an older list
  never overtakes a newer one. Lists that are not empty are read again every third of
  the TTL as well, which removes the members of a killed instance and makes up for a
  notification lost on the way.

So a killed instance's members disappear within 4/3 of ``BROADCAST_PRESENCE_TTL`` plus a
read: their deadline passes within the TTL, and the next re-read by any instance
watching the object removes them and tells the others.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from redis.exceptions import RedisError

from ..conf import conf
from ..stats import stats
from ..transport import cluster
from ..transport.redis_clients import make_async_client
from . import presence

logger = logging.getLogger(__name__)

Key = tuple[str, str]

#: seconds between two re-reads and refreshes at least (whatever the TTL)
_MIN_INTERVAL = 0.1
#: seconds a notification listener waits for a message before looking again
_LISTEN_WAIT = 1.0


class Runtime(Protocol):
    """What presence needs from the instance runtime (:class:`.runtime.InstanceRuntime`)."""

    def running(self, name: str) -> bool:
        """Whether the task ``name`` runs in this loop."""

    def spawn(
        self, name: str, job: Callable[[], Awaitable[None]], forever: bool = True
    ) -> asyncio.Task[None]:
        """Run ``job`` as the supervised task ``name``."""


class Connection(Protocol):
    """What presence needs from a websocket connection."""

    closing: bool

    def enqueue(self, frame: str) -> None:
        """Send a frame to this client."""

    @property
    def sender(self) -> Any:
        """The connection's :class:`~.sender.Sender` (its queue is coalesced)."""


@dataclass
class Joined:
    """One connection's entry on one object, as last written (to write it again)."""

    connection_id: str
    user_key: str
    payload: str


def frame_head(key: Key) -> str:
    """How a ``presence`` frame of ``key`` starts (the frames of one object coalesce)."""
    label, pk = key
    return json.dumps({"type": "presence", "model": label, "pk": pk}, separators=(",", ":"))[:-1]


def encode(key: Key, members: list[presence.Member]) -> str:
    body = json.dumps([m.as_json() for m in members], separators=(",", ":"), allow_nan=False)
    return f'{frame_head(key)},"members":{body}}}'


class LocalPresence:
    """This event loop's members and watchers (see the module's docstring)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runtime: Runtime | None = None
        self._reset()

    def _reset(self) -> None:
        #: this process's part of every connection id: a killed process's ids are never
        #: reused by its successor (its members must expire, not come back)
        self.token = secrets.token_hex(8)
        self._numbers = itertools.count(1)
        self.joined: dict[Connection, dict[Key, Joined]] = {}
        self.watchers: dict[Key, set[Connection]] = {}
        #: the objects each connection watches (the same pairs as ``watchers``)
        self.watching: dict[Connection, set[Key]] = {}
        #: the last list sent to each object's watchers, while it is not empty
        self.last: dict[Key, str] = {}
        self._pending: set[Key] = set()
        self._fresh: dict[Key, set[Connection]] = {}
        self._leaving: list[tuple[Key, str]] = []
        #: lists whose read failed: read again at the next refresh
        self._retry: set[Key] = set()
        self._wake = asyncio.Event()

    def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # The connections and tasks of a previous loop went with it.
            self._loop = loop
            self._reset()

    def attach(self, runtime: Runtime) -> None:
        """Run this instance's presence tasks under ``runtime`` (the instance's one
        owner of background work, which attaches itself as it starts)."""
        self._runtime = runtime

    def ensure_running(self) -> None:
        """Start this instance's presence tasks unless they run."""
        self._bind()
        runtime = self._runtime
        if runtime is None:
            raise RuntimeError("presence needs the instance runtime: start it first")
        if runtime.running("presence-send"):
            return
        runtime.spawn("presence-send", self._send_loop)
        runtime.spawn("presence-refresh", self._refresh_loop)
        for number, host in enumerate(presence.all_hosts()):
            runtime.spawn(f"presence-notes-{number}", partial(self._listen, host))

    # -- what connections do -----------------------------------------------------------

    def new_id(self, user_key: str) -> str:
        return presence.connection_id(self.token, next(self._numbers), user_key)

    def entry(self, connection: Connection, key: Key) -> Joined | None:
        return self.joined.get(connection, {}).get(key)

    def record(self, connection: Connection, key: Key, joined: Joined) -> None:
        self.joined.setdefault(connection, {})[key] = joined

    def watch(self, connection: Connection, key: Key) -> None:
        """``connection`` subscribed to the object: send it the current list, then each
        change."""
        self.ensure_running()
        self.watchers.setdefault(key, set()).add(connection)
        self.watching.setdefault(connection, set()).add(key)
        self._fresh.setdefault(key, set()).add(connection)
        self.want(key)

    def unwatch(self, connection: Connection, key: Key) -> None:
        """``connection`` no longer subscribes to the object: it leaves it too."""
        self.leave(connection, key)
        keys = self.watching.get(connection)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self.watching[connection]
        watching = self.watchers.get(key)
        if watching is not None:
            watching.discard(connection)
            if not watching:
                del self.watchers[key]
                self.last.pop(key, None)
        fresh = self._fresh.get(key)
        if fresh is not None:
            fresh.discard(connection)
            if not fresh:
                del self._fresh[key]

    def leave(self, connection: Connection, key: Key) -> None:
        """Remove ``connection``'s entry on the object (now, by the send task)."""
        entries = self.joined.get(connection)
        if not entries or key not in entries:
            return
        joined = entries.pop(key)
        if not entries:
            del self.joined[connection]
        self._leaving.append((key, joined.connection_id))
        self.ensure_running()
        self._wake.set()

    def forget(self, connection: Connection) -> None:
        """``connection`` ended: it leaves everything and watches nothing."""
        for key in list(self.joined.get(connection, {})):
            self.leave(connection, key)
        for key in list(self.watching.get(connection, ())):
            self.unwatch(connection, key)

    def counts(self) -> dict[str, int]:
        """Connections of this instance present on an object, per model (dashboard)."""
        found: dict[str, int] = {}
        for entries in self.joined.values():
            for label, _pk in entries:
                found[label] = found.get(label, 0) + 1
        return found

    def want(self, key: Key) -> None:
        """Read the object's list again and send it where it changed."""
        self._pending.add(key)
        self._wake.set()

    # -- the tasks ---------------------------------------------------------------------

    async def _send_loop(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await self._leave_now()
                pending, self._pending = self._pending, set()
                for key in sorted(pending):
                    await self._update(key)
        finally:
            # Stopping: remove what already left; the TTL removes the rest.
            try:
                await self._leave_now()
            finally:
                await presence.close_clients()

    async def _leave_now(self) -> None:
        leaving, self._leaving = self._leaving, []
        by_key: dict[Key, list[str]] = {}
        for key, connection_id in leaving:
            by_key.setdefault(key, []).append(connection_id)
        for (label, pk), ids in by_key.items():
            try:
                await presence.leave(label, pk, ids)
            except (RedisError, OSError, TimeoutError) as exc:
                # Its deadline passes within the TTL: it leaves then.
                stats.incr("presence_errors")
                logger.warning("broadcast_app could not remove presence members: %r", exc)

    async def _update(self, key: Key) -> None:
        if not any(not c.closing for c in self.watchers.get(key, ())):
            self._fresh.pop(key, None)
            self.last.pop(key, None)
            return
        # No connection is held across the read: a connection that ends meanwhile is
        # gone for good, not kept alive by this task's frame.
        try:
            members = await presence.read(*key)
        except (RedisError, OSError, TimeoutError) as exc:
            stats.incr("presence_errors")
            logger.warning("broadcast_app could not read presence members: %r", exc)
            self._retry.add(key)  # again at the next refresh (new watchers still owed)
            return
        watching = [c for c in self.watchers.get(key, ()) if not c.closing]
        fresh = self._fresh.pop(key, set())
        if not watching:
            self.last.pop(key, None)
            return
        frame = encode(key, members) if members else None
        if frame != self.last.get(key):
            targets = watching
        else:
            targets = [c for c in watching if c in fresh] if frame is not None else []
        if frame is None:
            self.last.pop(key, None)
            frame = encode(key, [])
        else:
            self.last[key] = frame
        head = frame_head(key) + ","
        for connection in targets:
            queue = connection.sender.queue
            if queue:
                # Only the latest list of an object matters to a client that lags.
                kept = [f for f in queue if not f.startswith(head)]
                if len(kept) != len(queue):
                    queue.clear()
                    queue.extend(kept)
            connection.enqueue(frame)
        stats.incr("presence_lists_sent", len(targets))

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(max(_MIN_INTERVAL, conf.BROADCAST_PRESENCE_TTL / 3))
            await self._refresh()
            # Lists that are not empty: a member may have expired, a note been lost.
            for key in [*self.last, *self._retry]:
                if key in self.watchers:
                    self._pending.add(key)
            self._retry = set()
            self._wake.set()

    async def _refresh(self) -> None:
        by_key: dict[Key, dict[str, Joined]] = {}
        for entries in self.joined.values():
            for key, joined in entries.items():
                by_key.setdefault(key, {})[joined.connection_id] = joined
        for (label, pk), ours in by_key.items():
            try:
                missing = await presence.refresh(label, pk, list(ours))
                for connection_id in missing:
                    # Expired while this process could not refresh it (a pause, an
                    # outage), or lost with Redis' data: it is still here.
                    joined = ours[connection_id]
                    await presence.join(
                        label, pk, connection_id, joined.user_key, joined.payload, 0
                    )
            except (RedisError, OSError, TimeoutError) as exc:
                stats.incr("presence_errors")
                logger.warning("broadcast_app could not refresh presence members: %r", exc)

    async def _listen(self, host: dict[str, Any]) -> None:
        """Hear which objects changed on one host, until cancelled; subscribe again
        after a Redis error (the backoff doubles up to the TTL)."""
        delay = _MIN_INTERVAL
        while True:
            try:
                await self._listen_once(host)
            except (RedisError, OSError) as exc:
                stats.incr("presence_errors")
                logger.warning("broadcast_app presence notifications failed: %r", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max(_MIN_INTERVAL, conf.BROADCAST_PRESENCE_TTL))

    async def _listen_once(self, host: dict[str, Any]) -> None:
        # No socket timeout: the subscription waits for messages as long as it takes.
        client = make_async_client(
            host, conf.BROADCAST_REDIS_TIMEOUT, decode_responses=True, socket_timeout=None
        )
        if cluster.enabled():
            # The slot map first: the cluster's pub/sub picks its node from it.
            await client.initialize()
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(presence.channel())
            # What changed while this instance was not subscribed is read now.
            for key in self.watchers:
                self.want(key)
            while True:
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=_LISTEN_WAIT
                )
                if message is None:
                    continue
                changed = presence.parse_note(message.get("data"))
                if changed is not None and changed in self.watchers:
                    self.want(changed)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await client.aclose()


local = LocalPresence()

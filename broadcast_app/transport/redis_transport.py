"""The Redis transport's publishing side: batches of events through the publish
script (:mod:`.scripts`), resets, and the outbox's "already published" records.

One client per Redis host, kept between batches (see ``upstream/redis_py.py``: one
connection kept for publishing, where the fast path allows it). Used by one publisher
thread, or by one outbox relay, at a time; the clients' table is guarded for the
settings hooks that reset it from other threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..conf import conf
from ..events.wire import frame_from_body
from ..stats import stats
from ..upstream.channels_redis import LayerSender
from .cluster import CLUSTER, once_in_slot
from .interface import Item, Once
from .published_ids import PublishedIds
from .redis_clients import failures, make_client
from .routes import MESSAGE_TYPE, RESET_TYPE, Route, route
from .scripts import RESET_SCRIPT, load, pack, unpack

if TYPE_CHECKING:
    import redis

    from .cluster_publish import ClusterClient

logger = logging.getLogger(__name__)

_WARN_EVERY = 10.0  # seconds between two warnings of the same kind (no log flood)
# How long Redis remembers that an outbox event went out. The relay deletes the hash as
# soon as its rows are deleted; this bounds what a relay that died in between leaves.
_ONCE_TTL_MS = 24 * 3600 * 1000


class RedisTransport:
    """Publish to Redis (a :class:`.interface.PublishingTransport`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[str, _Client | ClusterClient] = {}
        self._last_warning: dict[str, float] = {}
        self._published = PublishedIds()

    @property
    def lost(self) -> set[str]:
        """Models whose published events a Redis failover lost, not reset yet."""
        return self._published.lost

    def publish_batch(
        self,
        batch: list[Item],
        once: list[Once] | None = None,
        pause: Callable[[], None] | None = None,
    ) -> tuple[int, int]:
        """Publish ``batch`` in order: how many of the first events were dealt with, and
        how many of those were skipped (outbox duplicates). ``pause`` runs between each
        write and the read of its replies. Never raises a Redis error: the events not
        dealt with are the caller's to retry."""
        sent = skipped = 0
        maxlen = conf.BROADCAST_LOG_MAXLEN
        max_age = int(conf.BROADCAST_LOG_MAX_AGE * 1000)
        for r, items in _runs_by_host(batch, once):
            try:
                client = self._client(r)
                # EVALSHA directly: redis-py's Script in a pipeline sends SCRIPT EXISTS
                # first on every execute(), an extra round trip per batch. A Redis that
                # lost the scripts (restart) fails the batch with NOSCRIPT; the batch is
                # retried on a new client, which loads them.
                packed = pack(items, client.shas, maxlen, max_age, _ONCE_TTL_MS)
                results = unpack(packed, client.call(packed.calls, pause))
            except failures() as exc:
                stats.incr("publish_errors", len(items))
                self._warn(
                    "redis",
                    "broadcast_app could not publish %s event(s) to Redis (kept for retry): %s",
                    len(items),
                    exc,
                )
                self._drop_client(r)
                return sent, skipped
            if not items[0][0].channel:
                self._send_through_layer(r, client, items, results)
            duplicates = results.count(None)
            if duplicates:
                stats.incr("outbox_duplicates", duplicates)
            stats.incr("published", len(items) - duplicates)
            sent += len(items)
            skipped += duplicates
            self._published.record([item[0] for item in items], results)
            if self._published.lost:
                # Outside the batch's try: a failed reset must not send the batch again;
                # it is retried after the next batch.
                self._published.lost -= self._send_resets(
                    self._published.lost, "were lost in a Redis failover"
                )
        return sent, skipped

    def _send_through_layer(
        self, r: Route, client: _Client | ClusterClient, items: list[Any], results: list[Any]
    ) -> None:
        """Publish a logged batch with the channel layer's ``group_send`` (the script
        published nothing: fast path "script_publish" off). A failure leaves the events
        to the listeners' gap repair, which reads them from the log, rather than
        publishing them twice."""
        messages = [
            (
                event_route.group,
                {
                    "type": MESSAGE_TYPE,
                    "frame": frame_from_body(result[0], body),
                    "prev": result[1],
                },
            )
            for (event_route, body, _seen), result in zip(items, results, strict=True)
            if result
        ]
        try:
            client.layer_send(messages)
        except Exception as exc:
            self._warn(
                "layer", "broadcast_app could not send events through the channel layer: %s", exc
            )
            self._drop_client(r)

    def forget(self, keys: Iterable[tuple[str, str]]) -> None:
        """Delete outbox "already published" hashes, given as (model label, key) pairs
        (their rows are gone); never raises."""
        by_host: dict[str, tuple[Route, set[str]]] = {}
        for label, key in keys:
            r = route(label)
            by_host.setdefault(r.key, (r, set()))[1].add(_in_slot(r, key))
        for r, names in by_host.values():
            try:
                self._client(r).redis.delete(*names)
            except failures():
                self._drop_client(r)  # they expire by themselves

    def send_resets(
        self, labels: set[str], why: str = "were dropped during an outage"
    ) -> set[str]:
        """Tell every instance that events of ``labels`` were lost; return those told.
        Never raises."""
        return self._send_resets(labels, why)

    def _send_resets(
        self, labels: set[str], why: str = "were dropped during an outage"
    ) -> set[str]:
        """Tell every instance that events of ``labels`` were lost; return those told."""
        told = set()
        for label in labels:
            r = route(label)
            try:
                client = self._client(r)
                client.redis.eval(
                    client.reset_script, 1, r.meta, r.channel, label, r.serializer_format
                )
                if not r.channel:
                    message = {"type": RESET_TYPE, "model": label, "reason": "lost"}
                    client.layer_send([(r.group, message)])
            except failures():
                self._drop_client(r)
                continue
            told.add(label)
            stats.incr("lost_resets")
            logger.warning("broadcast_app: %s events %s: reset sent", label, why)
        return told

    def reset(self) -> None:
        """Forget the clients (settings changed, or a forked child: their sockets are
        the parent's); the next batch reconnects."""
        with self._lock:
            self._clients = {}

    def close(self) -> None:
        """Close the clients (an outbox relay that stops)."""
        with self._lock:
            clients, self._clients = self._clients, {}
        for entry in clients.values():
            entry.close()

    def _client(self, r: Route) -> _Client | ClusterClient:
        """The client of ``r``'s Redis host (one per host)."""
        entry = self._clients.get(r.key)  # one dict lookup: atomic, no lock needed
        if entry is None:
            # Outside the lock: saving threads take it, and this talks to Redis.
            entry = _new_client(r)
            with self._lock:
                self._clients[r.key] = entry
        return entry

    def _drop_client(self, r: Route) -> None:
        with self._lock:
            entry = self._clients.pop(r.key, None)
        if entry is not None:
            entry.close()

    def _warn(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(kind, -_WARN_EVERY) >= _WARN_EVERY:
            self._last_warning[kind] = now
            logger.warning(message, *args)


def _new_client(r: Route) -> _Client | ClusterClient:
    """A client for ``r``'s Redis: a cluster's (see cluster_publish.py), or one host's."""
    client = make_client(r.host, conf.BROADCAST_REDIS_TIMEOUT)
    if CLUSTER in r.host:
        # Imported with the first cluster client: a process on one Redis never needs it.
        from .cluster_publish import ClusterClient

        return ClusterClient(client)
    return _Client(client)


class _Client:
    """A Redis client of the publisher's, with the script loaded and what sends a batch
    of commands (see upstream/redis_py.py: one connection kept for publishing, where the
    fast path allows it)."""

    #: what sends a reset (dropping the model's epoch)
    reset_script = RESET_SCRIPT

    def __init__(self, client: redis.Redis) -> None:
        # Imported with the first client, as redis-py is (see redis_clients).
        from ..upstream.redis_py import commands_for

        self.redis = client
        self.shas = load(client)
        self._commands = commands_for(client)
        #: sends through the channel layer (fast path "script_publish" off); made at use
        self._layer: LayerSender | None = None

    def call(
        self, commands: list[tuple[Any, ...]], pause: Callable[[], None] | None = None
    ) -> list[Any]:
        """Send ``commands`` in one write and return their replies, in order (``pause``
        runs in between, where it can); raises on the first error (the caller then
        closes this client)."""
        return self._commands.call(commands, pause)

    def layer_send(self, messages: list[tuple[str, dict[str, Any]]]) -> None:
        """Send (group, message) pairs with the channel layer's ``group_send``."""
        if self._layer is None:
            self._layer = LayerSender(conf.BROADCAST_CHANNEL_LAYER)
        self._layer.send(messages)

    def close(self) -> None:
        self._commands.close()
        if self._layer is not None:
            self._layer.close()
        self.redis.close()


def _in_slot(r: Route, key: str) -> str:
    """An outbox record's key, on a Redis Cluster in the slot of ``r``'s model (the
    publish script writes it beside the model's log)."""
    return once_in_slot(key, r.label) if CLUSTER in r.host else key


def _once_in_slot(r: Route, once: Once) -> Once:
    return (_in_slot(r, once[0]), once[1])


def _runs_by_host(batch: list[Item], once: list[Once] | None) -> list[tuple[Route, list[Any]]]:
    """Consecutive events grouped by Redis host, keeping their order; each run with the
    route of its first event (every route of a run names the same host)."""
    runs: list[tuple[Route, list[Any]]] = []
    for index, (label, body) in enumerate(batch):
        r = route(label)
        entry = (r, body, None if once is None else _once_in_slot(r, once[index]))
        if runs and runs[-1][0].key == r.key:
            runs[-1][1].append(entry)
        else:
            runs.append((r, [entry]))
    return runs

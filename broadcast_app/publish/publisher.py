"""Hand committed changes to a background thread that publishes them to Redis.

A ``save()`` only pays for copying the saved values and a ``put`` on a bounded queue:
it never waits on Redis, so a Redis outage cannot make it fail or hang. One daemon
thread per process drains the queue in batches, works out each event (for an
autocommit save: what changed, dropping a save that changed nothing), encodes it, and
sends each batch in one pipelined round trip over a persistent connection (no event
loop, no connection per event), through the transport
(:mod:`broadcast_app.transport.redis_transport`): Lua scripts (one call per run of a
model's events) that append each to the
model's stream (``XADD``: Redis assigns the id) and publish it on the model's
channel-layer group in the same atomic step, so ids increase in publish order across
every publishing process.

Events that cannot be published (queue full, Redis down or slower than
``BROADCAST_REDIS_TIMEOUT``) wait in the outage buffer (:mod:`.outage_buffer`), or
are logged and counted, never raised into user code. What
Redis has not taken when the process exits is written to the outbox table (see
:func:`.outbox_rows.spill_events`), from where a relay publishes it.

In ``outbox`` mode the outbox relay (:mod:`.relay`) sends through the same script with
:meth:`Publisher.send_now`, synchronously, with no thread or queue.

Inline transports (:attr:`Publisher.inline`: the in-memory ones
:mod:`broadcast_app.testing` installs, see :mod:`broadcast_app.transport.memory`) take
events in the thread that publishes them, at commit, before the queue.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any

from ..conf import conf
from ..events.change import Change, Saved, resolved
from ..events.wire import event_body, iso_time
from ..stats import stats
from ..transport.interface import Item, Once, PublishingTransport
from ..transport.redis_transport import RedisTransport
from ..transport.testenv import held_back
from .outage_buffer import OutageBuffer
from .throttle import Throttle

logger = logging.getLogger(__name__)

__all__ = ["captured", "capturing", "flush", "publish", "reset", "stats"]

#: a queued event: its model label and the change (or save, compared by the thread) with
#: its ``time.time()`` (encoded by the publisher thread), or an already encoded body
Queued = tuple[str, "tuple[Change | Saved, float] | str"]

_BATCH = 500
# Seconds the publisher thread waits, once a batch is written and nothing else is
# queued, before it reads Redis's replies, unless an event is queued meanwhile. The
# events are on their way by then; Redis answers this process first, then writes them
# to the instances, and a thread that reads the reply at once takes a core from the
# instance and its clients at the very moment they handle the event, which showed up as
# commit -> websocket latency on small machines. The delay is long enough to cover an
# instance's fan-out to tens of clients and short enough not to hold the next batch
# (the figures that chose it: docs/benchmark.md, "Where the time goes", Replies).
_REPLY_DELAY = 0.0005
#: a queue item that only wakes the thread up (a rate-limited event was held)
_WAKE: Any = ("", "")
_WARN_EVERY = 10.0  # seconds between two warnings of the same kind (no log flood)


class Publisher:
    """The per-process publisher thread and its queue."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        # A SimpleQueue: put() is one C call, a tenth of a Queue's in save(). The bound
        # (BROADCAST_QUEUE_SIZE) is checked against its size, and flush() waits for a
        # marker to come through instead of counting finished tasks.
        self._queue: queue.SimpleQueue[Queued | _Flush] = queue.SimpleQueue()
        #: producers waiting for room (bulk operations after their commit)
        self._room = threading.Condition()
        self._waiting_for_room = 0
        self._thread: threading.Thread | None = None
        #: where the events go (see transport/interface.py)
        self.transport: PublishingTransport = RedisTransport()
        self._last_warning: dict[str, float] = {}
        self._atexit_registered = False
        self._throttle = Throttle()
        #: transports that take each event in the thread that publishes it, at commit,
        #: rather than through the queue: in-memory ones, which never block
        #: (broadcast_app.testing installs them while it captures)
        self.inline: list[PublishingTransport] = []
        #: whether events still go to ``transport`` while an inline one is installed
        self.forward = True
        _publishers.add(self)

    # -- called from saving threads -------------------------------------------------

    def publish(self, changes: Iterable[Change | Saved], wait: bool = False) -> None:
        """Queue events for publication; never raises.

        Without ``wait`` it never blocks (a full queue drops and counts); bulk
        operations pass ``wait`` to block, at most ``BROADCAST_REDIS_TIMEOUT`` per event,
        for room in the queue after their transaction committed.
        """
        ts = time.time()  # the commit's time; formatted by the publisher thread
        ready: list[Queued] = []
        held = False
        for change in changes:
            # Only rate-limited models go through the throttle (and its lock).
            if change.config.max_rate:
                change = resolved(change)
                if not change.worth_publishing():
                    continue
                if not self._throttle.admit(change, ts):
                    held = True
                    continue
            ready.append((change.label, (change, ts)))
        self._emit(ready, wait)
        if held:
            self._wake()

    def _emit(self, queued: list[Queued], wait: bool) -> None:
        if not queued:
            return
        if self.inline:
            encoded = _encoded(queued)
            if self.captured(encoded):
                return
            queued = list(encoded)
        elif held_back():  # a user's tests: no thread, no Redis, no wait at exit
            return
        q = self._ensure_thread()
        limit = conf.BROADCAST_QUEUE_SIZE
        for item in queued:
            if q.qsize() >= limit and not (wait and self._wait_for_room(q, limit)):
                stats.incr("dropped")
                self._warn(
                    "full", "broadcast_app publish queue is full; dropping %s event", item[0]
                )
                continue
            q.put(item)  # counted as queued by the thread: no lock taken in save()

    def _wait_for_room(self, q: queue.SimpleQueue[Queued | _Flush], limit: int) -> bool:
        """Wait up to ``BROADCAST_REDIS_TIMEOUT`` until the queue has room."""
        deadline = time.monotonic() + conf.BROADCAST_REDIS_TIMEOUT
        with self._room:
            self._waiting_for_room += 1
            try:
                while q.qsize() >= limit:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    # The thread notifies after each batch it takes; the short wait
                    # covers a notification that came just before this one waited.
                    self._room.wait(min(remaining, 0.05))
            finally:
                self._waiting_for_room -= 1
        return True

    def captured(self, items: list[Item], once: list[Once] | None = None) -> bool:
        """Hand events to the inline transports, if any are installed; True if the
        events must then not go to ``transport`` (nor when tests run, see testenv)."""
        if not self.inline:
            return held_back()
        for transport in self.inline:
            transport.publish_batch(items, once)
        return not self.forward

    def _wake(self) -> None:
        # The thread may be blocked in get() without a timeout: have it recompute one.
        self._ensure_thread().put(_WAKE)

    def flush(self, timeout: float | None = None) -> bool:
        """Publish held (rate-limited) events now and wait until every queued event was
        sent (or failed). True if the queue drained."""
        self._emit(_queued(self._throttle.release(everything=True)), wait=True)
        if self._thread is None:
            return True  # nothing was ever queued in this process
        marker = _Flush()
        self._queue.put(marker)
        return marker.done.wait(timeout)

    def reset(self) -> None:
        """Forget Redis clients (settings changed); the thread reconnects lazily."""
        self.transport.reset()

    def close(self) -> None:
        """Close this publisher's Redis clients (an outbox relay that stops)."""
        self.transport.close()

    def _forked(self) -> None:
        # In a forked child the thread and its sockets did not survive.
        self._thread = None

    def _ensure_thread(self) -> queue.SimpleQueue[Queued | _Flush]:
        if self._thread is not None:
            return self._queue
        with self._lock:
            if self._pid != os.getpid() or self._thread is None:
                # New process (first use, or a fork): threads and sockets did not survive.
                self._pid = os.getpid()
                self._queue = queue.SimpleQueue()
                self.transport.reset()
                self._thread = threading.Thread(
                    target=self._run, args=(self._queue,), name="broadcast-publisher", daemon=True
                )
                self._thread.start()
                if not self._atexit_registered:
                    atexit.register(self._at_exit)
                    self._atexit_registered = True
        return self._queue

    def _at_exit(self) -> None:
        # Short-lived processes (manage.py shell, commands, workers) save and exit at once.
        if self._pid != os.getpid() or self.flush(conf.BROADCAST_FLUSH_TIMEOUT):
            return
        # Redis did not take them in time (down, hung, cut off): rather than lose them in
        # silence, the thread writes what it holds to the outbox table, and a relay
        # publishes it once Redis answers. Bounded too: a second BROADCAST_FLUSH_TIMEOUT.
        spill = _Spill()
        self._queue.put(spill)
        if not spill.done.wait(conf.BROADCAST_FLUSH_TIMEOUT):
            logger.error(
                "broadcast_app exited with events it could neither publish to Redis nor "
                "write to the outbox table within BROADCAST_FLUSH_TIMEOUT: they are lost"
            )

    # -- the publisher thread ---------------------------------------------------------

    def _run(self, q: queue.SimpleQueue[Queued | _Flush]) -> None:
        pending = OutageBuffer()
        flushes: list[_Flush] = []
        #: an item taken while waiting to read replies (see _REPLY_DELAY)
        early: list[Queued | _Flush] = []

        def pause() -> None:
            if early or not q.empty():
                return  # more to send: read the replies at once
            with contextlib.suppress(queue.Empty):
                early.append(q.get(timeout=_REPLY_DELAY))

        while True:
            timeout = self._throttle.next_due()
            due = pending.next_retry()
            if due is not None:
                timeout = due if timeout is None else min(timeout, due)
            # Between an event's commit and its write to Redis, this thread runs cold
            # (woken after milliseconds of idleness): what runs here is kept short.
            taken: list[Queued] = []
            spill: _Spill | None = None
            if early:
                item = early.pop()
            else:
                try:
                    item = q.get(timeout=timeout)
                except queue.Empty:
                    item = _WAKE
            while True:
                if isinstance(item, _Spill):
                    spill = item
                elif isinstance(item, _Flush):
                    flushes.append(item)
                elif item is not _WAKE:
                    taken.append(item)
                if len(taken) >= _BATCH or q.empty():  # only this thread takes items
                    break
                item = q.get_nowait()
            if self._waiting_for_room:
                with self._room:
                    self._room.notify_all()
            if self._throttle.active:
                released = self._throttle.release()
                if released:
                    self._emit(_queued(released), wait=False)
            # Encoded here, not in save(): the saving thread only pays for the hand-off.
            pending.add(_encoded(taken))
            if spill is not None:
                self._spill(pending, q, spill)
                for marker in flushes:
                    marker.done.set()
                return  # the process is exiting: nothing is sent after this
            pending.send(self.transport, pause)
            stats.incr("queued", len(taken))
            pending.trim(conf.BROADCAST_OUTAGE_BUFFER)
            if flushes and pending.empty():
                # Every event queued before these markers was sent or dropped.
                for marker in flushes:
                    marker.done.set()
                flushes = []

    def _spill(
        self, pending: OutageBuffer, q: queue.SimpleQueue[Queued | _Flush], spill: _Spill
    ) -> None:
        """Write every event still held, and every reset still owed, to the outbox."""
        from .outbox_rows import spill_events  # needed only at exit, with events left

        rest: list[Queued] = []
        with contextlib.suppress(queue.Empty):
            while True:  # saved by a daemon thread after the exit began
                item = q.get_nowait()
                if not isinstance(item, _Flush) and item is not _WAKE:
                    rest.append(item)
        events, lost = pending.held()
        events += _encoded(rest)
        lost |= self.transport.lost
        try:
            if events or lost:
                spill.written = spill_events(events, lost)
        except Exception:
            logger.exception(
                "broadcast_app could not write %d unpublished event(s) to the outbox: lost",
                len(events),
            )
        finally:
            spill.done.set()

    def send_now(self, batch: list[Item], once: list[Once]) -> tuple[int, int]:
        """Publish outbox events now, in order, in this thread; never raises.

        ``once[i]`` names where ``batch[i]`` is recorded as published: an event recorded
        there already is skipped. Returns how many of the first events were dealt with
        (published or skipped) and how many of those were skipped.
        """
        return self.transport.publish_batch(batch, once)

    def forget(self, keys: Iterable[tuple[str, str]]) -> None:
        """Delete outbox "already published" records, given as (model label, key) pairs
        (their rows are gone); never raises."""
        self.transport.forget(keys)

    def send_resets(self, labels: set[str], why: str) -> set[str]:
        """Tell every instance that events of ``labels`` were lost (the outbox relay, for
        resets a process owed when it exited); return those told. Never raises."""
        return self.transport.send_resets(labels, why)

    def _warn(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(kind, -_WARN_EVERY) >= _WARN_EVERY:
            self._last_warning[kind] = now
            logger.warning(message, *args)


_publishers: weakref.WeakSet[Publisher] = weakref.WeakSet()


def _after_fork() -> None:
    for publisher in _publishers:
        publisher._forked()


os.register_at_fork(after_in_child=_after_fork)


class _Flush:
    """A queue item that ``flush()`` waits for: set once every earlier event is out."""

    def __init__(self) -> None:
        self.done = threading.Event()


class _Spill(_Flush):
    """A queue item put at exit: the thread writes what it holds to the outbox and stops
    (``done`` once written, or once that failed)."""

    def __init__(self) -> None:
        super().__init__()
        #: events and resets written
        self.written = 0


def _queued(changes: list[tuple[Change, float]]) -> list[Queued]:
    return [(change.label, (change, ts)) for change, ts in changes]


def _encoded(items: list[Queued]) -> list[Item]:
    """Turn queued changes into event bodies; an event that cannot be encoded (a custom
    serializer returned something JSON cannot hold) is logged, counted and skipped."""
    origin = conf.BROADCAST_INSTANCE_ID
    encoded = []
    for label, payload in items:
        if isinstance(payload, str):
            encoded.append((label, payload))
            continue
        item, ts = payload
        try:
            change = resolved(item)
            if not change.worth_publishing():
                continue  # a save that changed no broadcast field
            encoded.append((label, event_body(change, iso_time(ts), origin)))
        except Exception:
            stats.incr("capture_errors")
            logger.exception("broadcast_app could not encode a %s event", label)
    return encoded


_publisher = Publisher()
captured = _publisher.captured


def capturing() -> bool:
    """Whether inline transports are installed (``broadcast_app.testing.capture_events``)."""
    return bool(_publisher.inline)


publish = _publisher.publish
flush = _publisher.flush
reset = _publisher.reset

"""The one owner of an instance's background work: it starts it, supervises it, stops it.

An instance (one ASGI process, one event loop) runs, beside the requests it serves:

- ``listener``: the subscription to the change stream, gap repair and probes
  (:meth:`.listener.Listener.run`, which restarts its own subscription on Redis errors);
- ``confirmation``: the watchdog that ends cache hits when probes stop coming back
  (:meth:`.listener.Listener.watch_confirmation`);
- ``heartbeat``: this instance's figures in Redis for the dashboard (:mod:`.heartbeat`);
- ``revalidate``: the periodic check of websocket users, only while a connection holds a
  subscription (started by :mod:`.access`, it ends by itself when none does);
- ``presence-*``: presence's sending, refreshing and notification tasks, started by
  :mod:`.presence_local` under this runtime when a connection first needs them;
- the outbox relay thread (``BROADCAST_OUTBOX_RELAY``; :class:`.relay.InProcessRelay`).

Every task runs under :meth:`InstanceRuntime.spawn`: one that raises (or, meant to run
forever, returns) is logged once with its traceback, counted (``task_restarts``) and
started again after a backoff that doubles from ``FIRST_DELAY`` up to ``MAX_DELAY``
and starts over once a run lasted ``HEALTHY`` seconds (:mod:`.backoff`). The relay
thread applies the same :class:`~.backoff.Backoff`. :meth:`InstanceRuntime.stop`
cancels and awaits every task, stops and joins the thread, and closes the per-loop
Redis clients (the logs' reader); each task closes its own clients (the listener's
channel layer, the heartbeat's client) as it is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial

from asgiref.sync import sync_to_async

from ..conf import conf
from ..stats import stats
from ..transport import outage_log_filter
from ..transport.backoff import FIRST_DELAY as _FIRST_DELAY
from ..transport.backoff import MAX_DELAY as _MAX_DELAY
from ..transport.backoff import Backoff
from ..transport.log_reader import event_log
from . import cache
from .figures import instance_figures
from .heartbeat import heartbeat
from .listener import listener
from .presence_local import local as presence

logger = logging.getLogger(__name__)

_STARTUP_WAIT = 5.0  # seconds start() waits for the subscription before returning
_STOP_WAIT = 5.0  # seconds stop() waits for the tasks to close their connections

Job = Callable[[], Awaitable[None]]


class InstanceRuntime:
    """Starts, supervises and stops the background work of this process's event loop."""

    def __init__(self, first_delay: float = _FIRST_DELAY, max_delay: float = _MAX_DELAY):
        self.first_delay, self.max_delay = first_delay, max_delay
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: whether start() ran in this loop since the last stop()
        self.started = False

    # -- tasks ------------------------------------------------------------------------

    def running(self, name: str) -> bool:
        """Whether the task ``name`` runs (or waits to be restarted) in this loop."""
        task = self._tasks.get(name)
        return task is not None and not task.done()

    def task(self, name: str) -> asyncio.Task[None] | None:
        """The supervising task of ``name``, if one was started in this loop."""
        return self._tasks.get(name)

    def spawn(self, name: str, job: Job, forever: bool = True) -> asyncio.Task[None]:
        """Run ``job()`` as the task ``name`` unless it runs already, restarting it with
        backoff when it fails; one that is not ``forever`` may end by returning."""
        loop = asyncio.get_running_loop()
        task = self._tasks.get(name)
        # (One of another loop died with it, or runs there: this loop needs its own.)
        if task is None or task.done() or task.get_loop() is not loop:
            coro = self._supervise(name, job, forever)
            task = self._tasks[name] = loop.create_task(coro, name=f"broadcast-{name}")
        return task

    async def _supervise(self, name: str, job: Job, forever: bool) -> None:
        backoff = Backoff(self.first_delay, self.max_delay)
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            try:
                await job()
            except Exception:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    # Cancelled while a call's own timeout expired (asyncio.timeout's
                    # documented race): a stop, not a failure.
                    raise asyncio.CancelledError from None
                delay = backoff.after(loop.time() - began)
                stats.incr("task_restarts")
                logger.exception(
                    "broadcast_app background task %r failed; restarting in %.1fs", name, delay
                )
            else:
                if not forever:
                    return
                delay = backoff.after(loop.time() - began)
                stats.incr("task_restarts")
                logger.error(
                    "broadcast_app background task %r ended; restarting in %.1fs", name, delay
                )
            await asyncio.sleep(delay)

    async def cancel(self, name: str) -> None:
        """Cancel the task ``name`` and wait (boundedly) for it to clean up."""
        task = self._tasks.pop(name, None)
        # A task of a previous loop died with it.
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            await _cancel(task)

    def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        # A new loop (tests, or a server restarted in-process): the tasks of the old
        # one died with it, and locks and events belong to one loop.
        self._loop, self._tasks, self.started = loop, {}, False
        self._lock = asyncio.Lock()
        listener.bind(self)
        heartbeat.bind()
        presence.attach(self)  # its tasks start when a connection first needs them

    # -- the instance -----------------------------------------------------------------

    async def ensure_started(self) -> None:
        """Start unless started in this loop (cheap when it is: a lazy start per request)."""
        if self.started and self._loop is asyncio.get_running_loop():
            return
        await self.start(wait=False)

    async def start(self, wait: bool = True) -> None:
        """Start the instance's tasks (those not running); with ``wait``, return once the
        listener is subscribed (or after a few seconds)."""
        self._bind()
        assert self._lock is not None
        outage_log_filter.install()
        async with self._lock:
            self.spawn("listener", listener.run)
            self.spawn("confirmation", listener.watch_confirmation)
            # The dashboard lists instances by their heartbeats: one beside each listener.
            if not self.running("heartbeat"):
                heartbeat.sent.clear()
                self.spawn("heartbeat", partial(heartbeat.run, instance_figures))
            # In best_effort mode too: processes that exited while Redis was unreachable
            # left their events in the outbox table.
            if conf.BROADCAST_OUTBOX_RELAY:
                from ..publish.relay import in_process  # its models need the app registry

                in_process.start()
            self.started = True
        if wait:
            try:
                await asyncio.wait_for(listener.subscribed.wait(), _STARTUP_WAIT)
            except TimeoutError:
                logger.warning("broadcast_app listener is not subscribed yet; retrying")

    async def stop(self) -> None:
        """Cancel and await every task, stop the relay thread, close per-loop clients."""
        self.started = False
        loop = asyncio.get_running_loop()
        ours = [task for task in self._tasks.values() if task.get_loop() is loop]
        self._tasks = {n: t for n, t in self._tasks.items() if t.get_loop() is not loop}
        await asyncio.gather(*(_cancel(task) for task in ours))
        # Not subscribed any more: a start() in this loop waits for the new subscription
        # (the old flag let it return before the new listener had subscribed, and an
        # event published then was taken for one older than the listener).
        listener.subscribed.clear()
        from ..publish.relay import in_process

        if in_process.running:
            await sync_to_async(in_process.stop, thread_sensitive=False)()
        await event_log.close()
        # No listener keeps the cache current any more: as in a process without one.
        cache.serve_hits_until(None)


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it, within ``_STOP_WAIT``.

    A cancellation that lands while a Redis call's own timeout expires can come out as
    TimeoutError (asyncio.timeout's documented race) and be handled as a Redis error:
    cancel again until the task is really done, rather than wait for it forever.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _STOP_WAIT
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            logger.warning(
                "broadcast_app task %s did not stop within %.0fs", task.get_name(), _STOP_WAIT
            )
            return
        task.cancel()
        await asyncio.wait({task}, timeout=min(0.5, remaining))
    if not task.cancelled() and task.exception() is not None:
        logger.debug("broadcast_app task %s ended with an error", task.get_name())


runtime = InstanceRuntime()

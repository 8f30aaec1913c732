"""The per-instance listener: one subscription to the change stream, local fan-out.

Each ASGI process runs one listener task in its event loop. It joins every registered
model's group on a channel layer of its own (so closing it never disturbs the project's
consumers) and, for each event: updates the broadcast cache, sends ``change_received``,
then hands the frame to this instance's subscribed websocket clients. Websocket
consumers never join layer groups themselves: per-consumer groups collapse at a few
hundred clients, one subscription plus direct local push does not.

A subscription can go quiet without an error (a network partition), so the listener
also confirms that it receives, with probes (see :mod:`.probe`): its cache serves hits
only while they come back; when they stop for ``BROADCAST_CONFIRM_TIMEOUT`` it sends
``reset`` (reason ``disconnected``) to its subscribers and reports itself as not
listening, and the first fresh probe back repairs what was missed from the log before
hits resume.
"""

from __future__ import annotations

import asyncio
import json
import logging
from functools import partial
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from channels.layers import channel_layers

from ..conf import conf
from ..events.model_configs import ModelConfig, all_configs, get_config
from ..events.wire import frame_head, split_hidden
from ..signals import change_received
from ..stats import stats
from ..transport import cluster, fast_path
from ..transport.messages import events_of, is_event_message
from ..transport.routes import MESSAGE_TYPE, RESET_TYPE, group_name
from . import cache
from .continuity import Continuity, not_after
from .feed import feed
from .hub import hub
from .probe import DISCONNECTED, PROBE_TYPE, Probes

if TYPE_CHECKING:
    from .runtime import InstanceRuntime

logger = logging.getLogger(__name__)

_RETRY_MIN, _RETRY_MAX = 0.2, 5.0


class Listener:
    """The instance's subscription and what it does with each event; its tasks are run
    by the instance runtime (:mod:`.runtime`)."""

    def __init__(self) -> None:
        self.subscribed = asyncio.Event()
        self.continuity = Continuity()
        self._order = asyncio.Lock()
        #: an event was processed directly in this turn of the loop (see transport/fast_path.py)
        self._turn_taken = False
        self.probes = Probes()
        #: the runtime that runs this listener's tasks, once it started in a loop
        self._owner: InstanceRuntime | None = None

    def bind(self, owner: InstanceRuntime) -> None:
        """Start over in a new event loop, run by ``owner`` (the runtime calls it):
        locks and events belong to one loop."""
        self._owner = owner
        self._order = asyncio.Lock()
        self.subscribed = asyncio.Event()

    @property
    def running(self) -> bool:
        """Whether the listener task runs (or waits to be restarted) in this loop.

        The runtime (:mod:`.runtime`) starts and stops it: ``runtime.start()``,
        ``runtime.stop()``, ``runtime.ensure_started()``.
        """
        return self._owner is not None and self._owner.running("listener")

    async def run(self) -> None:
        """Subscribe, process events, and subscribe again when the subscription fails or
        goes deaf, until cancelled (the runtime's ``listener`` task)."""
        delay = _RETRY_MIN
        loop = asyncio.get_running_loop()
        # A (re)started listener follows the logs from their current ends; only its
        # own resubscriptions below repair what was published in between.
        self.continuity = Continuity()
        self._lapsed()
        resubscribing = False
        while True:
            layer = _make_layer()
            tasks: list[asyncio.Task[None]] = []
            try:
                labels = [config.label for config in all_configs()]
                await self.continuity.prime(labels)
                channel = await layer.new_channel("broadcast-listener.")
                fast_path.install(layer, channel, partial(self.handle_now, layer))
                for label in labels:
                    await layer.group_add(group_name(label), channel)
                probes = self.probes.groups(labels)
                for group in probes:
                    await layer.group_add(group, channel)
                logger.info("broadcast_app listener subscribed to %d model(s)", len(labels))
                if resubscribing:
                    # What was published while the listener was deaf is in the log.
                    await self._repair(labels)
                resubscribing = True
                delay = _RETRY_MIN
                tasks = [
                    loop.create_task(self._pump(layer, channel)),
                    loop.create_task(self._watch()),
                    loop.create_task(self.probes.send(layer, probes)),
                ]
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # an error of either: handled below
                raise _Deaf("its subscription stopped delivering events")
            except asyncio.CancelledError:
                await _stop(*tasks)
                await _close(layer)
                raise
            except Exception as exc:
                self.subscribed.clear()
                stats.incr("listener_errors")
                logger.warning(
                    "broadcast_app listener lost Redis (%s); resubscribing in %.1fs",
                    exc,
                    delay,
                )
                await _stop(*tasks)
                await _close(layer)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)

    # -- confirming that events arrive (see probe.py) ----------------------------------

    async def _probed(self, message: dict[str, Any]) -> None:
        """A probe came back: every event published before it was sent has arrived."""
        until = self.probes.confirms(message)
        if until is None:
            return
        if not self.probes.receiving:
            # What was missed meanwhile comes from the log before any hit is served.
            await self._repair([config.label for config in all_configs()])
            self.probes.receiving = True
            logger.info("broadcast_app listener confirmed that it receives from Redis")
        self.subscribed.set()  # also after a resubscription (which repaired already)
        self.probes.until = until
        cache.serve_hits_until(until)

    async def watch_confirmation(self) -> None:
        """Tell subscribers, once, when confirmation lapses (the runtime's
        ``confirmation`` task)."""
        while True:
            await asyncio.sleep(self.probes.next_check())
            if self.probes.lapsed():
                stats.incr("disconnections")
                logger.warning(
                    "broadcast_app listener cannot confirm that it receives from Redis "
                    "(no probe back within %.1fs): cache bypassed, subscribers reset",
                    conf.BROADCAST_CONFIRM_TIMEOUT,
                )
                self._lapsed()
                for config in all_configs():
                    hub.reset(config.label, DISCONNECTED)

    def confirmed(self) -> bool:
        """Whether this instance knows, within the bound, that events arrive."""
        return self.probes.receiving and not self.probes.lapsed()

    def _lapsed(self) -> None:
        self.probes.receiving = False
        self.subscribed.clear()
        cache.serve_hits_until(0.0)

    async def _pump(self, layer: Any, channel: str) -> None:
        while True:
            message = await layer.receive(channel)
            if is_event_message(message):
                # One event, or several of a model in one message (see transport/messages.py).
                for frame, prev in events_of(message):
                    await self.handle(frame, prev)
                    # Let the connections' writers run between two events: a burst (a bulk
                    # update) would otherwise fill every send queue before a frame goes out.
                    await asyncio.sleep(0)
            elif message.get("type") == RESET_TYPE:
                async with self._order:
                    self.continuity.reset(str(message["model"]), "lost")
            elif message.get("type") == PROBE_TYPE:
                await self._probed(message)

    async def _watch(self) -> None:
        """Poll the logs for events this instance never received; repair the gap, then
        return, so that the listener subscribes again.

        A gap that no later event exposes (the last events before a quiet spell were
        published while the layer was reconnecting) shows up here. And an event that
        sat in the log for a whole interval unseen means the subscription itself went
        deaf: channels-redis' pub/sub layer does not always resubscribe after Redis
        restarts or fails over, and never says so.
        """
        while True:
            await asyncio.sleep(conf.BROADCAST_RECOVERY_INTERVAL)
            stale = await self.continuity.stale_labels()
            if stale:
                await self._repair(stale)
                return

    async def _repair(self, labels: list[str]) -> None:
        """Process, in order, the logged events of ``labels`` not processed yet."""
        for label in labels:
            async with self._order:
                for _event_id, frame in await self.continuity.missed(label) or ():
                    await self._process(frame)

    async def handle(self, frame: str, prev: str | None = None) -> None:
        """Process one event frame (and, first, any events a gap before it hid)."""
        async with self._order:
            frame, hidden = split_hidden(frame)
            try:
                event: dict[str, Any] = json.loads(frame)
                label = get_config(event["model"]).label
            except Exception:
                stats.incr("bad_events")
                logger.warning("broadcast_app listener ignored a malformed event")
                return
            last = self.continuity.last.get(label)
            # Usually ``prev`` is the last event processed: this one is simply next.
            if last is not None and prev != last:
                if not_after(event["id"], last):
                    return  # already processed, from the log
                if prev is not None:
                    for _event_id, missed in (
                        await self.continuity.missed(label, upto=event["id"]) or ()
                    ):
                        await self._process(missed)
            await self._process(frame, event, hidden)

    def handle_now(self, layer: Any, data: Any) -> bool:
        """Process one raw layer message at once, in the layer's reader task, if nothing
        is in the way: the listener is idle, the event is the next one of its model, the
        cache is in memory, no ``change_received`` receiver waits, and no other event
        was processed this way in this turn of the loop. True if it was processed."""
        if self._turn_taken or self._order.locked() or not _nothing_waits():
            return False
        try:
            message = layer.deserialize(data)
            # Several events (broadcast.events) go the ordinary way, the loop running
            # between two of them.
            if message.get("type") != MESSAGE_TYPE:
                return False
            (frame, hidden), prev = split_hidden(message["frame"]), message.get("prev")
            # Clients only need the frame routed: the rest is parsed once they have it.
            event: dict[str, Any] = frame_head(frame) or json.loads(frame)
            config = get_config(event["model"])
            if config.object_check is not None and "data" not in event:
                event = json.loads(frame)  # the check reads the data
        except Exception:
            return False  # the ordinary path deals with it (and counts it)
        if prev is None or prev != self.continuity.last.get(config.label):
            return False  # a first event, or a gap to repair: the ordinary path
        self._turn_taken = True
        try:
            self._process_now(frame, event, config, hidden)
        except Exception:  # never into channels-redis' reader, which would pause
            logger.exception("broadcast_app listener failed on a %s event", config.label)
        asyncio.get_running_loop().call_soon(self._next_turn)
        stats.incr("received_direct")
        return True

    def _next_turn(self) -> None:
        self._turn_taken = False

    async def _process(
        self, frame: str, event: dict[str, Any] | None = None, hidden: str | None = None
    ) -> None:
        """Cache, ``change_received``, local clients, for one event in order (``hidden``:
        what the frame carried for filtered subscriptions only, see events/filters.py)."""
        if event is None:
            event = json.loads(frame)
        config = get_config(event["model"])
        if _nothing_waits():
            self._process_now(frame, event, config, hidden)
            return
        self.continuity.last[config.label] = event["id"]
        hub.last_ids[config.label] = event["id"]
        # Receivers, and a cache on another thread, let this loop serve requests
        # meanwhile: they go first, so a client told of the change finds the cache (and
        # what receivers dropped) current.
        if cache.is_in_memory():
            _apply(config, event)
        else:
            await sync_to_async(_apply, thread_sensitive=False)(config, event)
        if change_received.receivers:
            try:
                await change_received.asend(sender=config.model, event=event)
            except Exception:
                logger.exception("a change_received receiver failed for %s", config.label)
        _recorded(event, hub.deliver(frame, event, hidden))

    def _process_now(
        self, frame: str, event: dict[str, Any], config: ModelConfig, hidden: str | None = None
    ) -> None:
        """``_process`` with an in-memory cache and no receivers: nothing waits.

        ``event`` may be only the frame's head (see ``events.frame_head``): enough to
        route it; the whole event is parsed after the clients have their frames.
        """
        self.continuity.last[config.label] = event["id"]
        hub.last_ids[config.label] = event["id"]
        # Clients first (their frames are written as they are handed over), then the
        # cache: this loop runs nothing else until this method returns, so no request
        # can read the cache in between.
        delivered = hub.deliver(frame, event, hidden)
        if "data" not in event:
            event = json.loads(frame)
        _apply(config, event)
        _recorded(event, delivered)


def _nothing_waits() -> bool:
    """Whether processing an event needs no await: an in-memory cache and no
    ``change_received`` receiver."""
    return not change_received.receivers and cache.is_in_memory()


def _recorded(event: dict[str, Any], delivered: int) -> None:
    feed.record(event)  # the dashboard's feed and lag: metadata only, bounded
    stats.incr("received")
    stats.incr("delivered", delivered)


def _apply(config: ModelConfig, event: dict[str, Any]) -> None:
    try:
        cache.apply_event(event)
    except Exception:
        stats.incr("cache_errors")
        logger.exception("broadcast_app could not update the cache for %s", config.label)


class _Deaf(Exception):
    """The listener's subscription missed events: subscribe again."""


async def _stop(*tasks: asyncio.Task[None]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _close(layer: Any) -> None:
    try:
        await layer.flush()
    except Exception:  # closing a broken connection may fail too; nothing to save
        logger.debug("broadcast_app listener: error while closing the layer", exc_info=True)


def _make_layer() -> Any:
    """A layer of the listener's own: the channel layer's, or on a Redis Cluster
    (which channels-redis does not support) sharded pub/sub through redis-py."""
    if cluster.enabled():
        from ..transport.cluster_layer import ClusterLayer

        return ClusterLayer()
    return channel_layers.make_backend(conf.BROADCAST_CHANNEL_LAYER)


listener = Listener()

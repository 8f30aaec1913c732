"""The websocket endpoint (``/ws/broadcast/``) speaking the protocol of docs/protocol.md.

Every frame a client sends gets an answer or an ``error`` frame; a bad frame never
closes the connection and never logs a traceback. Whatever ends a connection (a close,
an exception, a cancellation), it is forgotten everywhere: hub, send queue, counters.
What a subscription gets before its live events (the replay after its ``since``, a
``reset``, a snapshot) is :mod:`.replays`. All outgoing frames, replies and events
alike, go through one :class:`~.sender.Sender` per connection, so they keep
their order and a client that falls behind cannot hold up the listener or grow this
process's memory: when ``BROADCAST_SEND_QUEUE_SIZE`` frames are waiting, its queued
events are dropped and each of its subscriptions gets ``reset`` instead; a client that
takes no data for ``BROADCAST_SEND_TIMEOUT`` seconds has stopped reading and is closed
with code 4008.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from collections.abc import Set as AbstractSet
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qs

from channels.exceptions import DenyConnection
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.contrib.auth.models import AnonymousUser

from ..conf import conf
from ..events.filters import held_keys, naming
from ..events.frames import ProtocolError, parse_frame
from ..events.model_configs import get_config
from ..events.socket_ids import bind
from ..instance.hub import hub
from ..instance.runtime import runtime
from ..stats import stats
from ..upstream import channels_consumer as one_task
from ..upstream.asgi import server_send
from . import access, presence_protocol, replays, session_auth, snapshots
from .access import session_key
from .floors import Floors, Key
from .limits import FrameBucket, ResumeBucket
from .sender import Sender
from .targets import target

logger = logging.getLogger(__name__)

#: close code sent to a client that stopped reading
CLOSE_SLOW_CLIENT = 4008
#: how every event frame starts (the publish script writes it so)
_CHANGE_PREFIX = '{"type":"change"'
_RESET_PREFIX = '{"type":"reset"'


class BroadcastConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    """One browser connection: its subscriptions, permission checks and send queue."""

    # The listener pushes to us directly; a per-connection layer channel would cost a
    # Redis SUBSCRIBE per client and leave state behind when many close at once.
    channel_layer_alias = "__broadcast_app_no_layer__"

    subscriptions: set[tuple[str, str | None]]
    sender: Sender
    #: the handshake's user, and the key of the session it was read from: from
    #: channels' ``scope["user"]`` and ``scope["session"]``, else (behind
    #: BroadcastEndpoint, which checked the Origin) read from the session cookie
    user: Any
    session_key: str | None
    #: set by BroadcastEndpoint (endpoint.py): the handshake's Origin was checked
    origin_checked = False
    #: channels' default is a new empty list per connection
    groups: tuple[str, ...] = ()
    #: the user's permissions asked so far; replaced, not mutated (see access.py), so
    #: that connections of one session share what one check found
    permissions: Mapping[str, bool] = MappingProxyType({})
    #: labels whose permission was lost (their events still queued are dropped);
    #: replaced, not mutated, on the rare loss, so that connections share the empty one
    forbidden: AbstractSet[str] = frozenset()
    #: subscriptions whose log is being read, with the live events held meanwhile
    #: (None once more arrived than the send queue holds: a reset replaces them); None
    #: while no log is being read (see :meth:`hold`)
    resuming: dict[Key, list[tuple[str, dict[str, Any]]] | None] | None = None
    #: this connection's resume allowance (made at its first resume)
    resumes: ResumeBucket | None = None
    #: counted in ``connections_opened`` and not yet in ``connections_closed``
    counted = False
    #: an unexpected exception was logged with its traceback (once per connection)
    failed = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Run the connection; however it ends, forget it everywhere.

        channels calls ``disconnect`` only for a ``websocket.disconnect`` message, not
        when a handler raises or the task is cancelled: this covers those ways out too.
        """
        try:
            # Without a layer (unless a subclass names one), the client's messages are
            # awaited in this task: channels' own __call__ would hold a task and a wait
            # of its own for each idle connection (see upstream/channels_consumer.py).
            if get_channel_layer(self.channel_layer_alias) is None and one_task.available(
                BroadcastConsumer
            ):
                await one_task.run_in_one_task(self, scope, receive, send)
            else:
                await super().__call__(scope, receive, send)
        finally:
            await self._cleanup()

    async def connect(self) -> None:
        await runtime.ensure_started()
        self.subscriptions = set()
        #: what subscriptions' replays, resets and snapshots covered (see floors.py)
        self.floors = Floors()
        self.closing = False
        if self.origin_checked and "user" not in self.scope:
            try:
                self.session_key, self.user = await session_auth.authenticate(self.scope)
            except Exception as exc:
                # A session store or database that is down: refuse this handshake (the
                # client retries) and say why, without a traceback per client.
                logger.warning("broadcast_app could not authenticate a websocket: %r", exc)
                raise DenyConnection from exc
        else:
            self.user = self.scope.get("user") or AnonymousUser()
            self.session_key = session_key(self.scope)
        # The page's own id for this socket (broadcast.js sends ?socket_id=...), which
        # its HTTP requests repeat in X-Socket-ID to be spared their own echo; bound to
        # the session, as SocketIdMiddleware binds the header (see events/socket_ids.py).
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        self.socket_id = bind(self.session_key, (query.get("socket_id") or [None])[0])
        self.checked_at = access.now()  # the handshake read the user (see access.py)
        self.frames = FrameBucket()
        await self.accept()
        # Straight to the server's send: AsyncWebsocketConsumer.send only builds the
        # message, and it runs for every frame of every client (past the session
        # middleware too, where upstream.asgi allows it).
        self.sender = Sender(
            server_send(self.base_send),
            conf.BROADCAST_SEND_QUEUE_SIZE,
            conf.BROADCAST_SEND_TIMEOUT,
            self._stopped_reading,
        )
        stats.incr("connections_opened")
        self.counted = True

    async def disconnect(self, code: int) -> None:
        await self._cleanup()

    async def _cleanup(self) -> None:
        """Unregister this connection (idempotent: a close and ``__call__`` both call it)."""
        self.closing = True
        self._unsubscribe_all()
        self.resuming = None
        self.floors.clear()
        if self.counted:
            self.counted = False
            stats.incr("connections_closed")
        sender = getattr(self, "sender", None)
        if sender is not None:
            await sender.close()

    # -- outgoing ---------------------------------------------------------------------

    async def _stopped_reading(self) -> None:
        # The server's write buffer is full and the client took nothing for
        # BROADCAST_SEND_TIMEOUT: it stopped reading (a frozen tab, a dead network).
        self.closing = True
        self._unsubscribe_all()
        stats.incr("slow_clients_closed")
        logger.warning("broadcast_app closed a websocket client that stopped reading")
        await self.close(code=CLOSE_SLOW_CLIENT)

    def enqueue(self, frame: str) -> None:
        """Send a frame to this client; if it fell behind, reset it instead."""
        if self.closing:
            return
        if not self.sender.put(frame):
            self._refused(frame)

    def _refused(self, frame: str) -> None:
        """The send queue is full: trade its events for resets, keep a reply."""
        self._overflow()
        if not frame.startswith(_CHANGE_PREFIX):
            self.enqueue(frame)  # a reply still goes out; events are covered by resets

    def _overflow(self) -> None:
        """Trade the queued events for one ``reset`` per subscription."""
        stats.incr("slow_client_resets")
        # Replies (subscribed, pong, error) are few and awaited: keep them, in order.
        # Earlier resets go too: the ones below supersede them.
        queue = self.sender.queue
        kept = [f for f in queue if not f.startswith((_CHANGE_PREFIX, _RESET_PREFIX))]
        queue.clear()
        queue.extend(kept)
        for label, pk in sorted(self.subscriptions, key=lambda key: (key[0], key[1] or "")):
            self.reset(label, pk, "overflow")

    def reply(self, message: dict[str, Any]) -> None:
        # allow_nan=False: parse_frame refuses what would need it (a ``ref`` of NaN).
        self.enqueue(json.dumps(message, separators=(",", ":"), allow_nan=False))

    def reset(self, label: str, pk: str | None, reason: str) -> None:
        """Tell the client its subscription missed events it cannot get back."""
        stats.incr("resets")
        self.reply({"type": "reset", "model": label, **naming(pk), "reason": reason})

    def deliver(self, frame: str, event: dict[str, Any]) -> None:
        """Called by the hub for each event this connection subscribed to."""
        if self.floors and self.floors.covered(held_keys(event), self.subscriptions, event["id"]):
            return
        if self.resuming:
            for key in held_keys(event):
                if key in self.resuming:
                    held = self.resuming[key]
                    if held is not None and len(held) < self.sender.limit:
                        held.append((frame, event))
                    else:
                        self.resuming[key] = None
                    return
        self.send_event(frame, event)

    def hold(self, key: Key) -> None:
        """Hold ``key``'s live events back while its log is read (see replays.py)."""
        if self.resuming is None:
            self.resuming = {}
        self.resuming.setdefault(key, [])

    def holding(self, key: Key) -> bool:
        """Whether ``key``'s live events are held (not yet too many for the queue)."""
        return self.resuming is not None and self.resuming.get(key) is not None

    def release(self, key: Key) -> list[tuple[str, dict[str, Any]]] | None:
        """Stop holding ``key``'s live events; those held (None: more than the queue holds)."""
        if self.resuming is None:
            return []
        held = self.resuming.pop(key, [])
        if not self.resuming:
            self.resuming = None  # (an emptied dict keeps the table it grew)
        return held

    def send_event(self, frame: str, event: dict[str, Any]) -> None:
        """Send an event to this client, unless it is its own echo or one it may not see."""
        if event.get("to_others") and self.socket_id and event.get("socket_id") == self.socket_id:
            return
        if self.forbidden and event["model"] in self.forbidden:
            return  # (a replay or held events of a subscription revoked meanwhile)
        config = get_config(event["model"])
        if config.object_check is not None:
            checked = access.visible_frame(config, self.user, frame, event)
            if checked is None:
                return
            frame = checked
        # enqueue's own steps, here: this runs for every event and subscriber
        if not self.closing and not self.sender.put(frame):
            self._refused(frame)

    # -- incoming ---------------------------------------------------------------------

    async def dispatch(self, message: dict[str, Any]) -> None:
        """channels' dispatch, less its thread hop per frame to close old database
        connections: the one thread it hops to is shared by every connection (a
        client sending many frames held up everyone's), the hop leaves its context
        variables in the connection's context (see contexts.py), and our handlers
        reach the database only through ``database_sync_to_async``, which closes them
        itself."""
        kind = message.get("type")
        if kind == "websocket.receive":
            await self.websocket_receive(message)
        elif kind == "websocket.connect":
            await self.websocket_connect(message)
        else:
            await super().dispatch(message)

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        """Pass a frame to ``receive`` (one without text is a binary frame, whatever
        else the message holds)."""
        await self.receive(text_data=message.get("text"), bytes_data=message.get("bytes"))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Handle one frame; every way it can fail ends in an ``error`` frame."""
        ref = None
        try:
            if not self.frames.take():
                raise ProtocolError(
                    "rate_limited",
                    f"At most {conf.BROADCAST_FRAME_BURST} frames at once, then "
                    f"{conf.BROADCAST_FRAME_RATE:g} per second.",
                )
            if not isinstance(text_data, str):
                raise ProtocolError("bad_request", "Only JSON text frames are accepted.")
            limit = conf.BROADCAST_MAX_FRAME_BYTES
            if len(text_data) > limit or len(text_data.encode(errors="surrogatepass")) > limit:
                raise ProtocolError("too_large", f"Frames are limited to {limit} bytes.")
            message = parse_frame(text_data)
            ref = message.get("ref")
            kind = message.get("type")
            handler = self.handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise ProtocolError(
                    "bad_request",
                    "Unknown 'type'; expected subscribe, unsubscribe, ping, presence.join "
                    "or presence.leave.",
                )
            await handler(self, message)
        except ProtocolError as error:
            stats.incr("client_errors")
            self.reply({"type": "error", "code": error.code, "detail": error.detail, "ref": ref})
        except Exception:
            # A bug (ours, or a hook's such as object_check): the client is told no more,
            # and keeps its connection; a traceback per connection is enough to find it.
            stats.incr("internal_errors")
            if not self.failed:
                self.failed = True
                logger.exception("broadcast_app failed on a websocket frame")
            detail = "The server failed on this frame."
            self.reply({"type": "error", "code": "internal", "detail": detail, "ref": ref})

    async def on_ping(self, message: dict[str, Any]) -> None:
        """``ping`` → ``pong`` (keepalive)."""
        self.reply({"type": "pong"})

    async def on_subscribe(self, message: dict[str, Any]) -> None:
        """Check permissions, then deliver a model's, an object's or a filter's events.

        Order on the wire: ``subscribed``; the events after ``since`` from the log, or a
        ``reset``, or the ``snapshot`` asked for (see snapshots.py); then live events.
        Live events arriving meanwhile are held back, those already carried not sent twice.
        """
        config, pk = target(message)
        key = (config.label, pk)
        since = message.get("since")
        request = snapshots.requested(config, message)
        if key not in self.subscriptions:
            if len(self.subscriptions) >= conf.BROADCAST_MAX_SUBSCRIPTIONS:
                raise ProtocolError(
                    "too_many_subscriptions",
                    f"At most {conf.BROADCAST_MAX_SUBSCRIPTIONS} subscriptions per connection.",
                )
            await access.authorize(self, config, pk)
            if self.closing:
                return
            self.subscriptions.add(key)
            hub.add(self, config.label, pk)
        await replays.follow(self, config, pk, since, message.get("ref"), request)
        presence_protocol.subscribed(self, config.label, pk)

    async def on_unsubscribe(self, message: dict[str, Any]) -> None:
        """Stop delivering a model's or an object's events (silently, if not subscribed)."""
        config, pk = target(message)
        self.subscriptions.discard((config.label, pk))
        self.floors.discard((config.label, pk))
        hub.remove(self, config.label, pk)
        presence_protocol.unsubscribed(self, config.label, pk)

    handlers: dict[str, Callable[[BroadcastConsumer, dict[str, Any]], Awaitable[None]]] = {
        "ping": on_ping,
        "subscribe": on_subscribe,
        "unsubscribe": on_unsubscribe,
        **presence_protocol.HANDLERS,
    }

    # -- revocation (see access.py) ---------------------------------------------------

    async def revoke(self) -> None:
        """Close the connection: its user is no longer authenticated."""
        self.closing = True
        self._unsubscribe_all()
        await self.close(code=access.CLOSE_REVOKED)

    def forbid(self, label: str, pk: str | None) -> None:
        """Drop a subscription whose permission the user lost, telling the client."""
        self.forbidden = self.forbidden | {label}
        self.subscriptions.discard((label, pk))
        hub.remove(self, label, pk)
        presence_protocol.unsubscribed(self, label, pk)
        self.reply(
            {
                "type": "error",
                "code": "forbidden",
                "detail": f"You may no longer see {label}.",
                "model": label,
                **naming(pk),
                "ref": None,
            }
        )

    def _unsubscribe_all(self) -> None:
        for label, pk in getattr(self, "subscriptions", ()):
            hub.remove(self, label, pk)
        self.subscriptions = set()
        presence_protocol.forget(self)  # (a close, a revocation, a client that stopped reading)

"""What broadcast_app assumes of channels-redis' pub/sub layer beyond its documented
channel-layer API (``new_channel``, ``group_add``, ``group_send``, ``receive``).

- **Routing, naming, framing** (fast path ``script_publish``): the publish script writes
  each event to the layer's group channel itself, in the same atomic step that gives it
  its id, so ids increase in publish order across every publishing process. That needs
  the group's Redis channel name (``<prefix>__group__<group>``), the host the layer picks
  for it (a CRC of the name over the hosts) and the bytes its serializer reads (plain
  msgpack or JSON). Public path: the script only logs the event, and the publisher
  sends it with the layer's ``group_send`` (see :class:`LayerSender`); two processes
  publishing the same model at once may then deliver out of id order, which listeners
  repair from the log as for any gap.
- **Per-channel queues** (fast path ``direct_queue``): the layer keeps an
  ``asyncio.Queue`` per channel in ``channels`` and its reader ``put_nowait``\\ s each
  message's raw bytes there (see :mod:`broadcast_app.transport.fast_path`). Public path:
  ``receive()``.
- **The outage log's logger** is the layer module's (``channels_redis.pubsub``); if it
  moved, the outage tracebacks are simply not shortened (see
  :mod:`broadcast_app.transport.outage_log_filter`).
"""

from __future__ import annotations

import asyncio
import binascii
import json
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

from . import enabled

logger = logging.getLogger(__name__)

#: the channels-redis logger whose outage records broadcast_app shortens
PUBSUB_LOGGER = "channels_redis.pubsub"


def consistent_hash(value: str, ring_size: int) -> int:
    """The host index channels-redis gives a channel name (its ``_consistent_hash``:
    CRC32 of the name, 12 bits, spread over the hosts)."""
    if ring_size == 1:
        return 0
    big = binascii.crc32(value.encode("utf8")) & 0xFFF
    return int(big / (4096 / float(ring_size)))


def group_channel(prefix: str, group: str) -> str:
    """The Redis channel the pub/sub layer uses for ``group``."""
    return f"{prefix}__group__{group}"


def decode_hosts(hosts: Any) -> list[dict[str, Any]]:
    """The layer's ``hosts`` as connection kwargs, as channels-redis reads them."""
    from channels_redis.utils import decode_hosts as decode

    return list(decode(hosts))


_SAMPLES = ("asgi__group__broadcast.demo.product", "x__group__b.app.model", "é")


def _matches_layer(config: dict[str, Any]) -> str | None:
    """Why the layer of ``config`` does not route, name or read messages as the publish
    script writes them; None if it does."""
    try:
        from channels_redis import utils
        from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer
    except ImportError as exc:
        return f"channels-redis' pub/sub layer cannot be imported ({exc})"
    hashed = getattr(utils, "_consistent_hash", None)
    if not callable(hashed):
        return "channels_redis.utils._consistent_hash is gone"
    for ring in (1, 2, 3, 7):
        for sample in _SAMPLES:
            if hashed(sample, ring) != consistent_hash(sample, ring):
                return "channels-redis spreads channels over hosts differently"
    naming = getattr(RedisPubSubLoopLayer, "_get_group_channel_name", None)
    if not callable(naming):
        return "RedisPubSubLoopLayer._get_group_channel_name is gone"
    try:
        holder = type("Layer", (), {"prefix": "p"})()
        if naming(holder, "g.h") != group_channel("p", "g.h"):
            return "channels-redis names group channels differently"
        layer = RedisPubSubChannelLayer(**config)
        message = {"type": "broadcast.event", "frame": "é", "prev": ""}
        fmt = config.get("serializer_format", "msgpack")
        if fmt == "json":
            packed = json.dumps(message).encode()
        elif fmt == "msgpack":
            import msgpack  # type: ignore[import-untyped]

            packed = msgpack.packb(message)
        else:
            return f"the publish script cannot write serializer_format {fmt!r}"
        if layer.deserialize(packed) != message:
            return "the layer does not read plain msgpack/JSON messages"
    except Exception as exc:  # encryption, a prefix, a changed constructor...
        return f"the layer does not read plain messages ({exc!r})"
    return None


_checked: dict[str, bool] = {}
_lock = threading.Lock()


def script_publishing(config: dict[str, Any]) -> bool:
    """Whether the publish script may publish to the layer itself (fast path
    ``script_publish``, and the installed channels-redis as the script assumes)."""
    if not enabled("script_publish"):
        return False
    key = repr(sorted(config.items(), key=lambda item: str(item[0])))
    with _lock:
        found = _checked.get(key)
        if found is None:
            problem = _matches_layer(config)
            if problem:
                logger.warning(
                    "broadcast_app publishes through the channel layer's group_send (%s); "
                    "see 'Private APIs we use' in docs/architecture.md",
                    problem,
                )
            found = _checked[key] = problem is None
    return found


def swap_channel_queue(layer: Any, channel: str, make: Callable[[], asyncio.Queue[Any]]) -> bool:
    """Put ``make()`` in place of the empty queue the layer keeps for ``channel`` (fast
    path ``direct_queue``); False, and nothing changed, if the layer does not keep its
    channels' queues as channels-redis 4 does."""
    if not enabled("direct_queue"):
        return False
    queues = getattr(layer, "channels", None)
    if not isinstance(queues, dict):
        return False
    current = queues.get(channel)
    if type(current) is not asyncio.Queue or not current.empty():
        return False
    queues[channel] = make()
    return True


class LayerSender:
    """The public path of ``script_publish``: messages sent with the channel layer's
    ``group_send``, from a synchronous thread, on an event loop of its own (one per
    thread that uses it, kept while it is used: the layer keeps a connection per loop)."""

    def __init__(self, alias: str) -> None:
        self._alias = alias
        self._local = threading.local()
        self._loops: list[asyncio.AbstractEventLoop] = []
        # Also when this sender is dropped unclosed (the publisher forgets its clients
        # when the settings change): a loop left to the garbage collector would close
        # in whatever thread collects it, maybe one running a loop of its own.
        self._finalizer = weakref.finalize(self, _close_loops, self._loops)
        # Not at exit: the publisher thread may still be flushing through them then.
        self._finalizer.atexit = False

    def send(self, messages: list[tuple[str, dict[str, Any]]]) -> None:
        """Send each (group, message) in order; raises on the first failure."""
        if not messages:
            return
        loop, layer = self._loop()
        loop.run_until_complete(_send_all(layer, messages))

    def _loop(self) -> tuple[asyncio.AbstractEventLoop, Any]:
        found = getattr(self._local, "loop", None)
        if found is None:
            from channels.layers import channel_layers

            loop = asyncio.new_event_loop()
            found = self._local.loop = (loop, channel_layers.make_backend(self._alias))
            self._loops.append(loop)
        return found

    def close(self) -> None:
        """Close the layer connections and loops of every thread that used this sender
        (none may be using it any more)."""
        self._finalizer()


def _close_loops(loops: list[asyncio.AbstractEventLoop]) -> None:
    # In a thread of its own: channels-redis closes its per-loop layer by running the
    # loop once more as it closes, which a thread running another loop cannot do.
    def close() -> None:
        for loop in loops:
            try:
                if not loop.is_closed():
                    loop.close()
            except Exception:  # still running in its thread: closed when collected
                logger.debug("broadcast_app: a channel layer loop was still in use")

    closer = threading.Thread(target=close, name="broadcast-layer-close")
    closer.start()
    closer.join()


async def _send_all(layer: Any, messages: list[tuple[str, dict[str, Any]]]) -> None:
    for group, message in messages:
        await layer.group_send(group, message)

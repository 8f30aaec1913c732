"""Events processed where channels-redis' reader hands them over, when nothing is in the way.

channels-redis' pub/sub layer reads each message in one task and passes it through an
``asyncio.Queue`` to ``receive()``: a task switch per event, before which its reader
first goes back to waiting on Redis: the largest part of an instance's own share of the
latency (measured in docs/benchmark.md, "Where the time goes"). So the listener swaps the
queue of its channel for a :class:`DirectQueue`, which offers each message to the
listener before queueing it: the listener takes it at once when it is idle and the
event needs nothing that waits (see ``Listener.handle_now``), at most once per turn of
the event loop, so a burst still goes through the queue and ``receive()`` with the loop
running between two events. Swapping the queue relies on channels-redis' internals
(fast path ``direct_queue``, see :mod:`broadcast_app.upstream.channels_redis`): a layer
whose internals are not as expected, or ``BROADCAST_FAST_PATHS`` without it, keeps its
own queue, and everything goes the ordinary way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Any

from ..upstream.channels_redis import swap_channel_queue


class DirectQueue(asyncio.Queue[Any]):
    """An ``asyncio.Queue`` that first offers each item to ``take`` (True: taken)."""

    def __init__(self, take: Callable[[Any], bool]) -> None:
        super().__init__()
        self._take = take

    def put_nowait(self, item: Any) -> None:
        # Only when nothing is queued: an item may never overtake an earlier one.
        if self.empty() and self._take(item):
            return
        super().put_nowait(item)


def install(layer: Any, channel: str, take: Callable[[Any], bool]) -> bool:
    """Offer ``channel``'s messages to ``take`` as they arrive; False if the fast path is
    off or this layer does not keep its channels' queues as channels-redis 4 does
    (nothing is changed then)."""
    return swap_channel_queue(layer, channel, partial(DirectQueue, take))

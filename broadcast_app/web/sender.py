"""One websocket connection's outgoing frames: written at once, in order, bounded.

The listener hands each event to every subscribed connection in turn. A frame is
written the moment it is handed over when the server can take it without waiting
(the usual case: the server's ``send`` only frames the text and writes to its
transport), so the first client has its frame before the listener reaches the next
one, with no task switch and no timer per frame. Only when the server makes a ``send``
wait (its write buffer is full: the client reads slowly) does the connection's writer
task finish that send, and later frames wait in a bounded queue behind it; a send
still waiting after ``timeout`` seconds means the client stopped reading.

The first step of a send runs in the caller's task (the listener's, or channels-redis'
reader's), driven by hand (the ``stepped_send`` fast path, see
:mod:`broadcast_app.upstream.asgi`) or as an eager task. Stepped by hand suits servers
whose ``send`` only writes, or waits on a future or a lock (uvicorn, Daphne, the test
communicator); a ``send`` that armed a timeout of its own before its first wait would
arm it on the caller's task.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from ..upstream import asgi

logger = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]


class Sender:
    """Writes one connection's frames in order; ``put`` never blocks and never raises."""

    # Touched for every frame of every connection, and held by every connection: compact,
    # no instance dict; the queue and the writer task are made only once a send has to
    # wait (most connections never make the server wait, and an empty deque and an idle
    # task cost more than the rest of the sender together).
    __slots__ = (
        "_on_stalled", "_queue", "_send", "_stepped", "_task", "_timeout", "_waiting", "_wakeup",
        "limit", "open",
    )  # fmt: skip

    def __init__(
        self, send: Send, limit: int, timeout: float, on_stalled: Callable[[], Awaitable[None]]
    ) -> None:
        self._send = send
        self._queue: deque[str] | None = None
        self.limit = limit
        self._timeout = timeout
        self._on_stalled = on_stalled
        #: a started send that waits for the server
        self._waiting: asgi.Pending | None = None
        self._stepped = asgi.stepping()
        self._wakeup: asyncio.Future[None] | None = None
        #: False once the connection failed or stalled: frames are dropped
        self.open = True
        #: the writer, started by the first send that has to wait
        self._task: asyncio.Task[None] | None = None

    @property
    def queue(self) -> deque[str]:
        """Frames waiting behind a send the server made wait (at most ``limit``)."""
        if self._queue is None:
            self._queue = deque()
        return self._queue

    @property
    def room(self) -> int:
        """How many more frames fit before ``put`` refuses one."""
        return self.limit - (len(self._queue) if self._queue is not None else 0)

    def put(self, frame: str) -> bool:
        """Write ``frame`` now, or queue it behind a waiting send; False if the queue is
        full (the caller decides what to drop)."""
        if not self.open:
            return True  # the connection is going away: nothing to keep
        if self._waiting is None and not self._queue:
            self._start(frame)
            return True
        queue = self.queue
        if len(queue) >= self.limit:
            return False
        queue.append(frame)
        return True

    async def close(self) -> None:
        """Stop writing; a send still waiting for the server is abandoned."""
        self.open = False
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.close()

    def _start(self, frame: str) -> None:
        """Run the server's ``send`` up to its first wait, in the caller's task."""
        try:
            # Most sends finish within this first step.
            waiting = asgi.start(
                self._send, {"type": "websocket.send", "text": frame}, self._stepped
            )
        except Exception as exc:  # the connection is gone; the server says so next
            self._failed(exc)
            return
        if waiting is None:
            return
        self._waiting = waiting
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
            return
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def _failed(self, exc: BaseException) -> None:
        self.open = False
        if self._queue is not None:
            self._queue.clear()
        logger.debug("broadcast_app: a websocket send failed: %r", exc)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._waiting is None:
                if self._queue and self.open:
                    self._start(self._queue.popleft())
                    continue
                self._wakeup = loop.create_future()
                await self._wakeup
                continue
            waiting = self._waiting
            try:
                async with asyncio.timeout(self._timeout):
                    await waiting.wait()
            except TimeoutError:
                # The server's write buffer stayed full that long: the client stopped
                # reading (a frozen tab, a dead network).
                self._waiting = None
                waiting.close()
                self.open = False
                if self._queue is not None:
                    self._queue.clear()
                await self._on_stalled()
                return
            except Exception as exc:  # (cancelling this writer is not one: it ends here)
                self._waiting = None
                self._failed(exc)
                continue
            self._waiting = None

"""What one client can make an instance do: frames it sends, and resumes
(``subscribe`` with ``since``).

Every frame a connection sends is handled in the event loop every connection of the
instance shares, and some cost a Redis call (a ``subscribe`` reads the model's last
id): each connection may send ``BROADCAST_FRAME_BURST`` frames at once, then
``BROADCAST_FRAME_RATE`` per second (a token bucket); a frame beyond it gets an
``error`` (``rate_limited``) and no other work.

A resume reads the model's log from Redis and parses what it returns, in the event loop
every connection of the instance shares. Two budgets bound that work: each connection
may start ``BROADCAST_RESUME_RATE`` resumes per ``BROADCAST_RESUME_WINDOW`` seconds (a
token bucket: a burst of that many, then one each ``window / rate`` seconds), and the
instance reads at most ``BROADCAST_RESUME_CONCURRENCY`` logs for resumes at once. A
connection's frames are handled one at a time, in order, so it never has two resumes in
flight. What is over budget is answered with a ``reset`` (``rate_limited``, ``busy``)
and no work: the client reloads its state as after any reset.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..conf import conf
from ..stats import stats
from ..transport.log_reader import parse_since


class _Bucket:
    """A token bucket: a burst of ``capacity()``, then ``per_second()`` more each
    second (both read at each use, so a changed setting applies at once)."""

    __slots__ = ("_stamp", "_tokens")

    def __init__(self) -> None:
        self._tokens = self.capacity()
        self._stamp = asyncio.get_running_loop().time()

    def capacity(self) -> float:
        raise NotImplementedError

    def per_second(self) -> float:
        raise NotImplementedError

    def take(self) -> bool:
        """Spend one token if there is one; False if not."""
        now = asyncio.get_running_loop().time()
        self._tokens = min(self.capacity(), self._tokens + (now - self._stamp) * self.per_second())
        self._stamp = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class ResumeBucket(_Bucket):
    """One connection's resume allowance."""

    __slots__ = ()

    def capacity(self) -> float:
        return float(conf.BROADCAST_RESUME_RATE)

    def per_second(self) -> float:
        return conf.BROADCAST_RESUME_RATE / conf.BROADCAST_RESUME_WINDOW


class JoinBucket(_Bucket):
    """One connection's presence join allowance (joins and updates of its state)."""

    __slots__ = ()

    def capacity(self) -> float:
        return conf.BROADCAST_PRESENCE_RATE

    def per_second(self) -> float:
        return conf.BROADCAST_PRESENCE_RATE


class FrameBucket(_Bucket):
    """One connection's frame allowance."""

    __slots__ = ()

    def capacity(self) -> float:
        return float(conf.BROADCAST_FRAME_BURST)

    def per_second(self) -> float:
        return conf.BROADCAST_FRAME_RATE


#: each event loop's gate on log reads for resumes, with the size it was made with
_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[int, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)


def read_gate() -> asyncio.Semaphore:
    """This event loop's gate: at most ``BROADCAST_RESUME_CONCURRENCY`` log reads at once."""
    loop = asyncio.get_running_loop()
    size = conf.BROADCAST_RESUME_CONCURRENCY
    found = _gates.get(loop)
    if found is None or found[0] != size:
        # A changed setting takes a new gate; reads holding the old one release it.
        found = _gates[loop] = (size, asyncio.Semaphore(size))
    return found[1]


@asynccontextmanager
async def resume_turn(bucket: ResumeBucket | None, since: object) -> AsyncIterator[str | None]:
    """Hold one of the instance's turns while a resume from ``since`` is read and
    replayed (None: no ``since``, nothing to hold); or yield the ``reset`` reason that
    refuses it without work: ``malformed``, ``rate_limited`` (``bucket`` is empty),
    ``busy`` (no turn came within ``BROADCAST_REDIS_TIMEOUT``)."""
    if since is None or bucket is None:
        yield None
        return
    if parse_since(since) is None:
        yield "malformed"
        return
    if not bucket.take():
        stats.incr("resumes_refused")
        yield "rate_limited"
        return
    gate = read_gate()
    try:
        async with asyncio.timeout(conf.BROADCAST_REDIS_TIMEOUT):
            await gate.acquire()
    except TimeoutError:
        stats.incr("resumes_refused")
        yield "busy"
        return
    try:
        yield None
    finally:
        gate.release()

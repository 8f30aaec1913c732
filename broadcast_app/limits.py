"""What one client can make an instance do when it resumes (``subscribe`` with ``since``).

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

from .conf import conf
from .log import parse_since
from .stats import stats


class ResumeBucket:
    """One connection's resume allowance (a token bucket)."""

    __slots__ = ("_stamp", "_tokens")

    def __init__(self) -> None:
        self._tokens = float(conf.BROADCAST_RESUME_RATE)
        self._stamp = asyncio.get_running_loop().time()

    def take(self) -> bool:
        """Spend one resume if the allowance has one; False if not."""
        rate = conf.BROADCAST_RESUME_RATE
        now = asyncio.get_running_loop().time()
        refill = (now - self._stamp) * rate / conf.BROADCAST_RESUME_WINDOW
        self._tokens = min(float(rate), self._tokens + refill)
        self._stamp = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


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

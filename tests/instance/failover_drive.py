"""Saving products through a Redis failover with an in-process listener: the drive the
Sentinel and Cluster tests share (each with its own way to fail over)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any, NamedTuple

from channels.db import database_sync_to_async

from broadcast_app.publish import publisher
from tests.sentinel_support import Arrivals, eventually
from tests.testapp.models import Product

SAVE_EVERY = 0.02  # seconds between two saves: about 50 events per second
#: seconds the events may take to flow again after the master is killed
RECOVERY_TIMEOUT = 30.0
SETTLE_TIMEOUT = 15.0


class Recorder(Arrivals):
    """A hub subscriber of testapp.product: the products' numbers (``F-<n>``), or resets."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: dict[int, str] = {}

    def deliver(self, frame: str, event: dict[str, Any]) -> None:
        # ``event`` may be the frame's head only (id, model, pk): the data is in the frame.
        number = int(json.loads(frame)["data"]["sku"].removeprefix("F-"))
        self.log.append(number)
        self.ids[number] = event["id"]

    def reset(self, label: str, pk: str | None, reason: str) -> None:
        self.log.append(f"reset:{reason}")


def save(number: int) -> None:
    Product.objects.create(sku=f"F-{number}", name=f"F-{number}", price=Decimal(1))


class Drive(NamedTuple):
    sent: int
    #: seconds from the kill until an event saved after it arrived
    flowing_after: float
    #: what ``failover`` returned: seconds until the replica was promoted
    failover_seconds: float


async def save_through_failover(recorder: Recorder, failover: Callable[[], float]) -> Drive:
    """Save until events flow, run ``failover`` (in a thread: it kills the master first,
    then waits for the promotion), keep saving until an event saved after the kill
    arrives, save 20 more, and wait until every event is received or covered by a reset
    (the caller asserts that)."""
    sent = 0

    async def save_next() -> None:
        nonlocal sent
        await database_sync_to_async(save)(sent)
        sent += 1
        await asyncio.sleep(SAVE_EVERY)

    while len(recorder.received) < 20:
        await save_next()
        assert sent < 200, "events do not flow before the failover"
    promoted = asyncio.ensure_future(asyncio.to_thread(failover))
    killed_at = time.monotonic()
    await asyncio.sleep(0.1)  # the kill itself is the thread's first step
    killed_after = sent
    # Keep saving through the outage until an event saved after it arrives.
    while not promoted.done() or max(recorder.received) < killed_after:
        await save_next()
        assert time.monotonic() - killed_at < RECOVERY_TIMEOUT, "no event after the failover"
    flowing_after = time.monotonic() - killed_at
    failover_seconds = await promoted
    for _ in range(20):
        await save_next()
    assert await database_sync_to_async(publisher.flush)(SETTLE_TIMEOUT)
    await eventually(lambda: not recorder.uncovered(range(sent)), SETTLE_TIMEOUT)
    return Drive(sent, flowing_after, failover_seconds)

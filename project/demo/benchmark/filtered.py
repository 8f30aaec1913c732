"""(j) Filtered subscriptions: instance B's CPU per event with 1,000 filtered
subscriptions (each a different filter) against 1,000 plain ones, and none.

Ten websocket connections to B hold 100 subscriptions each (``BROADCAST_MAX_SUBSCRIPTIONS``'s
default). ``plain``: one per object, 999 on pks that are never saved and one on the
saved product. ``filtered``: 999 filters on the field every save changes
(``{"stock": 100000 + i}``, matching nothing: each is tested on the row before and after)
and ``{"id": <the saved product>}``. Either way each save reaches one client, so the
rows differ by what routing an event costs, not by what sending it costs. ``none``: no
subscription but that one client's. Each variant saves one product ``events`` times at
``rate`` a second (the saver is this process) and reads the CPU time B's threads ran
(``/proc/<pid>/task/*/schedstat``, in nanoseconds; the 10 ms ticks of ``/proc/<pid>/stat``
where it is missing) from the first save until the client has every frame, divided by
the events. B's idle work (heartbeats, probes) over those seconds is in every variant.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from ..models import Product
from .processes import BenchmarkError, cpu_seconds
from .saves import Products, paced, plain_save

LABEL = "demo.product"
CONNECTIONS = 10
PER_CONNECTION = 100
#: a stock no benchmark save ever writes (filters on it match nothing)
FAR = 100_000
#: seconds the last frames of a variant may take to arrive
SETTLE_TIMEOUT = 15.0

Frames = Callable[[Product, int], list[dict[str, Any]]]


def _connect(url: str, cookie: str, origin: str) -> Any:
    return connect(
        url,
        origin=origin,  # type: ignore[arg-type]
        additional_headers=[("Cookie", cookie)],
        compression=None,
        proxy=None,
        max_size=None,
        max_queue=None,
        ping_interval=None,
    )


def _plain(product: Product, i: int) -> list[dict[str, Any]]:
    pk = product.pk if i == 0 else FAR + i
    return [{"type": "subscribe", "model": LABEL, "pk": str(pk)}]


def _filtered(product: Product, i: int) -> list[dict[str, Any]]:
    where = {"id": product.pk} if i == 0 else {"stock": FAR + i}
    return [{"type": "subscribe", "model": LABEL, "where": where}]


def _none(product: Product, i: int) -> list[dict[str, Any]]:
    return _plain(product, i) if i == 0 else []


VARIANTS: dict[str, Frames] = {"none": _none, "plain": _plain, "filtered": _filtered}


def _cpu(pid: int) -> float | None:
    """Seconds process ``pid``'s threads have run so far."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return cpu_seconds(pid)
    return total / 1e9


async def _subscribe(ws: ClientConnection, frames: list[dict[str, Any]]) -> None:
    for frame in frames:
        await ws.send(json.dumps(frame))
    answered = 0
    while answered < len(frames):
        reply = json.loads(await ws.recv())
        if reply.get("type") == "error":
            raise BenchmarkError(f"(j) a subscription was refused: {reply}")
        answered += reply.get("type") == "subscribed"


async def _count(ws: ClientConnection, seen: list[int], done: asyncio.Event, events: int) -> None:
    async for text in ws:
        if '"type":"change"' in str(text):
            seen[0] += 1
            if seen[0] >= events:
                done.set()


async def _variant(
    url: str, cookie: str, pid: int, product: Product, frames: Frames, events: int, rate: float
) -> float:
    """B's CPU microseconds per event with ``frames``' subscriptions."""
    origin = url.replace("ws://", "http://").split("/ws/")[0]
    async with AsyncExitStack() as stack:
        sockets = [
            await stack.enter_async_context(_connect(url, cookie, origin))
            for _ in range(CONNECTIONS)
        ]
        for n, ws in enumerate(sockets):
            first = n * PER_CONNECTION
            batch = [f for i in range(first, first + PER_CONNECTION) for f in frames(product, i)]
            await _subscribe(ws, batch)
        seen, done = [0], asyncio.Event()
        readers = [asyncio.create_task(_count(ws, seen, done, events)) for ws in sockets]
        try:
            before = _cpu(pid)
            await asyncio.to_thread(paced, rate, events, plain_save(product))
            await asyncio.wait_for(done.wait(), SETTLE_TIMEOUT)
            after = _cpu(pid)
        except TimeoutError:
            raise BenchmarkError(f"(j) {seen[0]} of {events} frames arrived.") from None
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
    if before is None or after is None:
        raise BenchmarkError("(j) needs /proc to read instance B's CPU time.")
    return (after - before) / events * 1e6


def filtered_row(
    url: str, cookie: str, pid: int, products: Products, events: int, rate: float
) -> dict[str, Any]:
    """Each variant once, on a fresh product (so no frame of one is counted in another)."""
    row: dict[str, Any] = {"events": events, "rate": rate, "subscriptions": 1000}
    for name, frames in VARIANTS.items():
        product = products.new()
        started = time.perf_counter()
        row[f"{name}_us_per_event"] = round(
            asyncio.run(_variant(url, cookie, pid, product, frames, events, rate)), 1
        )
        row[f"{name}_seconds"] = round(time.perf_counter() - started, 2)
    return row


def filtered_line(row: dict[str, Any]) -> str:
    return (
        f"(j) instance B CPU per event, {row['events']} saves at {row['rate']:g}/s, each "
        f"reaching one client: 1,000 filtered subscriptions {row['filtered_us_per_event']:.0f} "
        f"us, 1,000 plain {row['plain_us_per_event']:.0f} us, none "
        f"{row['none_us_per_event']:.0f} us"
    )

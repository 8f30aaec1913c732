"""The floor: the least any Redis-to-websocket relay must do, as a raw ASGI app.

Run it with ``python -m uvicorn project.demo.benchmark.floor_relay:app``, ``REDIS_URL``
and ``BENCHMARK_FLOOR_CHANNEL`` in the environment. One ``redis.asyncio`` pub/sub
subscription; each message is sent as a text frame, as-is, to every connected websocket.
No Django, no authentication, no per-client queue: what broadcast_app adds on top of
this (capture, a stream id, the channel layer, permissions, ordering, slow-client
protection) is what the benchmark's ratios price.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

Message = dict[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]

#: the pub/sub channel the benchmark's floor saver publishes on
DEFAULT_CHANNEL = "benchmark.floor"
READY_FRAME = '{"type":"subscribed"}'


class Relay:
    """The subscription task and the connected clients' ``send`` callables."""

    def __init__(self) -> None:
        self.clients: set[Send] = set()
        self.task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    async def start(self) -> None:
        """Subscribe, then return (so the server reports ready only once subscribed)."""
        self.subscribed = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self.run())
        waiter = asyncio.ensure_future(self.subscribed.wait())
        await asyncio.wait({waiter, self.task}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if not self.subscribed.is_set():
            waiter.cancel()
            await self.stop()
            raise RuntimeError("the floor relay could not subscribe to Redis")

    async def stop(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def run(self) -> None:
        client = aioredis.from_url(os.environ["REDIS_URL"])
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(os.environ.get("BENCHMARK_FLOOR_CHANNEL", DEFAULT_CHANNEL))
            self.subscribed.set()
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is not None:
                    await self.fan_out(message["data"].decode())
        finally:
            await pubsub.aclose()
            await client.aclose()

    async def fan_out(self, text: str) -> None:
        frame = {"type": "websocket.send", "text": text}
        for send in tuple(self.clients):
            try:
                await send(frame)
            except Exception:  # the client went away between two messages
                self.clients.discard(send)


relay = Relay()


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """The ASGI application: lifespan, one websocket route, a plain HTTP answer."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
    elif scope["type"] == "websocket":
        await _websocket(receive, send)
    else:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"floor relay\n"})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await relay.start()
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await relay.stop()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _websocket(receive: Receive, send: Send) -> None:
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    relay.clients.add(send)
    try:
        # Tell the client it is in the fan-out set: from now on it gets every message.
        await send({"type": "websocket.send", "text": READY_FRAME})
        while (await receive())["type"] != "websocket.disconnect":
            pass  # the floor ignores what clients send
    finally:
        relay.clients.discard(send)

"""(k) The publish ceiling: what one event costs Redis, and how fast publishers go.

Redis' own counters around a burst: ``INFO commandstats`` (the time spent in the
commands) and ``used_cpu_sys + used_cpu_user`` (everything, reading the pipelines
included). Ours is the publisher's script calls, packed as its thread packs them
(:mod:`broadcast_app.transport.scripts`: batches of ``BATCH`` events per round trip, one
call per run of a model's events), against a plain ``PUBLISH`` of the same message
bytes, on the same channel, with the same subscriber. A script call of several events
publishes them in one message (:mod:`broadcast_app.transport.messages`); the plain
``PUBLISH`` sends one event's message per event, as a call with one event publishes it.
The ceiling one Redis core implies is a million microseconds over the CPU per event.

Then 4 publishing processes send as fast as they can, each its own model, and a
subscriber standing in for an instance's listener checks that every event arrives, in
order, each naming the one before it (``prev``): the rate is events over the time from
the first send to the last receipt.

The keys and channels are the benchmark's own, so no other row sees these events.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import threading
import time
from typing import Any

import msgpack  # type: ignore[import-untyped]
import redis

from broadcast_app.events.wire import frame_id
from broadcast_app.transport.messages import events_of
from broadcast_app.transport.routes import MESSAGE_TYPE, Route, route
from broadcast_app.transport.scripts import load, pack, unpack

#: events per round trip, as the publisher thread takes them from a busy queue
BATCH = 500
PUBLISHERS = 4
_ONCE_TTL_MS = 60_000
_MAXLEN = 10_000
_WAIT = 30.0  # seconds for a burst's last message


def ceiling_row(url: str, events: int) -> dict[str, Any]:
    """CPU per event, ours against a plain PUBLISH; the implied ceiling; 4 publishers."""
    client = redis.Redis.from_url(url)
    try:
        r = _route(0)
        body = _body()
        with _Receiver(url, [r.channel]) as receiver:
            ours = _burst(
                client, receiver, events, "evalsha", lambda n: _send_ours(client, r, body, n)
            )
            payload = receiver.sample
            plain = _burst(
                client,
                receiver,
                events,
                "publish",
                lambda n: _send_plain(client, r.channel, payload, n),
            )
        per_event = {
            key: _ratio(ours[key], plain[key]) for key in ("command_us", "cpu_us")
        }  # fmt: skip
        return {
            "events": events,
            "batch": BATCH,
            "payload_bytes": len(payload),
            "ours": ours,
            "plain_publish": plain,
            "ratio": per_event,
            "ceiling_per_core": round(1e6 / ours["cpu_us"]) if ours["cpu_us"] else None,
            "publishers": publishers_row(url, events),
        }
    finally:
        client.close()


def publishers_row(url: str, events: int) -> dict[str, Any]:
    """``PUBLISHERS`` processes sending ``events`` each, flat out."""
    routes = [_route(n) for n in range(1, PUBLISHERS + 1)]
    context = multiprocessing.get_context("fork")  # the children need Django's settings
    with _Receiver(url, [r.channel for r in routes]) as receiver:
        start = context.Event()
        children = [
            context.Process(target=_publisher, args=(url, r, events, start), daemon=True)
            for r in routes
        ]
        for child in children:
            child.start()
        began = time.perf_counter()
        start.set()
        receiver.wait_for(events * PUBLISHERS, _WAIT)
        elapsed = receiver.last_at - began
        for child in children:
            child.join(_WAIT)
        received, broken = receiver.received, receiver.broken
    total = events * PUBLISHERS
    return {
        "processes": PUBLISHERS,
        "events": total,
        "received": received,
        "lost": total - received,
        "out_of_chain": broken,
        "seconds": round(elapsed, 3),
        "events_per_s": round(received / elapsed) if elapsed > 0 else None,
    }


def _publisher(url: str, r: Route, events: int, start: Any) -> None:
    client = redis.Redis.from_url(url)
    start.wait()
    _send_ours(client, r, _body(), events)
    client.close()


def _burst(
    client: redis.Redis, receiver: _Receiver, events: int, command: str, send: Any
) -> dict[str, float]:
    """Redis' CPU and ``command``'s time per event for ``send(events)``, all received.
    A script's time includes the commands it calls (counted under their own names too)."""
    expected = receiver.received + events
    client.config_resetstat()
    cpu_before = _cpu(client)
    send(events)
    receiver.wait_for(expected, _WAIT)
    cpu = _cpu(client) - cpu_before
    stats: dict[str, Any] = client.info("commandstats")
    usec = stats.get(f"cmdstat_{command}", {}).get("usec", 0)
    return {
        "command_us": round(usec / events, 2),
        "cpu_us": round(cpu * 1e6 / events, 2),
        "lost": expected - receiver.received,
    }


def _send_ours(client: redis.Redis, r: Route, body: str, events: int) -> None:
    shas = load(client)
    for first in range(0, events, BATCH):
        entries: list[Any] = [(r, body, None)] * min(BATCH, events - first)
        packed = pack(entries, shas, _MAXLEN, 0, _ONCE_TTL_MS)
        pipe = client.pipeline(transaction=False)
        for call in packed.calls:
            pipe.execute_command(*call)
        unpack(packed, pipe.execute())


def _send_plain(client: redis.Redis, channel: str, payload: bytes, events: int) -> None:
    for first in range(0, events, BATCH):
        pipe = client.pipeline(transaction=False)
        for _ in range(min(BATCH, events - first)):
            pipe.publish(channel, payload)
        pipe.execute()


class _Receiver:
    """A subscriber that counts events and checks each names the one before it."""

    def __init__(self, url: str, channels: list[str]) -> None:
        self._client = redis.Redis.from_url(url)
        self._pubsub = self._client.pubsub()
        self._pubsub.subscribe(*channels)
        self._last: dict[bytes, str | None] = {}
        self._done = threading.Condition()
        self._stop = False
        self.received = 0
        self.broken = 0
        self.last_at = 0.0
        self.sample = b""
        self._thread = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> _Receiver:
        while len(self._last) < len(self._pubsub.channels):
            message = self._pubsub.get_message(timeout=5)
            if message is None:
                raise RuntimeError("the benchmark's subscriber was not subscribed in 5 s")
            if message["type"] == "subscribe":
                self._last[message["channel"]] = None
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join(5)
        self._pubsub.close()
        self._client.close()

    def _read(self) -> None:
        while not self._stop:
            message = self._pubsub.get_message(timeout=0.2)
            if message is None or message["type"] != "message":
                continue
            data = message["data"]
            channel = message["channel"]
            if data == self.sample:  # plain PUBLISHes repeat one message: no chain
                self._last[channel] = None
                self._count(1)
                continue
            events = list(events_of(msgpack.unpackb(data)))
            for frame, prev in events:
                last = self._last.get(channel)
                if last is not None and prev != last:
                    self.broken += 1
                self._last[channel] = frame_id(frame)
            if not self.sample:
                # One event's message, as a call with one event publishes it.
                frame, prev = events[0]
                self.sample = msgpack.packb({"type": MESSAGE_TYPE, "frame": frame, "prev": prev})
            self._count(len(events))

    def _count(self, events: int) -> None:
        with self._done:
            self.received += events
            self.last_at = time.perf_counter()
            self._done.notify_all()

    def wait_for(self, count: int, timeout: float) -> None:
        with self._done:
            self._done.wait_for(lambda: self.received >= count, timeout)


def _route(n: int) -> Route:
    return dataclasses.replace(
        route("demo.product"),
        stream=f"benchmark:ceiling:{n}:log",
        meta=f"benchmark:ceiling:{n}:meta",
        channel=f"benchmark:ceiling:{n}",
        serializer_format="msgpack",
    )


def _body() -> str:
    """A product update's body as the publisher writes it (after ``"id":...,``)."""
    data = {"pk": 1, "name": "Product 1", "price": "12.50", "stock": 7, "sku": "SKU-0001"}
    rest = json.dumps(
        {"model": "demo.product", "action": "updated", "pk": 1, "data": data,
         "changed": ["stock"], "at": "2026-12-06T20:00:00.000000+00:00", "origin": "bench"},
        separators=(",", ":"),
    )  # fmt: skip
    return rest[1:]


def _cpu(client: redis.Redis) -> float:
    info: dict[str, Any] = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _ratio(ours: float, plain: float) -> float | None:
    return round(ours / plain, 2) if plain else None

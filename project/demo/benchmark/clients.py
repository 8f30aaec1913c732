"""The websocket client fleet: many connections in one process, driven over stdin/stdout.

Run as ``python -m project.demo.benchmark.clients`` (no Django here). The driver sends
one JSON command per line and reads one JSON reply per line:

``{"cmd": "connect", "group": g, "url": u, "count": n, "headers": [[k, v], ...],
"subscribe": text | null}``
    open ``n`` more connections in group ``g``; each sends ``subscribe`` (if given)
    and counts as connected once its first text frame says ``subscribed``.
``{"cmd": "start", "marker": m, "group": g, "expected": n}``
    start recording: every text frame containing ``m`` is one event of the phase,
    and each client of group ``g`` should get ``n`` of them.
``{"cmd": "stop", "settle": s, "raw": false}``
    wait (up to ``s`` seconds) until each client of the group has its events, stop
    recording and reply with the phase's latency summary (with ``raw``, also every
    latency, so that the driver can pool several phases).
``{"cmd": "close"}``
    close every connection (the fleet stays, to connect again).
``{"cmd": "quit"}``
    close every connection and exit (end of input does the same).

Each connection is a sans-I/O ``websockets`` protocol on a plain asyncio transport:
no task and no future per message, so the fleet spends as little CPU as possible per
frame on a machine it shares with the servers it measures. Per frame it only takes the
receipt time (``time.time()``) and slices the ``ts`` out of the text; timestamps are
parsed and latencies computed once, at ``stop``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any, cast

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from .report import latency_summary

#: concurrent handshakes while connecting (the server checks each session in its DB)
CONNECT_CONCURRENCY = 20
CONNECT_TIMEOUT = 30.0
_TS = b'"ts":"'
_TS_LEN = len("2026-01-01T00:00:00.000000")


class Client(asyncio.Protocol):
    """One websocket connection; records (ts, receipt time) of each matching frame."""

    def __init__(
        self, fleet: Fleet, group: str, url: str, headers: list[list[str]], subscribe: str | None
    ) -> None:
        self.fleet = fleet
        self.group = group
        self.headers = headers
        self.subscribe = subscribe
        self.protocol = ClientProtocol(parse_uri(url))
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self._close_scheduled = False
        self.keys: list[bytes] = []
        self.times: list[float] = []
        #: ``reset`` frames received while recording (the server says events were missed)
        self.resets = 0

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        request = self.protocol.connect()
        for name, value in self.headers:
            request.headers[name] = value
        self.protocol.send_request(request)
        self._write()

    def data_received(self, data: bytes) -> None:
        now = time.time()  # before parsing: the frames in this chunk arrived now
        protocol = self.protocol
        protocol.receive_data(data)
        for event in protocol.events_received():
            if isinstance(event, Frame):
                if event.opcode is Opcode.TEXT:
                    self._on_text(bytes(event.data), now)
            elif isinstance(event, Response):
                self._on_response()
        self._write()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.fleet.settled(self)
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before subscribing ({exc})"))

    # -- websocket --------------------------------------------------------------------

    def _on_response(self) -> None:
        error = self.protocol.handshake_exc
        if error is not None:
            if not self.ready.done():
                self.ready.set_exception(ConnectionError(f"handshake failed: {error}"))
            return
        if self.subscribe is not None:
            self.protocol.send_text(self.subscribe.encode())

    def _on_text(self, data: bytes, now: float) -> None:
        marker = self.fleet.marker
        if marker is not None and marker in data:
            start = data.find(_TS) + len(_TS)
            self.keys.append(data[start : start + _TS_LEN])
            self.times.append(now)
            if len(self.keys) == self.fleet.expected:
                self.fleet.settled(self)
        elif marker is not None and b'"type":"reset"' in data:
            self.resets += 1
        elif not self.ready.done():
            if b'"subscribed"' in data:
                self.ready.set_result(None)
            else:
                self.ready.set_exception(ConnectionError(f"not subscribed: {data[:200]!r}"))

    def _write(self) -> None:
        assert self.transport is not None
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.transport.write(chunk)
            elif self.transport.can_write_eof():
                self.transport.write_eof()
        if self.protocol.close_expected() and not self._close_scheduled:
            # The server should close the TCP connection; make sure it goes anyway.
            self._close_scheduled = True
            asyncio.get_running_loop().call_later(2.0, self.transport.close)

    def close(self) -> None:
        """Start the closing handshake (the server then closes the TCP connection)."""
        if self.transport is None or self.closed:
            return
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(1000)
            self._write()
        else:
            self.transport.close()

    def reset(self) -> None:
        self.keys = []
        self.times = []
        self.resets = 0


class Fleet:
    """Every connection of this process, and the phase being recorded."""

    def __init__(self) -> None:
        self.clients: list[Client] = []
        self.marker: bytes | None = None
        #: the recorded phase: its group, events per client, clients still short of them
        self.group = ""
        self.expected = 0
        self.waiting: set[Client] = set()
        self.all_settled = asyncio.Event()

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        name = command.get("cmd")
        if name == "connect":
            return await self.connect(**_without(command, "cmd"))
        if name == "start":
            return self.start(command["marker"], command["group"], command["expected"])
        if name == "stop":
            return await self.stop(**_without(command, "cmd"))
        if name == "close":
            reply = await self.close_all()
            self.clients = []
            return reply
        if name == "quit":
            return await self.close_all()
        raise ValueError(f"unknown command {name!r}")

    async def connect(
        self,
        group: str,
        url: str,
        count: int,
        headers: list[list[str]],
        subscribe: str | None,
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        uri = parse_uri(url)
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one() -> Client:
            async with gate:
                client = Client(self, group, url, headers, subscribe)
                await loop.create_connection(lambda: client, uri.host, uri.port)
                await asyncio.wait_for(client.ready, CONNECT_TIMEOUT)
                return client

        results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        self.clients += [r for r in results if isinstance(r, Client)]
        if failed:
            raise ConnectionError(f"{len(failed)} of {count} clients failed: {failed[0]!r}")
        return {"connected": sum(1 for c in self.clients if c.group == group and not c.closed)}

    def start(self, marker: str, group: str, expected: int) -> dict[str, Any]:
        for client in self.clients:
            client.reset()
        self.group, self.expected = group, expected
        self.waiting = {c for c in self.clients if c.group == group and not c.closed}
        self.all_settled = asyncio.Event()
        if not self.waiting:
            self.all_settled.set()
        self.marker = marker.encode()
        return {"recording": marker}

    def settled(self, client: Client) -> None:
        """A client got all its events of the phase, or closed."""
        self.waiting.discard(client)
        if not self.waiting:
            self.all_settled.set()

    async def stop(self, settle: float, raw: bool = False) -> dict[str, Any]:
        try:
            async with asyncio.timeout(settle):
                await self.all_settled.wait()
        except TimeoutError:
            pass  # what has not arrived by now counts as lost
        self.marker = None
        clients = [c for c in self.clients if c.group == self.group]
        return summarize(clients, self.expected, raw)

    async def close_all(self) -> dict[str, Any]:
        self.waiting = {c for c in self.clients if not c.closed}
        self.all_settled = asyncio.Event()
        if not self.waiting:
            self.all_settled.set()
        for client in self.clients:
            client.close()
        try:
            async with asyncio.timeout(5):
                await self.all_settled.wait()
        except TimeoutError:
            pass
        for client in self.clients:
            if client.transport is not None and not client.closed:
                client.transport.abort()
        return {"closed": len(self.clients)}


def summarize(clients: list[Client], expected: int, raw: bool = False) -> dict[str, Any]:
    """Latencies (ms) of every (client, event) pair, and events lost or duplicated;
    with ``raw``, the latencies themselves too (``latencies_ms``)."""
    epoch: dict[bytes, float] = {}
    latencies: list[float] = []
    received = duplicates = short = 0
    for client in clients:
        unique = set(client.keys)
        received += len(unique)
        short += max(0, expected - len(unique))
        duplicates += len(client.keys) - len(unique)
        for key, seen in zip(client.keys, client.times, strict=True):
            sent = epoch.get(key)
            if sent is None:
                sent = epoch[key] = _epoch(key)
            latencies.append((seen - sent) * 1000)
    summary: dict[str, Any] = {
        "clients": len(clients),
        "expected": expected * len(clients),
        "received": received,
        "lost": max(0, expected * len(clients) - received),
        "duplicates": duplicates,
        #: events missing client by client (``lost`` is the total's shortfall, which
        #: extra frames of some clients could hide)
        "missing": short,
        "closed": sum(1 for c in clients if c.closed),
        "resets": sum(c.resets for c in clients),
        **latency_summary(latencies),
    }
    if raw:
        summary["latencies_ms"] = [round(value, 4) for value in latencies]
    return summary


def _epoch(ts: bytes) -> float:
    """``2026-11-24T16:28:09.980513`` (UTC) as seconds since the epoch."""
    return datetime.fromisoformat(ts.decode()).replace(tzinfo=UTC).timestamp()


def _without(command: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in command.items() if k not in names}


async def serve() -> None:
    """Answer the driver's commands until ``quit`` or the end of stdin."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    fleet = Fleet()
    try:
        while line := await reader.readline():
            command = json.loads(line)
            try:
                reply = await fleet.handle(command)
            except Exception as exc:  # reported to the driver, which raises it there
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
            if command.get("cmd") == "quit":
                return
    finally:
        await fleet.close_all()


def main() -> None:
    try:
        import uvloop
    except ImportError:  # the fleet works on the default loop too, a bit slower
        asyncio.run(serve())
    else:
        uvloop.run(serve())


if __name__ == "__main__":
    main()

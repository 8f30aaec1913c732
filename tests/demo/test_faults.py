"""Fault tests on real processes: nothing is lost, or the loss is reported as ``reset``.

Two uvicorn instances of the demo (A and B), a Redis of this module's own (it gets
killed), a fresh database, and a long-lived ``manage.py shell`` process that saves on
command: the faults are a client away for 50 changes, an instance killed with SIGKILL
and restarted, a client that stops reading, a client that vanishes without closing,
and Redis killed and restarted mid-stream. Each test prints its figures (sent /
received / reset) in the session's terminal summary (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from websockets.exceptions import ConnectionClosedError

from broadcast_app.dev.embedded_redis import EmbeddedRedis
from tests.e2e_support import (
    BASE_DIR,
    FRAME_TIMEOUT,
    Instance,
    RawSocket,
    Socket,
    demo_stack,
    http_client,
    login,
    websocket,
)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

PRODUCT = "demo.product"
ADMIN = "fault-admin"
#: products the slow-client test updates in bulk: one event each per update()
BULK = 100

SETUP = f"""
import json, os
from decimal import Decimal
from django.contrib.auth.models import User
from project.demo.models import Product

User.objects.create_superuser("{ADMIN}", password=os.environ["E2E_PASSWORD"])
pks = {{}}
for sku in ("RESUME", "KILLED", "OUTAGE"):
    pks[sku] = Product.objects.create(
        name=sku.title(), sku=sku, price=Decimal("1.00"), stock=0, cost_price=Decimal("0.50")
    ).pk
Product.objects.bulk_create(
    Product(name="Bulk " + "x" * 150, sku=f"BULK-{{i}}", price=Decimal("1.00"), stock=0,
            cost_price=Decimal("0.50"))
    for i in range({BULK})
)
print(json.dumps(pks))
"""

# Saves on command, one JSON line per command: a process that saves like a view or a
# worker does, whose publisher (and its outage buffer) lives as long as the test.
WRITER = """
import json, sys
from django.db.models import F
from broadcast_app.publish import publisher
from project.demo.models import Product

for line in sys.stdin:
    command, *args = line.split()
    if command == "save":
        pk, count = int(args[0]), int(args[1])
        slowest = 0.0
        import time
        for _ in range(count):
            product = Product.objects.get(pk=pk)
            product.stock += 1
            started = time.monotonic()
            product.save()
            slowest = max(slowest, time.monotonic() - started)
        print(json.dumps({"stock": product.stock, "slowest_save_s": slowest}), flush=True)
    elif command == "bulk":
        rows = 0
        for _ in range(int(args[0])):
            rows += Product.objects.filter(sku__startswith="BULK-").update(stock=F("stock") + 1)
        print(json.dumps({"rows": rows}), flush=True)
    elif command == "flush":
        print(json.dumps({"flushed": publisher.flush(float(args[0]))}), flush=True)
"""


class Writer:
    """The ``manage.py shell`` process that saves products when told to."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def ask(self, command: str, timeout: float = 60.0) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command.encode() + b"\n")
        await self.process.stdin.drain()
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            stderr = b""
            if self.process.stderr is not None:
                stderr = await self.process.stderr.read()
            raise AssertionError(f"the writer exited: {stderr.decode()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def save(self, pk: int, count: int) -> dict[str, Any]:
        """``count`` saves of one product (stock + 1 each), published once Redis allows."""
        return await self.ask(f"save {pk} {count}")

    async def flush(self, timeout: float = 20.0) -> None:
        answer = await self.ask(f"flush {timeout}", timeout + 10)
        assert answer["flushed"], "the writer's events were not all published"


@dataclass
class Stack:
    a: Instance
    b: Instance
    env: dict[str, str]
    redis: EmbeddedRedis
    pks: dict[str, int]
    session_id: str
    directory: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("faults")
    password = secrets.token_urlsafe(16)
    # This module's own Redis: one test kills it.
    with (
        EmbeddedRedis() as redis,
        demo_stack(
            redis.url, directory, SETUP, password, "fault-setup", "tests.demo.fault_settings"
        ) as demo,
    ):
        session_id = login(demo.a.base_url, ADMIN, password)
        yield Stack(demo.a, demo.b, demo.env, redis, demo.setup_output, session_id, directory)


@pytest_asyncio.fixture(loop_scope="module")
async def writer(stack: Stack) -> AsyncIterator[Writer]:
    process = await asyncio.create_subprocess_exec(
        # -v 0: no "objects imported automatically" line before the answers
        *(sys.executable, "manage.py", "shell", "-v", "0", "-c", WRITER),
        cwd=BASE_DIR,
        env={**stack.env, "BROADCAST_INSTANCE_ID": "fault-writer"},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    yield Writer(process)
    assert process.stdin is not None
    process.stdin.close()
    try:
        await asyncio.wait_for(process.wait(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def changes_until(ws: Socket, stop: Any, timeout: float = FRAME_TIMEOUT) -> list[Any]:
    """Frames received until ``stop(frame)`` is true (that frame included)."""
    frames: list[Any] = []
    while True:
        try:
            frame = await ws.receive(timeout)
        except AssertionError as error:
            brief = [(f["type"], f.get("data", {}).get("stock"), f.get("reason")) for f in frames]
            raise AssertionError(f"{error}; received before: {brief}") from None
        frames.append(frame)
        if stop(frame):
            return frames


async def cached(instance: Instance, session_id: str, pk: int) -> tuple[str, dict[str, Any]]:
    """Instance's ``X-Cache`` and broadcast data of one product."""
    async with http_client(instance.base_url, session_id) as client:
        response = await client.get(f"/demo/products/{pk}.json")
        assert response.status_code == 200, response.text
        return response.headers["X-Cache"], response.json()


async def status(instance: Instance, session_id: str) -> dict[str, Any]:
    async with http_client(instance.base_url, session_id) as client:
        response = await client.get("/broadcast/status.json")
        assert response.status_code == 200, response.status_code
        figures: dict[str, Any] = response.json()["instance"]
        return figures


async def poll(check: Any, timeout: float, what: str) -> float:
    """Await ``check()`` until it is true; return the seconds it took."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.1)  # polling a remote process's state, bounded above
    return time.monotonic() - started


def stocks(frames: list[dict[str, Any]]) -> list[int]:
    return [f["data"]["stock"] for f in frames if f["type"] == "change"]


# -- the faults -----------------------------------------------------------------------


async def test_client_away_for_50_changes_resumes_with_exactly_those(
    stack: Stack, writer: Writer, fault_report: Any
) -> None:
    pk = stack.pks["RESUME"]
    async with websocket(stack.b.ws_url, origin=stack.b.origin, session_id=stack.session_id) as ws:
        await ws.subscribe(PRODUCT, str(pk))
        await writer.save(pk, 1)
        seen = await ws.receive()
        assert seen["type"] == "change" and seen["data"]["stock"] == 1, seen
    # Away: 50 changes happen while no socket is open.
    await writer.save(pk, 50)
    await writer.flush()
    async with websocket(stack.b.ws_url, origin=stack.b.origin, session_id=stack.session_id) as ws:
        resume = {"type": "subscribe", "model": PRODUCT, "pk": str(pk), "since": seen["id"]}
        reply = await ws.ask(resume)
        assert reply["type"] == "subscribed", reply
        replayed = [await ws.receive() for _ in range(50)]
        await ws.expect_nothing_queued()
        # Then live again.
        await writer.save(pk, 1)
        live = await ws.receive()
    assert stocks(replayed) == list(range(2, 52)), replayed
    assert replayed[-1]["id"] == reply["last_id"]
    assert live["data"]["stock"] == 52
    fault_report("client away for 50 changes", sent=50, received=len(stocks(replayed)), reset=0)


async def test_instance_killed_and_restarted_recovers_cache_and_clients(
    stack: Stack, writer: Writer, fault_report: Any
) -> None:
    pk = stack.pks["KILLED"]
    b = stack.b
    async with websocket(b.ws_url, origin=b.origin, session_id=stack.session_id) as ws:
        await ws.subscribe(PRODUCT, str(pk))
        await writer.save(pk, 1)
        seen = await ws.receive()
        await cached(b, stack.session_id, pk)
        assert (await cached(b, stack.session_id, pk))[0] == "hit"
        b.kill()
        # The socket sees the crash as an abrupt end, not a close frame.
        with pytest.raises(ConnectionClosedError):
            await ws.receive()
    await writer.save(pk, 20)  # while B is down
    await writer.flush()
    b.restart()
    # Its clients: the same URL, resuming from the last id they saw.
    async with websocket(b.ws_url, origin=b.origin, session_id=stack.session_id) as ws:
        await ws.send({"type": "subscribe", "model": PRODUCT, "pk": str(pk), "since": seen["id"]})
        assert (await ws.receive())["type"] == "subscribed"
        missed = [await ws.receive() for _ in range(20)]
        await ws.expect_nothing_queued()
        # Its cache: the current row, then kept current by events again.
        state, data = await cached(b, stack.session_id, pk)
        assert data["stock"] == 21, data
        await writer.save(pk, 1)
        assert (await ws.receive())["data"]["stock"] == 22
        state, data = await cached(b, stack.session_id, pk)
        assert (state, data["stock"]) == ("hit", 22)
    assert stocks(missed) == list(range(2, 22)), missed
    fault_report("instance SIGKILLed and restarted", sent=20, received=len(missed), reset=0)


async def test_a_client_that_stops_reading_is_cut_off_and_others_keep_flowing(
    stack: Stack, writer: Writer, fault_report: Any
) -> None:
    # An instance whose sockets buffer 32 KiB for their client, not the kernel's MiBs.
    with another_instance(stack, "D", send_buffer=32 * 1024) as d:
        await _slow_client_on(d, stack, writer, fault_report)


async def _slow_client_on(b: Instance, stack: Stack, writer: Writer, fault_report: Any) -> None:
    rounds = 20
    sent = rounds * BULK
    before = await status(b, stack.session_id)
    rss_before = _rss_kib(b)
    slow = await asyncio.to_thread(
        RawSocket, b.ws_url, origin=b.origin, session_id=stack.session_id, receive_buffer=4096
    )
    try:
        await asyncio.to_thread(slow.send, {"type": "subscribe", "model": PRODUCT})
        reply = await asyncio.to_thread(slow.receive)
        assert reply is not None and reply["type"] == "subscribed", reply
        # From here on the slow client reads nothing.
        async with websocket(b.ws_url, origin=b.origin, session_id=stack.session_id) as ws:
            await ws.subscribe(PRODUCT)
            # This one reads all along, as a browser does, until the pong below.
            reading = asyncio.create_task(changes_until(ws, lambda f: f["type"] == "pong", 60))
            answer = await writer.ask(f"bulk {rounds}")
            assert answer["rows"] == sent
            await writer.flush()

            async def b_received_all() -> bool:
                figures = await status(b, stack.session_id)
                return bool(figures["received"] >= before["received"] + sent)

            await poll(b_received_all, 30, "instance B did not receive every event")
            await ws.send({"type": "ping"})  # queued behind every event B delivered
            frames = await reading
            rss_after = _rss_kib(b)
            # Events keep coming; once a write to the stalled client has waited
            # BROADCAST_SEND_TIMEOUT (2 s here), it is closed.
            trickle = stack.pks["RESUME"]

            async def slow_client_closed() -> bool:
                await writer.save(trickle, 1)
                figures = await status(b, stack.session_id)
                return bool(figures["slow_clients_closed"] > before["slow_clients_closed"])

            closed_after = await poll(slow_client_closed, 30, "the stalled client stayed open")
            after = await status(b, stack.session_id)
        # The slow client gets what was buffered for it, then the end of the connection.
        got = await asyncio.to_thread(_drain, slow)
    finally:
        slow.close()
    changes = [f for f in frames if f["type"] == "change"]
    resets = [f for f in frames if f["type"] == "reset"]
    # The reading client: every change arrived in order, or its loss was announced.
    assert _uncovered(frames, rounds) == [], "events lost without a reset"
    assert after["slow_clients_closed"] == before["slow_clients_closed"] + 1, after
    slow_changes = [f for f in got if f["type"] == "change"]
    assert len(slow_changes) < sent, "the slow client got everything: it did not stall"
    assert _uncovered(got, rounds, must_end=False) == [], "the slow client saw a silent gap"
    grown_mib = (rss_after - rss_before) / 1024
    fault_report(
        "client stops reading (send queue 200 frames)",
        sent=sent,
        received=len(changes),
        reset=len(resets),
        slow_client_got=len(slow_changes),
        slow_client_close_code=slow.close_code,
        closed_within_s=round(closed_after, 1),
        instance_rss_growth_mib=round(grown_mib, 1),
    )
    assert grown_mib < 64, f"the instance grew by {grown_mib:.0f} MiB"


def _uncovered(
    frames: list[dict[str, Any]], rounds: int, must_end: bool = True, sku: str = "BULK-"
) -> list[tuple[str, int]]:
    """The (pk, stock) updates of the rows whose sku starts with ``sku`` that a client
    neither got nor was told it missed: every stock value from 1 to ``rounds`` must
    arrive as a change, in order, or fall between two changes (or a start/end) with a
    ``reset`` frame between them. Without ``must_end`` (a client cut off), values after
    its last frame are not due.
    """
    seen: dict[str, list[tuple[int, int]]] = {}
    resets = [i for i, f in enumerate(frames) if f["type"] == "reset"]
    for index, frame in enumerate(frames):
        if frame["type"] == "change" and frame["data"]["sku"].startswith(sku):
            seen.setdefault(frame["pk"], []).append((index, frame["data"]["stock"]))
    missing = []
    for pk, values in seen.items():
        stocks_seen = [stock for _, stock in values]
        assert stocks_seen == sorted(set(stocks_seen)), f"{pk}: out of order or repeated"
        last = rounds if must_end else max(stocks_seen)
        for stock in range(1, last + 1):
            if stock in stocks_seen:
                continue
            after = max((i for i, v in values if v < stock), default=-1)
            until = min((i for i, v in values if v > stock), default=len(frames))
            if not any(after < r < until for r in resets):
                missing.append((pk, stock))
    return missing


async def test_a_vanished_client_is_found_by_keepalive_and_cleaned_up(
    stack: Stack, fault_report: Any
) -> None:
    # An instance pinging every second: a client that answers no ping is dropped.
    ping = ("--ws-ping-interval", "1", "--ws-ping-timeout", "1")
    with another_instance(stack, "C", uvicorn_args=ping) as c:
        async with websocket(c.ws_url, origin=c.origin, session_id=stack.session_id) as alive:
            await alive.subscribe(PRODUCT)
            ghost = await asyncio.to_thread(
                RawSocket, c.ws_url, origin=c.origin, session_id=stack.session_id
            )
            try:
                await asyncio.to_thread(ghost.send, {"type": "subscribe", "model": PRODUCT})
                assert (await asyncio.to_thread(ghost.receive) or {}).get("type") == "subscribed"
                assert (await status(c, stack.session_id))["subscriptions"] == 2

                async def ghost_gone() -> bool:
                    figures = await status(c, stack.session_id)
                    return bool(figures["subscriptions"] == 1 and figures["connections"] == 1)

                seconds = await poll(ghost_gone, 30, "the silent client was not cleaned up")
            finally:
                ghost.close()
            # The client that answers pings is still there and served.
            await alive.expect_nothing_queued()
    fault_report("client vanished (ping every 1 s)", cleaned_up_after_s=round(seconds, 1))


async def test_redis_killed_and_restarted_mid_stream_best_effort(
    stack: Stack, writer: Writer, fault_report: Any
) -> None:
    pk = stack.pks["OUTAGE"]
    b = stack.b
    async with websocket(b.ws_url, origin=b.origin, session_id=stack.session_id) as ws:
        await ws.subscribe(PRODUCT, str(pk))
        await writer.save(pk, 10)
        frames = [await ws.receive() for _ in range(10)]
        stack.redis.kill()
        during = await writer.save(pk, 10)  # held in the writer's outage buffer
        stack.redis.start()
        await writer.save(pk, 10)
        await writer.flush()
        # B either delivers all 30 or notices the lost log (new epoch) and resets us.
        frames += await changes_until(
            ws, lambda f: f["type"] == "reset" or f["data"]["stock"] == 30, 30
        )
        # Then one more change must arrive live, after a reset as after anything.
        await writer.save(pk, 1)
        frames += await changes_until(
            ws, lambda f: f["type"] == "change" and f["data"]["stock"] == 31, 30
        )
        _, data = await cached(b, stack.session_id, pk)
    received = stocks(frames)
    resets = [f for f in frames if f["type"] == "reset"]
    assert _uncovered(frames, 31, sku="OUTAGE") == [], "events lost without a reset"
    assert data["stock"] == 31, data
    fault_report(
        "Redis killed and restarted mid-stream (best_effort)",
        sent=31,
        received=len(received),
        reset=len(resets),
        slowest_save_during_outage_s=round(during["slowest_save_s"], 3),
    )


@contextmanager
def another_instance(stack: Stack, name: str, **options: Any) -> Iterator[Instance]:
    """One more instance of the stack's demo (same database and Redis), stopped after;
    it must not have logged a traceback."""
    instance = Instance(
        name, {**stack.b.env, "BROADCAST_INSTANCE_ID": f"fault-{name}"}, stack.directory,
        **options,
    )  # fmt: skip
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()
    assert "Traceback" not in instance.log_text(), instance.log_text()


def _drain(socket: RawSocket) -> list[dict[str, Any]]:
    frames = []
    while (frame := socket.receive()) is not None:
        frames.append(frame)
    return frames


def _rss_kib(instance: Instance) -> int:
    assert instance.process is not None
    for line in Path(f"/proc/{instance.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")

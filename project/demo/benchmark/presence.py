"""(i) Presence across instances: a join on instance A, seen by a subscriber on instance B.

A second uvicorn instance of the demo (A) starts beside B on the same Redis. A watcher
on B subscribes to one object; ``tabs`` connections on A subscribe to it too and, in
turn, send ``presence.join`` with a new state (``{"n": i}``), paced at ``rate`` joins a
second (each tab well within its ``BROADCAST_PRESENCE_RATE``). Each sample is the time
from sending a join on A to the watcher on B receiving the member list that carries
its state: A's join script in Redis, the notification, B's read of the whole list, and
B's send. One join at a time: the next is sent once the previous one was seen.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import AsyncExitStack
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from broadcast_app.dev.embedded_redis import free_port

from . import report
from .processes import BenchmarkError, Children, uvicorn_command

#: the object members join (it need not exist: the demo's Product has no object_check)
PK = "990001"
LABEL = "demo.product"
STARTUP_TIMEOUT = 60.0
#: seconds one join may take to be seen before the row fails
SEEN_TIMEOUT = 10.0


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


async def _subscribe(ws: ClientConnection) -> None:
    await ws.send(json.dumps({"type": "subscribe", "model": LABEL, "pk": PK}))
    while json.loads(await ws.recv()).get("type") != "subscribed":
        pass


async def _drain(ws: ClientConnection) -> None:
    """Read (and drop) what a tab receives: the lists go to every subscriber."""
    async for _frame in ws:
        pass


async def _watch(ws: ClientConnection, seen: dict[int, float], arrived: asyncio.Event) -> None:
    async for data in ws:
        frame = json.loads(data)
        if frame.get("type") != "presence" or not frame["members"]:
            continue
        n = frame["members"][0]["state"].get("n")
        if isinstance(n, int) and n not in seen:
            seen[n] = time.perf_counter()
            arrived.set()


async def measure(
    url_a: str, url_b: str, cookie: str, samples: int, rate: float, tabs: int
) -> list[float]:
    """Milliseconds from each join on A to its list on B."""
    async with AsyncExitStack() as stack:
        origin_b = url_b.replace("ws://", "http://").split("/ws/")[0]
        origin_a = url_a.replace("ws://", "http://").split("/ws/")[0]
        watcher = await stack.enter_async_context(_connect(url_b, cookie, origin_b))
        await _subscribe(watcher)
        joiners = []
        for _ in range(tabs):
            tab = await stack.enter_async_context(_connect(url_a, cookie, origin_a))
            await _subscribe(tab)
            joiners.append(tab)
        seen: dict[int, float] = {}
        arrived = asyncio.Event()
        tasks = [asyncio.create_task(_watch(watcher, seen, arrived))]
        tasks += [asyncio.create_task(_drain(tab)) for tab in joiners]
        latencies: list[float] = []
        try:
            for n in range(samples):
                started = time.perf_counter()
                frame = {"type": "presence.join", "model": LABEL, "pk": PK, "state": {"n": n}}
                await joiners[n % tabs].send(json.dumps(frame))
                async with asyncio.timeout(SEEN_TIMEOUT):
                    while n not in seen:
                        arrived.clear()
                        await arrived.wait()
                latencies.append((seen[n] - started) * 1000)
                await asyncio.sleep(max(0.0, started + 1 / rate - time.perf_counter()))
        except TimeoutError:
            detail = f"Join {n} on A was not seen on B within {SEEN_TIMEOUT:g}s."
            raise BenchmarkError(detail) from None
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return latencies


def _wait_http(process: subprocess.Popen[Any], children: Children, url: str) -> None:
    """Return once ``url`` answers HTTP (``wait_http`` would take the earlier rows'
    children, which exited as they should, for failures)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if process.poll() is not None:
            raise BenchmarkError(f"Instance A exited:\n{children.log_tail('presence-a')}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # any status: the server is up
        except OSError:
            if time.monotonic() > deadline:
                raise BenchmarkError(f"No HTTP answer from {url}.") from None
            time.sleep(0.1)  # readiness polling, bounded by the deadline


def presence_row(
    children: Children, env: dict[str, str], port_b: int, cookie: str, plan: Any
) -> dict[str, Any]:
    """Start instance A, then time ``plan.presence_samples`` joins on A seen on B."""
    port_a = free_port()
    env_a = {**env, "BROADCAST_INSTANCE_ID": "benchmark-a"}
    process = children.start(
        "presence-a", uvicorn_command("project.asgi:application", port_a), env_a
    )
    _wait_http(process, children, f"http://127.0.0.1:{port_a}/admin/login/")
    latencies = asyncio.run(
        measure(
            f"ws://127.0.0.1:{port_a}/ws/broadcast/",
            f"ws://127.0.0.1:{port_b}/ws/broadcast/",
            cookie,
            plan.presence_samples,
            plan.presence_rate,
            plan.presence_tabs,
        )
    )
    return {
        "samples": len(latencies),
        "rate": plan.presence_rate,
        "tabs": plan.presence_tabs,
        **report.latency_summary(latencies),
    }


def presence_line(row: dict[str, Any]) -> str:
    return (
        f"(i) presence join on instance A -> member list on instance B, ms, "
        f"{row['samples']} joins at {row['rate']:g}/s from {row['tabs']} tabs: "
        f"p50 {row['p50_ms']:.2f} p90 {row['p90_ms']:.2f} p99 {row['p99_ms']:.2f} "
        f"max {row['max_ms']:.2f}"
    )

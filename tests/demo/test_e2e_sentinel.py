"""End to end through a Sentinel failover: two uvicorn instances, a real websocket client.

The demo instances use Redis Sentinel (``REDIS_SENTINELS``). A product is changed
through instance A's admin about 20 times a second while a websocket client of instance
B watches it; the master is killed (SIGKILL) mid-stream. Neither instance is restarted:
the client must see changes again after the failover, and every change must have
reached it or be covered by a ``reset`` frame after the last change it did see.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e_support import (
    Instance,
    admin_change,
    demo_stack,
    http_client,
    login,
    websocket,
)
from tests.sentinel_support import MASTER_NAME, Arrivals, SentinelSetup, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

ADMIN = "e2e-admin"
SETUP = """
import json, os
from decimal import Decimal
from django.contrib.auth.models import User
from project.demo.models import Product

User.objects.create_superuser("e2e-admin", password=os.environ["E2E_PASSWORD"])
product = Product.objects.create(name="Failover", sku="FAILOVER", price=Decimal("1.00"))
print(json.dumps(product.pk))
"""
CHANGE_EVERY = 0.05  # seconds between two admin saves
RECOVERY_TIMEOUT = 30.0
SETTLE_TIMEOUT = 15.0


class Watcher(Arrivals):
    """What the websocket client saw: the product's stock values, or resets."""

    def record(self, frame: dict[str, Any]) -> None:
        if frame["type"] == "change":
            self.log.append(int(frame["data"]["stock"]))
        elif frame["type"] == "reset":
            self.log.append(f"reset:{frame['reason']}")


async def test_a_websocket_client_sees_changes_again_after_a_failover(
    sentinel_setup: SentinelSetup, tmp_path: Path, fault_report: Any
) -> None:
    password = secrets.token_urlsafe(16)
    sentinels = ",".join(f"{host}:{port}" for host, port in sentinel_setup.addresses)
    # demo_stack() also checks that neither instance logged a traceback (the Redis
    # outage filter turns channels-redis' own into warnings while there is no master).
    with demo_stack(
        None, tmp_path, SETUP, password, "sentinel-setup",
        REDIS_SENTINELS=sentinels, REDIS_MASTER_NAME=MASTER_NAME,
    ) as demo:  # fmt: skip
        session_id = await asyncio.to_thread(login, demo.a.base_url, ADMIN, password)

        async def fail_over() -> Awaitable[float]:
            sentinel_setup.master.kill()
            return asyncio.ensure_future(asyncio.to_thread(sentinel_setup.wait_for_failover))

        figures = await run_failover(
            fail_over, demo.a.base_url, demo.b, session_id, demo.setup_output
        )
    fault_report("sentinel failover, two instances, websocket client", **figures)


async def run_failover(
    fail_over: Callable[[], Awaitable[Awaitable[float]]],
    admin_url: str,
    b: Instance,
    session_id: str,
    pk: int,
) -> dict[str, Any]:
    """Change product ``pk`` through A's admin while B's websocket client watches it;
    after ten changes arrived, ``fail_over()`` kills the master (it returns the failover's
    duration to await). The figures of the run, once every change arrived or is covered."""
    watcher = Watcher()
    sent: list[int] = []
    async with (
        websocket(b.ws_url, origin=b.origin, session_id=session_id) as socket,
        http_client(admin_url, session_id) as admin,
    ):
        await socket.subscribe("demo.product")

        async def watch() -> None:
            while True:
                watcher.record(await socket.receive(timeout=RECOVERY_TIMEOUT + SETTLE_TIMEOUT))

        async def change() -> None:
            value = len(sent) + 1
            await admin_change(admin, "demo.product", pk, stock=str(value))
            sent.append(value)
            await asyncio.sleep(CHANGE_EVERY)

        watching = asyncio.ensure_future(watch())
        try:
            while len(watcher.received) < 10:
                await change()
                assert len(sent) < 100, "no change reached the client before the failover"
            killed_at = time.monotonic()
            failover = await fail_over()
            killed_after = sent[-1]
            while not failover.done() or max(watcher.received) <= killed_after:
                await change()
                assert time.monotonic() - killed_at < RECOVERY_TIMEOUT, "nothing after failover"
            flowing_after = time.monotonic() - killed_at
            for _ in range(10):
                await change()
            # The last changes, or a reset, are on their way (asserted below).
            await eventually(lambda: not watcher.uncovered(sent), SETTLE_TIMEOUT)
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
    assert watcher.uncovered(sent) == [], watcher.log
    assert set(sent[-10:]) <= watcher.received, watcher.log
    return {
        **watcher.figures(len(sent)),
        "failover_s": round(await failover, 1),
        "flowing_again_s": round(flowing_after, 1),
    }

"""Every common ASGI server serves the demo end to end: uvicorn, daphne (no lifespan:
the first request starts the listener), hypercorn and granian.

For each, two instances of the demo run under that server on one Redis and a fresh
database: both report their listener subscribed, a change saved through A's admin
reaches a websocket client of B and B's cache, and both stop on SIGTERM, by
themselves, without a traceback.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
from pathlib import Path

import pytest

from broadcast_app.dev.embedded_redis import EmbeddedRedis
from broadcast_app.events.wire import origin_id
from tests.e2e_support import (
    FRAME_TIMEOUT,
    SERVERS,
    Instance,
    admin_change,
    demo_stack,
    http_client,
    login,
    websocket,
)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

SETUP = """
import json, os
from decimal import Decimal
from django.contrib.auth.models import User
from project.demo.models import Product

User.objects.create_superuser("admin", password=os.environ["E2E_PASSWORD"])
product = Product.objects.create(
    name="Served", sku="SERVED", price=Decimal("10.00"), stock=5, cost_price=Decimal("4.00")
)
print(json.dumps(product.pk))
"""


async def wait_listening(instance: Instance, session_id: str) -> None:
    """Until the instance's own figures say its listener is subscribed (bounded)."""
    async with http_client(instance.base_url, session_id) as client:
        async with asyncio.timeout(FRAME_TIMEOUT):
            while True:
                response = await client.get("/broadcast/status.json")
                assert response.status_code == 200, response.text
                if response.json()["instance"]["listening"]:
                    return
                await asyncio.sleep(0.1)  # polling a status page, bounded by the timeout


@pytest.mark.parametrize("server", SERVERS)
async def test_server_serves_the_demo_end_to_end(
    server: str, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    password = secrets.token_urlsafe(16)
    with demo_stack(redis_server.url, tmp_path, SETUP, password, "servers", server=server) as demo:
        a, b, pk = demo.a, demo.b, demo.setup_output
        assert (a.server, b.server) == (server, server)
        session_id = await asyncio.to_thread(login, a.base_url, "admin", password)
        for instance in (a, b):
            await wait_listening(instance, session_id)
        async with (
            http_client(a.base_url, session_id) as http_a,
            http_client(b.base_url, session_id) as http_b,
            websocket(b.ws_url, origin=b.origin, session_id=session_id) as ws,
        ):
            await ws.subscribe("demo.product", str(pk))
            await admin_change(http_a, "demo.product", pk, stock="42")
            event = await ws.receive()
            assert (event["type"], event["op"], event["pk"]) == ("change", "updated", str(pk))
            assert (event["changed"], event["data"]["stock"]) == (["stock"], 42)
            # Opaque: a keyed hash of the saving instance's id, no host or pid.
            assert event["origin"] == origin_id("e2e-A", a.env["DJANGO_SECRET_KEY"])
            response = await http_b.get(f"/demo/products/{pk}.json")
            assert (response.headers["X-Cache"], response.json()) == ("hit", event["data"])
        for instance in (a, b):
            instance.stop()
            assert instance.stopped_cleanly, f"{server} needed SIGKILL:\n{instance.log_text()}"
            # uvicorn re-raises the SIGTERM it handled, as its shutdown's last step.
            assert instance.exit_code in (0, -signal.SIGTERM), instance.log_text()

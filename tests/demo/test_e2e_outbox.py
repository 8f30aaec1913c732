"""End to end in ``outbox`` mode: two uvicorn instances, each running the relay thread.

An admin change on instance A (an atomic request) and a ``manage.py shell`` process
that dies right after its commit both reach a websocket client on instance B, once;
both instances shut down without a traceback (the relay thread stops with the listener).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from broadcast_app.dev.embedded_redis import EmbeddedRedis
from broadcast_app.events.wire import origin_id
from tests.e2e_support import (
    DemoStack,
    admin_change,
    demo_stack,
    http_client,
    login,
    manage_async,
    websocket,
)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

PRODUCT = "demo.product"
ADMIN = "outbox-admin"

SETUP = """
import json, os
from decimal import Decimal
from django.contrib.auth.models import User
from project.demo.models import Product

User.objects.create_superuser("outbox-admin", password=os.environ["E2E_PASSWORD"])
product = Product.objects.create(name="Outbox", sku="OUTBOX-E2E", price=Decimal("1.00"))
# Relay the setup's own rows now: their events must not reach the test's client later.
from broadcast_app.publish.relay import Relay
assert not Relay().drain().failed
print(json.dumps({"pk": product.pk}))
"""

# Commits, then dies at once: neither atexit nor a relay runs in this process.
DIE_AFTER_COMMIT = """
import os
from django.db import transaction
from project.demo.models import Product
with transaction.atomic():
    Product.objects.create(name="Dies", sku="OUTBOX-DIES", price="2.00")
os._exit(0)
"""


@pytest.fixture(scope="module")
def stack(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[DemoStack, str]]:
    directory: Path = tmp_path_factory.mktemp("e2e-outbox")
    password = secrets.token_urlsafe(16)
    with pytest.MonkeyPatch.context() as patch:
        # The instances, the setup and the shell read their settings from the environment.
        patch.setenv("BROADCAST_DELIVERY", "outbox")
        with demo_stack(redis_server.url, directory, SETUP, password, "outbox-setup") as demo:
            yield demo, password


async def test_admin_change_and_a_dead_process_reach_b_once(
    stack: tuple[DemoStack, str],
) -> None:
    demo, password = stack
    pk = demo.setup_output["pk"]
    session_id = login(demo.a.base_url, ADMIN, password)
    async with (
        http_client(demo.a.base_url, session_id) as http_a,
        websocket(demo.b.ws_url, origin=demo.b.origin, session_id=session_id) as ws,
    ):
        await ws.subscribe(PRODUCT, ref="all")
        await admin_change(http_a, PRODUCT, pk, stock="42")
        event = await ws.receive()
        assert (event["op"], event["pk"], event["changed"]) == ("updated", str(pk), ["stock"])
        # The saving instance (opaque), whichever relayed it.
        assert event["origin"] == origin_id("e2e-A", demo.env["DJANGO_SECRET_KEY"])

        code, out, err = await manage_async("shell", "-c", DIE_AFTER_COMMIT, env=demo.env)
        assert code == 0, out + err
        event = await ws.receive()  # relayed by an instance within BROADCAST_OUTBOX_INTERVAL
        assert (event["op"], event["data"]["sku"]) == ("created", "OUTBOX-DIES")
        await ws.expect_nothing_queued()

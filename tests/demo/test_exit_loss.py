"""No silent loss at exit: a process that exits while Redis hangs leaves its events to a relay.

A real ``redis-server`` of this module's own is frozen with SIGSTOP (it accepts
connections and answers nothing, as a hung Redis does) while a ``manage.py shell``
process updates ``ROWS`` products and exits. In ``best_effort`` mode those events were
dropped at exit, with nothing said to anyone and caches stale until their TTL. Now the
process writes them to the outbox table at exit, within a bounded time, and the relay
of the running instance publishes them once Redis answers (SIGCONT): every row's final
state must reach the instance's websocket client, and the instance's cache must serve
the current rows.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from broadcast_app.dev.embedded_redis import EmbeddedRedis
from tests.conftest import FIGURES
from tests.e2e_support import (
    BASE_DIR,
    Instance,
    fresh_database,
    http_client,
    last_json_line,
    login,
    manage,
    running_instances,
    subprocess_env,
    websocket,
)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

PRODUCT = "demo.product"
ADMIN = "exit-admin"
# Fewer than the demo cache holds (LocMemCache: 300 entries), so that every row stays cached.
ROWS = 250
#: the default: the exit waits this long for Redis, then as long again for the spill
FLUSH_TIMEOUT = 2.0
#: interpreter start-up is not in the measure, its teardown is: room for a loaded machine
SLACK = 2.0
DELIVERY_TIMEOUT = 60.0

SETUP = f"""
import json, os
from decimal import Decimal
from django.contrib.auth.models import User
from project.demo.models import Product

User.objects.create_superuser("{ADMIN}", password=os.environ["E2E_PASSWORD"])
Product.objects.bulk_create(
    Product(name=f"Exit {{i}}", sku=f"EXIT-{{i}}", price=Decimal("1.00"), stock=0,
            cost_price=Decimal("0.50"))
    for i in range({ROWS})
)
print(json.dumps(list(Product.objects.order_by("pk").values_list("pk", flat=True))))
"""

# Saves each row once (autocommit, as a script or a worker does), says so, and exits:
# the publisher's exit handler runs after the last line.
SAVE_AND_EXIT = """
import json, time
from project.demo.models import Product
for product in Product.objects.order_by("pk"):
    product.stock = 1
    product.save()
print(json.dumps({"saved": time.time()}), flush=True)
"""


@dataclass
class Stack:
    instance: Instance
    env: dict[str, str]
    redis: EmbeddedRedis
    pks: list[int]
    session_id: str


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    password = secrets.token_urlsafe(16)
    with (
        EmbeddedRedis() as redis,
        fresh_database(os.environ.get("DATABASE_URL"), tmp_path) as database_url,
    ):
        env = subprocess_env(
            REDIS_URL=redis.url,
            DATABASE_URL=database_url,
            DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
            DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
            DJANGO_DEBUG="0",
            BROADCAST_INSTANCE_ID="exit-setup",
            PYTHONUNBUFFERED="1",
        )
        manage("migrate", "--noinput", env=env)
        setup = manage("shell", "-c", SETUP, env={**env, "E2E_PASSWORD": password})
        pks = last_json_line(setup.stdout)
        envs = {"A": {**env, "BROADCAST_INSTANCE_ID": "exit-A"}}
        try:
            with running_instances(envs, tmp_path) as (a,):
                yield Stack(a, env, redis, pks, login(a.base_url, ADMIN, password))
                logs = a.log_text()
        finally:
            assert redis.process is not None
            os.kill(redis.process.pid, signal.SIGCONT)  # never leave it frozen
        assert "Traceback" not in logs, logs


async def stocks_served(stack: Stack) -> dict[int, tuple[str, int]]:
    """Each product's ``X-Cache`` and stock as the instance serves it."""
    served = {}
    async with http_client(stack.instance.base_url, stack.session_id) as client:
        for pk in stack.pks:
            response = await client.get(f"/demo/products/{pk}.json")
            assert response.status_code == 200, response.text
            served[pk] = (response.headers["X-Cache"], int(response.json()["stock"]))
    return served


async def test_events_of_a_process_that_exits_while_redis_hangs_are_not_lost(
    stack: Stack,
) -> None:
    a = stack.instance
    assert stack.redis.process is not None
    redis_pid = stack.redis.process.pid
    async with websocket(a.ws_url, origin=a.origin, session_id=stack.session_id) as ws:
        await ws.subscribe(PRODUCT)
        await stocks_served(stack)  # every row cached at stock 0
        assert set((await stocks_served(stack)).values()) == {("hit", 0)}

        os.kill(redis_pid, signal.SIGSTOP)
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "manage.py", "shell", "-v", "0", "-c", SAVE_AND_EXIT),
            cwd=BASE_DIR,
            env={**stack.env, "BROADCAST_INSTANCE_ID": "exit-saver"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None and process.stderr is not None
        line = await asyncio.wait_for(process.stdout.readline(), 120)
        saved_at = time.monotonic()
        assert "saved" in json.loads(line), line
        err = (await asyncio.wait_for(process.stderr.read(), 30)).decode()
        await asyncio.wait_for(process.wait(), 30)
        exit_took = time.monotonic() - saved_at
        assert process.returncode == 0, err
        os.kill(redis_pid, signal.SIGCONT)
        resumed_at = time.monotonic()

        # Every row's final state arrives as a change: none is left to a reset.
        final: set[str] = set()
        resets = 0
        while len(final) < ROWS:
            frame = await ws.receive(DELIVERY_TIMEOUT)
            if frame["type"] == "reset":
                resets += 1  # "disconnected" while Redis was frozen: expected, not enough
            elif frame["data"]["stock"] == 1:
                final.add(frame["pk"])
        delivered_after = time.monotonic() - resumed_at
        served = await stocks_served(stack)
    assert exit_took <= 2 * FLUSH_TIMEOUT + SLACK, (exit_took, err)
    assert "written to the outbox table" in err, err
    assert final == {str(pk) for pk in stack.pks}
    stale = {pk: state for pk, state in served.items() if state[1] != 1}
    assert stale == {}, f"{len(stale)} rows served stale"
    FIGURES.append(
        f"Process exits while Redis hangs (SIGSTOP), best_effort: saved {ROWS}, exit took "
        f"{exit_took:.1f}s after the last save, delivered {len(final)} of {ROWS} "
        f"{delivered_after:.1f}s after Redis resumed (resets while frozen: {resets}), "
        f"served stale afterwards: {len(stale)}"
    )

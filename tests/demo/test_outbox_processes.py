"""The outbox across real processes: a saver that dies right after commit, and
``manage.py broadcast_relay`` as a process of its own (SQLite file or PostgreSQL)."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from broadcast_app.dev.embedded_redis import EmbeddedRedis
from tests.conftest import FIGURES
from tests.e2e_support import BASE_DIR, fresh_database, manage, subprocess_env
from tests.publish.test_outbox import skus_in_log

pytestmark = pytest.mark.e2e

DEADLINE = 20.0

# Commits one product, then dies at once: no atexit, no flush, no relay in this process.
DIE_AFTER_COMMIT = """
import os, sys
from django.db import transaction
from project.demo.models import Product
with transaction.atomic():
    Product.objects.create(sku=sys.argv[-1], name="dies", price="1.00", stock=1)
os._exit(0)
"""

SAVE_MANY = """
import sys
from project.demo.models import Product
prefix, count = sys.argv[-2], int(sys.argv[-1])
for i in range(count):
    Product.objects.create(sku=f"{prefix}-{i}", name="many", price="1.00", stock=i)
"""


@pytest.fixture(scope="module")
def outbox_env(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    directory: Path = tmp_path_factory.mktemp("outbox")
    with fresh_database(os.environ.get("DATABASE_URL"), directory) as database_url:
        env = subprocess_env(
            REDIS_URL=redis_server.url,
            DATABASE_URL=database_url,
            BROADCAST_DELIVERY="outbox",
            PYTHONUNBUFFERED="1",
        )
        manage("migrate", "--noinput", env=env)
        yield env


def demo_skus(client: redis.Redis) -> list[str | None]:
    """The ``sku`` of every event in the log of the demo's products, which these save."""
    return skus_in_log(client, "demo.product")


def shell(script: str, *args: str, env: dict[str, str]) -> None:
    # ``shell -c`` takes no extra arguments: pass them in sys.argv through a wrapper.
    code = f"import sys; sys.argv += {list(args)!r}\n{script}"
    manage("shell", "-c", code, env=env)


def test_event_committed_by_a_process_that_died_is_relayed_later(
    outbox_env: dict[str, str], redis_client: redis.Redis
) -> None:
    sku = f"DIE-{uuid.uuid4().hex[:8]}"
    shell(DIE_AFTER_COMMIT, sku, env=outbox_env)
    assert sku not in demo_skus(redis_client)  # no relay ran: still in the outbox
    first = manage("broadcast_relay", "--once", env=outbox_env)
    assert "relayed 1 event(s) from 1 outbox row(s)" in first.stdout
    assert demo_skus(redis_client).count(sku) == 1
    again = manage("broadcast_relay", "--once", env=outbox_env)
    assert "relayed 0 event(s) from 0 outbox row(s)" in again.stdout
    FIGURES.append(
        "Saving process killed (os._exit) right after commit [outbox]: sent 1, "
        f"published by a later relay {demo_skus(redis_client).count(sku)}, lost 0"
    )


def test_two_relay_commands_publish_each_event_once_in_order(
    outbox_env: dict[str, str], redis_client: redis.Redis
) -> None:
    """Two ``broadcast_relay`` processes (as on two hosts) while a third process saves;
    both stop cleanly on SIGTERM."""
    prefix, count = f"MANY-{uuid.uuid4().hex[:8]}", 40
    relays = [
        subprocess.Popen(
            [sys.executable, "manage.py", "broadcast_relay", "--interval", "0.1"],
            cwd=BASE_DIR,
            env=outbox_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = []
    try:
        for relay in relays:
            # Its first line follows its SIGTERM handler: a relay still starting when
            # the other had relayed everything died of the signal (CI, once).
            assert relay.stdout is not None
            ready, _, _ = select.select([relay.stdout], [], [], DEADLINE)
            assert ready, "a relay did not start"
            assert relay.stdout.readline().startswith("Relaying the outbox"), relay.poll()
        shell(SAVE_MANY, prefix, str(count), env=outbox_env)
        expected = [f"{prefix}-{i}" for i in range(count)]
        deadline = time.monotonic() + DEADLINE
        while len([s for s in demo_skus(redis_client) if s and s.startswith(prefix)]) < count:
            assert time.monotonic() < deadline, "the relays did not publish every row"
            time.sleep(0.1)  # polling the log, bounded by the deadline
        for relay in relays:
            relay.send_signal(signal.SIGTERM)
        for relay in relays:
            outputs.append(relay.communicate(timeout=DEADLINE))
    finally:
        for relay in relays:
            if relay.poll() is None:
                relay.kill()
                relay.communicate()
    assert [s for s in demo_skus(redis_client) if s and s.startswith(prefix)] == expected
    relayed = 0
    for relay, (out, err) in zip(relays, outputs, strict=True):
        assert relay.returncode == 0, err
        assert "Traceback" not in err, err
        relayed += int(re.search(r"relayed (\d+) event", out).group(1))  # type: ignore[union-attr]
    assert relayed == count

"""The outbox across real processes: a saver that dies right after commit, and
``manage.py broadcast_relay`` as a process of its own (SQLite file or PostgreSQL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from broadcast_app.embedded_redis import EmbeddedRedis
from tests.conftest import FIGURES
from tests.e2e_support import BASE_DIR, fresh_database, manage, subprocess_env
from tests.test_outbox import skus_in_log

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


def shell(script: str, *args: str, env: dict[str, str]) -> None:
    # ``shell -c`` takes no extra arguments: pass them in sys.argv through a wrapper.
    code = f"import sys; sys.argv += {list(args)!r}\n{script}"
    manage("shell", "-c", code, env=env)


def test_event_committed_by_a_process_that_died_is_relayed_later(
    outbox_env: dict[str, str], redis_client: redis.Redis
) -> None:
    sku = f"DIE-{uuid.uuid4().hex[:8]}"
    shell(DIE_AFTER_COMMIT, sku, env=outbox_env)
    assert sku not in skus_in_log(redis_client)  # no relay ran: still in the outbox
    first = manage("broadcast_relay", "--once", env=outbox_env)
    assert "relayed 1 event(s) from 1 outbox row(s)" in first.stdout
    assert skus_in_log(redis_client).count(sku) == 1
    again = manage("broadcast_relay", "--once", env=outbox_env)
    assert "relayed 0 event(s) from 0 outbox row(s)" in again.stdout
    FIGURES.append(
        "Saving process killed (os._exit) right after commit [outbox]: sent 1, "
        f"published by a later relay {skus_in_log(redis_client).count(sku)}, lost 0"
    )


def test_relay_command_runs_until_sigterm(
    outbox_env: dict[str, str], redis_client: redis.Redis
) -> None:
    prefix, count = f"MANY-{uuid.uuid4().hex[:8]}", 20
    relay = subprocess.Popen(
        [sys.executable, "manage.py", "broadcast_relay", "--interval", "0.2"],
        cwd=BASE_DIR,
        env=outbox_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        shell(SAVE_MANY, prefix, str(count), env=outbox_env)
        expected = [f"{prefix}-{i}" for i in range(count)]
        deadline = time.monotonic() + DEADLINE
        while [s for s in skus_in_log(redis_client) if s and s.startswith(prefix)] != expected:
            assert time.monotonic() < deadline, "the relay did not publish every row"
            time.sleep(0.1)  # polling the log, bounded by the deadline
        relay.send_signal(signal.SIGTERM)
        out, err = relay.communicate(timeout=DEADLINE)
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.communicate()
    assert relay.returncode == 0, err
    assert f"relayed {count} event(s) from {count} outbox row(s)" in out, out + err
    assert "Traceback" not in err

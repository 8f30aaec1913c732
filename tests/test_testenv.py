"""A user's tests publish nothing to a real Redis unless they ask
(broadcast_app.transport.testenv).

Run as a user's test process would: a project's settings without
``BROADCAST_PUBLISH_IN_TESTS`` (tests/user_settings.py), a Redis that stands for the one
running instances share, and Django's test environment set up as ``manage.py test`` and
pytest-django do.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from django.test import override_settings

from broadcast_app.dev.embedded_redis import EmbeddedRedis
from broadcast_app.events.wire import split_hidden
from broadcast_app.testing import capture_events
from broadcast_app.transport.routes import route
from tests.e2e_support import BASE_DIR, subprocess_env
from tests.logged import logged_events
from tests.testapp.models import Product

SCRIPT = """
import json, time
import django
django.setup()
from django.core.management import call_command
from django.test.utils import setup_test_environment, teardown_test_environment
from broadcast_app.publish import publisher
from broadcast_app.testing import capture_events
from tests.testapp.models import Product

call_command("migrate", verbosity=0)

def make(sku):
    Product.objects.create(name=sku, sku=sku, price="1.00", cost_price="0.50", stock=1)

setup_test_environment()
with capture_events() as events:
    make("CAPTURED")
make("PLAIN")
started = publisher._publisher._thread is not None
with capture_events(forward=True) as forwarded:
    make("FORWARDED")
publisher.flush(5)
teardown_test_environment()
print(json.dumps({"captured": [e["data"]["sku"] for e in events + forwarded],
                  "thread_started_before_forward": started}), flush=True)
print(time.monotonic(), flush=True)
"""


@pytest.mark.slow
def test_nothing_reaches_redis_from_a_users_test_process_unless_asked(tmp_path: Path) -> None:
    with EmbeddedRedis() as server:
        env = subprocess_env(
            DJANGO_SETTINGS_MODULE="tests.user_settings",
            REDIS_URL=server.url,
            DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        )
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT],
            cwd=BASE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        exited = time.monotonic()
        assert result.returncode == 0, result.stderr
        assert "still queued" not in result.stderr
        report_line, printed_at = result.stdout.strip().splitlines()[-2:]
        report = json.loads(report_line)
        client = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            log = logged_events(client, route("testapp.product"))
        finally:
            client.close()
    # capture_events() saw every event; only the block that asked reached Redis.
    assert report["captured"] == ["CAPTURED", "FORWARDED"]
    assert [json.loads("{" + split_hidden(body)[0])["pk"] for _, _, body in log] == ["3"]
    # No publisher thread until a test asked to publish: nothing to wait for at exit.
    assert report["thread_started_before_forward"] is False
    assert exited - float(printed_at) < 1.5


@pytest.mark.django_db(transaction=True)
def test_capture_events_sees_every_event_while_publishing_is_held_back(
    redis_client: redis.Redis,
) -> None:
    stream = route("testapp.product").stream
    before = redis_client.xlen(stream)
    with override_settings(BROADCAST_PUBLISH_IN_TESTS=False), capture_events() as events:
        Product.objects.create(name="A", sku="A-1", price="1.00", cost_price="0.5", stock=1)
    events.assert_one(op="created", model="testapp.product")
    with override_settings(BROADCAST_PUBLISH_IN_TESTS=False):
        Product.objects.create(name="B", sku="B-1", price="1.00", cost_price="0.5", stock=1)
    from broadcast_app.publish import publisher

    publisher.flush(5)
    assert redis_client.xlen(stream) == before

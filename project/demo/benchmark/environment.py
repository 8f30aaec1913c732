"""What a run needs around it: Redis, a database, a user to log in as, its products.

Each is a context manager that undoes what it did, so a run leaves nothing behind: the
temporary SQLite file goes with its directory, and on a DATABASE_URL database the
benchmark user and products are deleted.
"""

from __future__ import annotations

import copy
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import DEFAULT_DB_ALIAS, connections
from django.test.utils import override_settings

from broadcast_app.conf import conf
from broadcast_app.dev.embedded_redis import EmbeddedRedis

from .processes import BenchmarkError, ignoring_signals
from .saves import Products

Write = Callable[[str], None]


@contextmanager
def redis_server(url: str | None, write: Write) -> Iterator[tuple[str, int | None]]:
    """Yield the Redis URL of the run, and its server's pid when we started it."""
    if url:
        write(f"Using Redis at {url}.")
        yield url, None
        return
    server = EmbeddedRedis()
    try:
        server.start()
        assert server.process is not None
        write(f"Started a throwaway redis-server at {server.url}.")
        yield server.url, server.process.pid
    finally:
        with ignoring_signals():
            server.stop()


@contextmanager
def database(tmp: Path) -> Iterator[str]:
    """Yield the DATABASE_URL every process uses: the environment's, or a temp SQLite file."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    connection = connections[DEFAULT_DB_ALIAS]
    if connection.vendor != "sqlite":
        raise BenchmarkError("Without DATABASE_URL the benchmark needs the default SQLite.")
    path = tmp / "benchmark.sqlite3"
    # As Django's test runner switches to a test database: in place, on the connection.
    original = connection.settings_dict["NAME"]
    connection.close()
    connection.settings_dict["NAME"] = str(path)
    try:
        yield f"sqlite:///{path}"
    finally:
        connection.close()
        connection.settings_dict["NAME"] = original


@contextmanager
def layers_on(url: str) -> Iterator[None]:
    """Point this process's channel layer (so its publisher) at the run's Redis."""
    layers: dict[str, Any] = copy.deepcopy(settings.CHANNEL_LAYERS)
    layers[conf.BROADCAST_CHANNEL_LAYER].setdefault("CONFIG", {})["hosts"] = [url]
    with override_settings(CHANNEL_LAYERS=layers):
        yield


@contextmanager
def benchmark_data() -> Iterator[tuple[str, str, Products]]:
    """A staff user allowed to view products, and a product factory; removed afterwards."""
    run_id = secrets.token_hex(4)
    username, password = f"benchmark-{run_id}", secrets.token_urlsafe(16)
    user = get_user_model().objects.create_user(username, password=password, is_staff=True)
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="demo", codename="view_product")
    )
    products = Products(f"benchmark-{run_id}")
    try:
        yield username, password, products
    finally:
        with ignoring_signals(), override_settings(BROADCAST_ENABLED=False):
            products.delete_all()
            user.delete()


def login(base_url: str, username: str, password: str) -> str:
    """Log in through the admin login form; return the ``Cookie`` header for websockets."""
    with httpx.Client(base_url=base_url, timeout=10) as http:
        page = http.get("/admin/login/")
        found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        if found is None:
            raise BenchmarkError(f"No CSRF token on {base_url}/admin/login/.")
        http.post(
            "/admin/login/?next=/admin/",
            data={
                "username": username,
                "password": password,
                "csrfmiddlewaretoken": found.group(1),
                "next": "/admin/",
            },
        )
        if "sessionid" not in http.cookies:
            raise BenchmarkError("The admin login failed: no sessionid cookie.")
        return "; ".join(f"{name}={value}" for name, value in http.cookies.items())

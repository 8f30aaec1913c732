"""The demo's pages, rendered by the demo project itself (its settings, its database).

The library's tests run on their own settings (tests/settings.py), without the demo app:
the demo's pages are rendered here by a ``manage.py shell`` of the demo, with Django's
test client, on a fresh database.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.e2e_support import fresh_database, last_json_line, manage, subprocess_env

#: a cost price no page may ever show
SECRET = "31337.00"

RENDER = f"""
import json
from decimal import Decimal
from django.contrib.auth.models import User
from django.test import Client, override_settings
from django.test.utils import setup_test_environment
from project.demo.models import Product

setup_test_environment()
with override_settings(BROADCAST_ENABLED=False):
    Product.objects.create(
        name="Anvil <b>heavy</b>", sku="AN-1", price=Decimal("12.5"), stock=3,
        cost_price=Decimal("{SECRET}"),
    )
client = Client()
client.force_login(User.objects.create_superuser("boss", password="x"))
page = client.get("/").content.decode()
anonymous = Client().get("/").content.decode()
print(json.dumps({{"page": page, "anonymous": anonymous}}))
"""


def render_index(redis_server: Any, directory: Path) -> dict[str, str]:
    """The demo's index page, as a superuser and anonymously."""
    with fresh_database(os.environ.get("DATABASE_URL"), directory) as database_url:
        env = subprocess_env(REDIS_URL=redis_server.url, DATABASE_URL=database_url)
        manage("migrate", "--noinput", env=env)
        rendered: dict[str, str] = last_json_line(manage("shell", "-c", RENDER, env=env).stdout)
    return rendered


def test_the_demo_page_is_tags_only(redis_server: Any, tmp_path: Path) -> None:
    rendered = render_index(redis_server, tmp_path)
    page = rendered["page"]
    assert "broadcast_app/js/page.js" in page
    assert 'id="products"' in page and "data-broadcast-table" in page
    assert 'id="spotlight"' in page and 'data-broadcast-field="stock"' in page
    assert "demo/js/" not in page  # no page script of its own
    assert SECRET not in page
    anonymous = rendered["anonymous"]
    assert "data-broadcast" not in anonymous and "page.js" not in anonymous

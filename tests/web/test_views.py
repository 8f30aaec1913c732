"""The staff dashboard and ``status.json``: staff only, the figures, never event data."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client, override_settings

from broadcast_app.conf import conf
from broadcast_app.events.wire import origin_id
from broadcast_app.instance.feed import feed
from tests.conftest import layers_for

pytestmark = pytest.mark.django_db

STATUS = "/broadcast/status.json"
DASHBOARD = "/broadcast/"


@pytest.fixture
def staff(client: Client) -> Client:
    """Staff allowed to see testapp.product."""
    user = User.objects.create_user("staff", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_product"))
    client.force_login(user)
    return client


@pytest.fixture
def staff_without_perm(client: Client) -> Client:
    """Staff without testapp.product's view permission."""
    client.force_login(User.objects.create_user("blind", password="x", is_staff=True))
    return client


def record_event(**extra: Any) -> None:
    feed.record(
        {
            "id": "1-0", "op": "updated", "model": "testapp.product", "pk": "7",
            "data": {"id": 7, "price": "99.99"}, "changed": ["price"],
            "ts": "2026-01-01T00:00:00.000000Z", "origin": "elsewhere", **extra,
        }
    )  # fmt: skip


@pytest.fixture
def _fresh_feed() -> Iterator[None]:
    feed.reset()
    yield
    feed.reset()


def test_status_json_is_for_staff_only(client: Client) -> None:
    anonymous = client.get(STATUS)
    assert (anonymous.status_code, anonymous.json()) == (403, {"detail": "Staff only."})
    user = User.objects.create_user("viewer", password="x")
    user.user_permissions.add(Permission.objects.get(codename="view_product"))
    client.force_login(user)
    assert client.get(STATUS).status_code == 403
    inactive = User.objects.create_user("gone", password="x", is_staff=True, is_active=False)
    client.force_login(inactive)
    assert client.get(STATUS).status_code == 403  # an inactive user is no user


@pytest.mark.usefixtures("_fresh_feed")
def test_status_json_shape(staff: Client) -> None:
    record_event()
    response = staff.get(STATUS)
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    status = response.json()
    assert set(status) == {
        "generated_at", "instance", "instances", "rate", "feed", "models", "redis", "settings"
    }  # fmt: skip
    this = status["instance"]
    assert this["id"] == conf.BROADCAST_INSTANCE_ID
    for key in ("host", "pid", "uptime_s", "connections", "published", "received",
                "cache_entries", "last_lag_ms", "listening"):  # fmt: skip
        assert key in this, key
    assert [i["id"] for i in status["instances"] if i["self"]] == [this["id"]]
    assert status["redis"]["ok"] is True and status["redis"]["version"]
    assert isinstance(status["redis"]["connected_clients"], int)
    assert len(status["rate"]["per_second"]) == 60 and status["rate"]["step_s"] == 5
    (receipt,) = status["feed"]
    assert receipt["pk"] == "7" and receipt["changed"] == ["price"]
    assert receipt["origin"] == "elsewhere" and receipt["lag_ms"] > 0
    assert receipt["origin_instance"] is None  # no live instance has that origin
    (product,) = [m for m in status["models"] if m["label"] == "testapp.product"]
    assert "price" in product["fields"]
    # Excluded fields are not named, not even to staff who may see the model.
    assert "exclude" not in product and "cost_price" not in response.content.decode()
    assert product["permission"] == "testapp.view_product"
    # Metadata only: no event data, so no value of any field, reaches the dashboard.
    assert "99.99" not in response.content.decode()
    assert '"data"' not in response.content.decode()


@pytest.mark.usefixtures("_fresh_feed")
def test_status_json_maps_origins_to_instances_for_staff(staff: Client) -> None:
    record_event(origin=origin_id(conf.BROADCAST_INSTANCE_ID))
    status = staff.get(STATUS).json()
    (this,) = [i for i in status["instances"] if i["self"]]
    assert this["origin"] == origin_id(conf.BROADCAST_INSTANCE_ID) != this["id"]
    (receipt,) = status["feed"]
    assert receipt["origin_instance"] == this["id"] == conf.BROADCAST_INSTANCE_ID


@pytest.mark.usefixtures("_fresh_feed")
def test_staff_without_the_view_permission_see_nothing_of_the_model(
    staff_without_perm: Client,
) -> None:
    record_event()
    response = staff_without_perm.get(STATUS)
    assert response.status_code == 200
    status = response.json()
    assert status["feed"] == [] and status["models"] == []
    body = response.content.decode()
    assert "testapp.product" not in body and "cost_price" not in body and '"7"' not in body
    page = staff_without_perm.get(DASHBOARD)
    assert page.status_code == 200
    assert "cost_price" not in page.content.decode()


def test_status_json_answers_without_redis(staff: Client) -> None:
    with override_settings(CHANNEL_LAYERS=layers_for("redis://127.0.0.1:1/0")):
        status = staff.get(STATUS).json()
    assert status["redis"]["ok"] is False and status["redis"]["error"]
    assert [i["self"] for i in status["instances"]] == [True]


def test_dashboard_is_for_staff_and_looks_like_the_admin(client: Client, staff: Client) -> None:
    anonymous = Client().get(DASHBOARD)
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/admin/login/")
    page = staff.get(DASHBOARD)
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-status-url="/broadcast/status.json"' in html
    assert 'data-refresh-ms="2000"' in html
    assert "broadcast_app/js/dashboard.js" in html
    assert "admin/css/base.css" in html  # the admin's own look and dark mode
    for part in ("instances", "chart", "feed", "models", "redis"):
        assert f'data-dashboard="{part}"' in html


def test_dashboard_refuses_non_staff(client: Client) -> None:
    client.force_login(User.objects.create_user("viewer", password="x"))
    assert client.get(DASHBOARD).status_code == 302
    assert client.get(STATUS).status_code == 403

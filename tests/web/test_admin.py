"""LiveAdminMixin: the admin pages gain the live script and keep working as before."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from html import unescape
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.test import Client, override_settings

from broadcast_app.admin import LiveAdminMixin
from tests.testapp.admin import ProductAdmin
from tests.testapp.models import Product

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/testapp/product/"
SCRIPT = re.compile(r'<script src="/static/broadcast_app/js/admin\.js"([^>]*)></script>')


@pytest.fixture
def staff(client: Client) -> Client:
    client.force_login(User.objects.create_superuser("boss", password="x"))
    return client


@pytest.fixture
def products() -> list[Product]:
    with override_settings(BROADCAST_ENABLED=False):
        return [
            Product.objects.create(
                name=f"Item {i:02}", sku=f"IT-{i:02}", price=Decimal("1.00"), stock=i
            )
            for i in range(30)
        ]


def script_attributes(html: str) -> dict[str, str]:
    found = SCRIPT.search(html)
    assert found is not None, "no live admin script on the page"
    return dict(re.findall(r'([\w-]+)="([^"]*)"', found.group(1)))


def test_changelist_gets_the_live_script_and_styles(
    staff: Client, products: list[Product]
) -> None:
    page = staff.get(CHANGELIST).content.decode()
    attributes = script_attributes(page)
    assert attributes["type"] == "module"
    assert attributes["data-broadcast-admin"] == "changelist"
    assert attributes["data-model"] == "testapp.product"
    assert attributes["data-changelist-url"] == CHANGELIST
    assert "data-pk" not in attributes
    assert 'href="/static/broadcast_app/css/admin.css"' in page
    assert 'href="/static/broadcast_app/css/live.css"' in page
    # The admin's own scripts are still there: actions and filters keep working.
    assert "admin/js/actions.js" in page and "admin/js/filters.js" in page


def test_search_filters_and_pagination_still_work(staff: Client, products: list[Product]) -> None:
    second = staff.get(CHANGELIST, {"p": "2"}).content.decode()
    assert "IT-29" in second and "IT-00" not in second  # 25 per page
    script_attributes(second)
    found = staff.get(CHANGELIST, {"q": "IT-07"}).content.decode()
    assert "IT-07" in found and "IT-08" not in found
    filtered = staff.get(CHANGELIST, {"updated_at__gte": "2000-01-01 00:00:00+00:00"})
    assert filtered.status_code == 200


def test_admin_actions_still_work(staff: Client, products: list[Product]) -> None:
    chosen = [str(products[0].pk), str(products[1].pk)]
    data = {"action": "delete_selected", "_selected_action": chosen, "index": "0"}
    confirm = staff.post(CHANGELIST, data)
    assert confirm.status_code == 200
    assert "Are you sure" in confirm.content.decode()
    done = staff.post(CHANGELIST, {**data, "post": "yes"})
    assert done.status_code == 302
    assert not Product.objects.filter(pk__in=chosen).exists()


def test_change_form_names_its_object(staff: Client, products: list[Product]) -> None:
    pk = products[3].pk
    page = staff.get(f"{CHANGELIST}{pk}/change/").content.decode()
    attributes = script_attributes(page)
    assert attributes["data-broadcast-admin"] == "change"
    assert attributes["data-pk"] == str(pk)
    assert attributes["data-verbose-name"] == "product"
    # Saving still redirects as usual (the mixin leaves non-template responses alone).
    form = {
        "name": "Renamed", "sku": f"IT-{pk}", "price": "2.00", "stock": "1",
        "cost_price": "0.50", "_save": "Save",
    }  # fmt: skip
    assert staff.post(f"{CHANGELIST}{pk}/change/", form).status_code == 302


def test_add_form_and_opted_out_pages_stay_plain(staff: Client, products: list[Product]) -> None:
    assert SCRIPT.search(staff.get(f"{CHANGELIST}add/").content.decode()) is None
    model_admin = admin.site.get_model_admin(Product)
    assert isinstance(model_admin, ProductAdmin)
    model_admin.live_changelist = False
    try:
        assert SCRIPT.search(staff.get(CHANGELIST).content.decode()) is None
    finally:
        del model_admin.live_changelist


def test_mixin_on_a_model_that_does_not_broadcast_is_e101() -> None:
    class LiveUserAdmin(LiveAdminMixin, admin.ModelAdmin):  # type: ignore[type-arg]
        pass

    messages = LiveUserAdmin(User, admin.site).check()
    assert [m.id for m in messages] == ["broadcast_app.E101"]
    assert messages[0].hint and "broadcast_app.register(User)" in messages[0].hint
    assert admin.site.get_model_admin(Product).check() == []


def test_admin_index_links_to_the_dashboard(staff: Client) -> None:
    page = staff.get("/admin/").content.decode()
    assert 'id="broadcast-dashboard-link"' in page
    assert 'href="/broadcast/"' in page
    assert "Test app" in page  # the apps are still listed


@pytest.mark.parametrize(
    ("query", "where"),
    [
        ("", None),
        ("?stock_level=low", {"stock__lt": 20}),
        ("?stock_level=out", {"stock": 0}),
        # Search ORs its fields: not a where, so the whole model is followed.
        ("?stock_level=low&q=Item", None),
        # A lookup in the URL on a listed filter's field (as date filters make).
        (
            "?updated_at__gte=2026-01-01+00:00:00%2B00:00",
            {"updated_at__gte": "2026-01-01T00:00:00+00:00"},
        ),
    ],
)
def test_changelist_follows_its_filters_where_they_translate(
    staff: Client, products: list[Product], query: str, where: dict[str, Any] | None
) -> None:
    response = staff.get(CHANGELIST + query)
    assert response.status_code == 200
    attributes = script_attributes(response.content.decode())
    shown = attributes.get("data-where")
    assert (None if shown is None else json.loads(unescape(shown))) == where

"""In a real browser: the live admin, the demo page and the dashboard, across two instances.

Two uvicorn instances of the demo (A and B) share one database and one Redis; headless
Chromium shows B's pages while changes are saved through A's admin. Waiting is
Playwright's (``expect`` retries until its timeout), never a sleep. The screenshots in
docs/screenshots/ are taken here (written there with BROADCAST_UPDATE_SCREENSHOTS=1).
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from broadcast_app.dev.embedded_redis import EmbeddedRedis
from tests.browser_support import chromium, collect_page_errors, screenshot
from tests.e2e_support import (
    STARTUP_TIMEOUT,
    Instance,
    admin_change,
    demo_stack,
    form_fields,
    http_client,
    login,
)

try:
    from playwright.async_api import Browser, BrowserContext, Page, expect
except ImportError:  # browser_support skips or fails the tests with a clear reason
    Browser = BrowserContext = Page = expect = None  # type: ignore[assignment,misc]

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

PRODUCT = "demo.product"
ADMIN = "browser-admin"
CHANGELIST = "/admin/demo/product/"

# Users and products, created before the instances start; prints {sku: pk}.
SETUP = """
import json, os
from decimal import Decimal
from django.contrib.auth.models import User
from project.demo.seed import seed_products
from project.demo.models import Product

User.objects.create_superuser("browser-admin", password=os.environ["E2E_PASSWORD"])
User.objects.create_superuser(
    "browser-editor", password=os.environ["E2E_PASSWORD"], first_name="Edna", last_name="Editor"
)
seed_products()
print(json.dumps(dict(Product.objects.values_list("sku", "pk"))))
"""


@dataclass(frozen=True)
class Stack:
    """The running instances, the admin's session and the seeded products."""

    a: Instance
    b: Instance
    session_id: str
    pks: dict[str, int]
    #: a second admin's session (presence: "Edna Editor is also editing")
    editor_session_id: str


@pytest.fixture(scope="module")
def stack(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    directory: Path = tmp_path_factory.mktemp("browser")
    password = secrets.token_urlsafe(16)
    with demo_stack(redis_server.url, directory, SETUP, password, "browser-setup") as demo:
        session_id = login(demo.a.base_url, ADMIN, password)
        editor = login(demo.a.base_url, "browser-editor", password)
        yield Stack(demo.a, demo.b, session_id, demo.setup_output, editor)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as browser:
        yield browser


@pytest_asyncio.fixture(loop_scope="module")
async def context(browser: Browser, stack: Stack) -> AsyncIterator[BrowserContext]:
    """A fresh browser profile, logged in (one session serves both instances)."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    await context.add_cookies(
        [{"name": "sessionid", "value": stack.session_id, "domain": "127.0.0.1", "path": "/"}]
    )
    yield context
    await context.close()


@pytest_asyncio.fixture(loop_scope="module")
async def on_a(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of instance A's admin, where the changes are made."""
    async with http_client(stack.a.base_url, stack.session_id) as client:
        yield client


async def open_live(context: BrowserContext, url: str) -> tuple[Page, list[str]]:
    """Open a page and wait until its websocket is open; also return its script errors."""
    page = await context.new_page()
    errors = collect_page_errors(page)
    await page.goto(url)
    await expect(page.locator("[data-broadcast-status]").first).to_have_attribute(
        "data-status", "open"
    )
    return page, errors


async def admin_add(client: httpx.AsyncClient, **fields: str) -> int:
    """Add a product through the admin's add form; return its pk."""
    url = f"{CHANGELIST}add/"
    page = await client.get(url)
    data = form_fields(page.text, "product_form")
    data.update(fields, _continue="Save and continue editing")
    response = await client.post(url, data=data, headers={"Referer": str(client.base_url)})
    assert response.status_code == 302, response.text[:2000]
    found = re.search(r"/(\d+)/change/", response.headers["Location"])
    assert found, response.headers["Location"]
    return int(found.group(1))


async def admin_delete(client: httpx.AsyncClient, pk: int) -> None:
    """Delete a product through the admin's delete confirmation."""
    url = f"{CHANGELIST}{pk}/delete/"
    page = await client.get(url)
    token = form_fields(page.text)["csrfmiddlewaretoken"]
    response = await client.post(
        url, data={"csrfmiddlewaretoken": token, "post": "yes"}, headers={"Referer": url}
    )
    assert response.status_code == 302, response.text[:2000]


async def test_changelist_on_b_follows_changes_made_on_a(
    context: BrowserContext, stack: Stack, on_a: httpx.AsyncClient
) -> None:
    page, errors = await open_live(context, f"{stack.b.base_url}{CHANGELIST}")
    changed, kept, deleted = (stack.pks[s] for s in ("MUG-001", "TEE-002", "CAP-003"))
    kept_box = page.locator(f'input.action-select[value="{kept}"]')
    await kept_box.check()

    await admin_change(on_a, PRODUCT, changed, price="31.40")
    price = page.locator(f'#result_list tr:has(input[value="{changed}"]) td.field-price')
    await expect(price).to_have_text("31.40")
    await expect(price).to_have_class(re.compile(r"\bbroadcast-flash\b"))

    new_pk = await admin_add(on_a, name="Live-added lamp", sku="BR-NEW", price="5.00", stock="1")
    new_row = page.locator(f'#result_list tr.broadcast-new:has(input[value="{new_pk}"])')
    await expect(new_row).to_contain_text("BR-NEW")

    await admin_delete(on_a, deleted)
    gone = page.locator(f'#result_list tr:has(input[value="{deleted}"])')
    await expect(gone).to_have_class(re.compile(r"\bbroadcast-gone\b"))
    await expect(gone.locator(".broadcast-tag")).to_have_text("deleted")
    await expect(gone.locator("input.action-select")).to_be_disabled()
    await expect(page.locator(".paginator")).to_contain_text("12 products")

    # The user's selection survived every merge, and actions work on a new row too.
    await expect(kept_box).to_be_checked()
    await new_row.locator("input.action-select").check()
    await expect(page.locator("span.action-counter")).to_have_text("2 of 12 selected")
    await screenshot(page, "admin-changelist")
    await page.select_option("select[name=action]", "delete_selected")
    await page.click("button[name=index]")
    await expect(page.locator("#content")).to_contain_text("Are you sure")
    await expect(page.locator("#content")).to_contain_text("Live-added lamp")
    assert errors == []


async def test_change_form_on_b_warns_when_a_edits_the_same_object(
    context: BrowserContext, stack: Stack, on_a: httpx.AsyncClient
) -> None:
    pk = stack.pks["BAG-004"]
    url = f"{stack.b.base_url}{CHANGELIST}{pk}/change/"
    page, errors = await open_live(context, url)
    await page.fill("#id_stock", "81")  # the user's own edit, in progress

    await admin_change(on_a, PRODUCT, pk, price="16.50", stock="79")
    banner = page.locator(".broadcast-banner")
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text(re.compile(r"changed by another user at \d\d:\d\d"))
    await expect(banner).not_to_contain_text("e2e-A")  # origins are opaque
    await banner.get_by_role("button", name="See what changed").click()
    diff = banner.locator(".broadcast-diff")
    await expect(diff).to_contain_text("Price: 15.00 → 16.50")
    await expect(diff).to_contain_text("Stock: 80 → 79 — you changed it too")
    await expect(page.locator(".form-row.field-price")).to_have_class(
        re.compile(r"\bbroadcast-conflict\b")
    )

    # Saving over it takes a second, explicit click.
    await page.click("input[name=_save]")
    await expect(banner.locator(".broadcast-overwrite")).to_be_visible()
    assert page.url == url
    await screenshot(page, "admin-change-form")
    await banner.get_by_role("button", name="Save anyway").click()
    await expect(page).to_have_url(re.compile(r"/admin/demo/product/$"))
    await expect(page.locator(".messagelist")).to_contain_text("was changed successfully")

    # Then a deletion, of the object another form shows.
    doomed = stack.pks["SCK-010"]
    page, _ = await open_live(context, f"{stack.b.base_url}{CHANGELIST}{doomed}/change/")
    await admin_delete(on_a, doomed)
    await expect(page.locator(".broadcast-banner")).to_contain_text("was deleted by someone else")
    assert errors == []


async def test_change_form_shows_who_else_has_the_object_open(
    browser: Browser, context: BrowserContext, stack: Stack
) -> None:
    path = f"{CHANGELIST}{stack.pks['HDY-009']}/change/"
    page, errors = await open_live(context, f"{stack.b.base_url}{path}")
    others = page.locator(".broadcast-others")
    # Alone (the admin's own second tab does not count): nothing is shown.
    own_tab, _ = await open_live(context, f"{stack.a.base_url}{path}")
    await expect(own_tab.locator(".broadcast-others")).to_be_hidden()
    await own_tab.close()
    editor_context = await browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        await editor_context.add_cookies(
            [{"name": "sessionid", "value": stack.editor_session_id, "domain": "127.0.0.1",
              "path": "/"}]
        )  # fmt: skip
        editor_page, editor_errors = await open_live(editor_context, f"{stack.a.base_url}{path}")
        # Each sees the other, across the two instances, before anyone saves.
        await expect(others).to_have_text("Edna Editor is also editing")
        await expect(editor_page.locator(".broadcast-others")).to_have_text(
            "browser-admin is also editing"
        )
        await screenshot(page, "admin-presence")
        await editor_page.close()  # the tab goes: so does its member
        await expect(others).to_be_hidden()
        assert editor_errors == []
    finally:
        await editor_context.close()
    assert errors == []


async def test_demo_page_on_b_follows_changes_made_on_a(
    browser: Browser, context: BrowserContext, stack: Stack, on_a: httpx.AsyncClient
) -> None:
    page, errors = await open_live(context, f"{stack.b.base_url}/")
    pk = stack.pks["NBK-005"]
    row = page.locator(f'#products tr[data-broadcast-pk="{pk}"]')
    await admin_change(on_a, PRODUCT, pk, name="Squared notebook", price="8.25")
    await expect(row.locator('[data-broadcast-field="price"]')).to_have_text("8.25")
    await expect(row.locator('[data-broadcast-field="name"]')).to_have_text("Squared notebook")
    await expect(row.locator('[data-broadcast-field="price"]')).to_have_class(
        re.compile(r"\bbroadcast-flash\b")
    )
    await expect(row.locator('[data-broadcast-field="sku"]')).not_to_have_class(
        re.compile(r"\bbroadcast-flash\b")
    )

    spotlight = page.locator("#spotlight")
    first = await spotlight.locator("[data-broadcast-pk]").first.get_attribute("data-broadcast-pk")
    assert first is not None
    await admin_change(on_a, PRODUCT, int(first), stock="123")
    await expect(spotlight.locator('[data-broadcast-field="stock"]')).to_have_text("123")

    new_pk = await admin_add(on_a, name="Enamel pin", sku="BR-PIN", price="3.00", stock="50")
    await expect(page.locator(f'#products tr[data-broadcast-pk="{new_pk}"]')).to_contain_text(
        "BR-PIN"
    )
    await expect(page.locator("#products tbody tr").last).to_contain_text("BR-PIN")  # pk order
    await screenshot(page, "demo-page")
    await admin_delete(on_a, new_pk)
    await expect(page.locator("#products tbody tr", has_text="BR-PIN")).to_have_count(0)
    assert "cost" not in (await page.content()).lower()
    assert errors == []

    phone = await browser.new_context(
        viewport={"width": 390, "height": 844}, color_scheme="dark", device_scale_factor=2
    )
    try:
        await phone.add_cookies(
            [{"name": "sessionid", "value": stack.session_id, "domain": "127.0.0.1", "path": "/"}]
        )
        small, _ = await open_live(phone, f"{stack.b.base_url}/")
        await screenshot(small, "demo-page-phone-dark")
    finally:
        await phone.close()


async def test_a_filtered_live_table_shows_rows_entering_and_drops_rows_leaving(
    context: BrowserContext, stack: Stack, on_a: httpx.AsyncClient
) -> None:
    page, errors = await open_live(context, f"{stack.b.base_url}/demo/low-stock/")
    table = page.locator("#low-stock")
    entering, leaving, outside = (stack.pks[s] for s in ("BTL-008", "PEN-006", "STK-007"))
    rows = table.locator("tbody tr[data-broadcast-pk]")
    await expect(table.locator(f'tr[data-broadcast-pk="{leaving}"]')).to_contain_text("PEN-006")
    await expect(table.locator(f'tr[data-broadcast-pk="{entering}"]')).to_have_count(0)
    shown = await rows.count()  # (as rendered: earlier tests may have added a row)

    # A change outside the filter is not even sent; one into it makes the row appear.
    await admin_change(on_a, PRODUCT, outside, name="Sticker pack XL")
    await admin_change(on_a, PRODUCT, entering, stock="3")
    entered = table.locator(f'tr[data-broadcast-pk="{entering}"]')
    await expect(entered).to_contain_text("BTL-008")
    await expect(entered.locator('[data-broadcast-field="stock"]')).to_have_text("3")
    await expect(table.locator("tbody tr", has_text="Sticker pack")).to_have_count(0)

    # Restocked: the row leaves the filter, and the table.
    await admin_change(on_a, PRODUCT, leaving, stock="100")
    await expect(table.locator("tbody tr", has_text="PEN-006")).to_have_count(0)
    await expect(rows).to_have_count(shown)  # one entered, one left
    assert errors == []


async def test_a_filtered_changelist_marks_rows_leaving_its_filter_and_adds_those_entering(
    context: BrowserContext, stack: Stack, on_a: httpx.AsyncClient
) -> None:
    url = f"{stack.b.base_url}{CHANGELIST}?stock_level=low"
    page, errors = await open_live(context, url)
    script = page.locator("script[data-broadcast-admin]")
    assert await script.get_attribute("data-where") == '{"stock__lt": 20}'
    leaving, entering = stack.pks["KEY-012"], stack.pks["TEE-002"]
    left = page.locator(f'#result_list tr:has(input[value="{leaving}"])')
    await expect(left).to_be_visible()

    await admin_change(on_a, PRODUCT, leaving, stock="50")
    # Marked where it was, not removed under the user's cursor.
    await expect(left).to_have_class(re.compile(r"\bbroadcast-gone\b"))
    await expect(left).to_have_attribute("data-broadcast-gone", "left")
    await expect(left.locator(".broadcast-tag")).to_have_text("no longer matches the filters")
    await expect(left.locator("input.action-select")).to_be_disabled()

    await admin_change(on_a, PRODUCT, entering, stock="5")
    entered = page.locator(f'#result_list tr.broadcast-new:has(input[value="{entering}"])')
    await expect(entered).to_contain_text("TEE-002")
    await expect(entered.locator("td.field-stock")).to_have_text("5")
    assert errors == []


async def test_dashboard_lists_both_instances_and_counts_events(
    context: BrowserContext, stack: Stack, on_a: httpx.AsyncClient
) -> None:
    page = await context.new_page()
    errors = collect_page_errors(page)
    await page.goto(f"{stack.b.base_url}/admin/")
    await page.get_by_role("link", name="Live dashboard").click()
    await expect(page).to_have_url(f"{stack.b.base_url}/broadcast/")

    instances = page.locator('[data-dashboard="instances"] tbody')
    await expect(instances.locator('tr[data-instance="e2e-A"]')).to_be_visible()
    await expect(instances.locator('tr[data-instance="e2e-B"]')).to_contain_text("this page")
    await expect(page.locator('[data-dashboard="redis"]')).to_contain_text("Version")
    models = page.locator('[data-dashboard="models"]')
    await expect(models).to_contain_text("demo.product")
    await expect(models).not_to_contain_text("cost_price")  # excluded names are not shown
    # Connections present on the model's objects (presence), over both instances.
    present = models.locator('td[data-figure="present"]').first
    await expect(present).to_have_text(re.compile(r"^\d+$"))
    received = instances.locator('tr[data-instance="e2e-B"] td[data-figure="received"]')
    before = await received.text_content()

    await admin_change(on_a, PRODUCT, stack.pks["PEN-006"], stock="14")
    await expect(received).not_to_have_text(before or "")
    latest = page.locator('[data-dashboard="feed"] tbody tr').first
    await expect(latest).to_contain_text(str(stack.pks["PEN-006"]))
    await expect(latest).to_contain_text("e2e-A")
    await expect(latest).to_contain_text("stock")
    await expect(page.locator("[data-dashboard-state]")).to_have_text("live")
    await screenshot(page, "dashboard", full_page=True)
    await page.emulate_media(color_scheme="dark")
    await screenshot(page, "dashboard-dark", full_page=True)
    await page.set_viewport_size({"width": 390, "height": 844})
    await screenshot(page, "dashboard-phone")
    assert errors == []


def restart_on_the_same_port(instance: Instance) -> None:
    """Stop an instance and start it again where its pages expect it."""
    port = instance.port
    instance.stop()
    instance.port = port
    instance._spawn()
    instance._wait_ready(STARTUP_TIMEOUT)


async def test_pages_reconnect_by_themselves_after_b_restarts(
    context: BrowserContext, stack: Stack, on_a: httpx.AsyncClient
) -> None:
    demo, errors = await open_live(context, f"{stack.b.base_url}/")
    changelist, _ = await open_live(context, f"{stack.b.base_url}{CHANGELIST}")
    for page in (demo, changelist):
        await page.evaluate(
            """() => {
                window.statuses = [];
                document.addEventListener("broadcast:status", (e) => statuses.push(e.detail));
            }"""
        )

    await asyncio.to_thread(restart_on_the_same_port, stack.b)

    pk = stack.pks["BTL-008"]
    for page in (demo, changelist):
        await expect(page.locator("[data-broadcast-status]").first).to_have_attribute(
            "data-status", "open"
        )
        assert "reconnecting" in await page.evaluate("window.statuses")
    await admin_change(on_a, PRODUCT, pk, price="28.00")
    await expect(
        demo.locator(f'#products tr[data-broadcast-pk="{pk}"] [data-broadcast-field="price"]')
    ).to_have_text("28.00")
    await expect(
        changelist.locator(f'#result_list tr:has(input[value="{pk}"]) td.field-price')
    ).to_have_text("28.00")
    assert errors == []

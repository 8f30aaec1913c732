"""End to end: two real uvicorn instances of the demo, one database, one Redis.

A change saved through instance A's admin (or by a short-lived ``manage.py shell``)
must reach websocket clients of both instances and keep both instances' broadcast
caches current, without ever leaking ``cost_price``. The database is a fresh SQLite
file, or a fresh PostgreSQL database when ``DATABASE_URL`` names a PostgreSQL server.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from broadcast_app.dev.embedded_redis import EmbeddedRedis
from broadcast_app.events.wire import id_key, origin_id
from tests.e2e_support import (
    Instance,
    admin_change,
    demo_stack,
    form_fields,
    http_client,
    last_json_line,
    login,
    manage_async,
    websocket,
)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

PRODUCT = "demo.product"
#: the keys of a product's broadcast data: every field but cost_price
BROADCAST_FIELDS = {"id", "name", "sku", "price", "stock", "updated_at"}
ADMIN = "e2e-admin"
#: a staff user without demo.view_product
NOBODY = "e2e-nobody"

# Users and products, created before the instances start (so no cache holds them);
# prints {sku: pk}.
SETUP = """
import json, os
from decimal import Decimal
from django.contrib.auth.models import User
from project.demo.models import Product

password = os.environ["E2E_PASSWORD"]
User.objects.create_superuser("e2e-admin", password=password)
User.objects.create_user("e2e-nobody", password=password, is_staff=True)
pks = {}
for sku in ("E2E-ADMIN", "E2E-SHELL", "E2E-FORBIDDEN", "E2E-COHERENT", "E2E-FILTER"):
    product = Product.objects.create(
        name=sku.title(), sku=sku, price=Decimal("10.00"), stock=5, cost_price=Decimal("4.00")
    )
    pks[sku] = product.pk
print(json.dumps(pks))
"""


@dataclass(frozen=True)
class Stack:
    """The running instances and what the setup created."""

    a: Instance
    b: Instance
    env: dict[str, str]
    password: str
    pks: dict[str, int]


@pytest.fixture(scope="module")
def stack(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    directory: Path = tmp_path_factory.mktemp("e2e")
    password = secrets.token_urlsafe(16)
    with demo_stack(redis_server.url, directory, SETUP, password, "e2e-setup") as demo:
        yield Stack(demo.a, demo.b, demo.env, password, demo.setup_output)


@pytest.fixture(scope="module")
def session_id(stack: Stack) -> str:
    """The admin's session, opened on instance A."""
    return login(stack.a.base_url, ADMIN, stack.password)


@pytest.fixture(autouse=True)
def _no_tracebacks(stack: Stack) -> Iterator[None]:
    """No test may make an instance log a traceback."""
    before = {instance.name: len(instance.log_text()) for instance in (stack.a, stack.b)}
    yield
    for instance in (stack.a, stack.b):
        new = instance.log_text()[before[instance.name] :]
        assert "Traceback" not in new, f"instance {instance.name} logged:\n{new}"


def json_url(pk: int) -> str:
    """The demo's view of one product's broadcast data (from the instance's cache)."""
    return f"/demo/products/{pk}.json"


async def test_one_login_serves_both_instances(stack: Stack, session_id: str) -> None:
    on_b = await asyncio.to_thread(login, stack.b.base_url, ADMIN, stack.password)
    for base_url, session in ((stack.a.base_url, on_b), (stack.b.base_url, session_id)):
        async with http_client(base_url, session) as client:
            response = await client.get("/admin/")
            assert response.status_code == 200, (base_url, response.status_code)
            assert "Site administration" in response.text
    async with http_client(stack.b.base_url, None) as anonymous:
        response = await anonymous.get("/admin/")
        assert response.status_code == 302  # the control: no session, no admin


async def test_admin_change_on_a_reaches_b_and_its_cache(stack: Stack, session_id: str) -> None:
    pk = stack.pks["E2E-ADMIN"]
    async with (
        http_client(stack.a.base_url, session_id) as http_a,
        http_client(stack.b.base_url, session_id) as http_b,
        websocket(stack.b.ws_url, origin=stack.b.origin, session_id=session_id) as ws,
    ):
        await ws.subscribe(PRODUCT, ref="all")
        # "19.9" on purpose: the event carries the value as stored, "19.90".
        await admin_change(http_a, PRODUCT, pk, price="19.9", cost_price="7.77")

        event = await ws.receive()
        assert event["type"] == "change", event
        assert (event["op"], event["model"], event["pk"]) == ("updated", PRODUCT, str(pk))
        assert event["changed"] == ["price"]
        assert set(event["data"]) == BROADCAST_FIELDS
        assert event["data"]["price"] == "19.90"
        assert event["data"]["sku"] == "E2E-ADMIN"
        assert event["origin"] == origin_id("e2e-A", stack.env["DJANGO_SECRET_KEY"])
        assert "cost_price" not in json.dumps(event)
        assert "7.77" not in json.dumps(event)
        await ws.expect_nothing_queued()

        response = await http_b.get(json_url(pk))
        assert response.status_code == 200
        assert response.headers["X-Cache"] == "hit"
        assert response.json() == event["data"]
        assert "cost_price" not in response.text

        # The cost price was saved all the same: it is only kept out of broadcasts.
        page = await http_b.get(f"/admin/demo/product/{pk}/change/")
        fields = form_fields(page.text, "product_form")
        assert (fields["price"], fields["cost_price"]) == ("19.90", "7.77")


async def test_change_from_a_shell_process_reaches_b(stack: Stack, session_id: str) -> None:
    pk = stack.pks["E2E-SHELL"]
    # The process exits right after its saves: only the exit-time flush publishes them.
    script = f"""
from decimal import Decimal
from project.demo.models import Product
product = Product.objects.get(pk={pk})
product.stock = 77
product.save()
new = Product.objects.create(
    name="Made in a shell", sku="E2E-SHELL-NEW", price=Decimal("3.5"), cost_price=Decimal("1.25")
)
print(new.pk)
new.delete()
"""
    env = {**stack.env, "BROADCAST_INSTANCE_ID": "e2e-shell"}
    async with (
        http_client(stack.b.base_url, session_id) as http_b,
        websocket(stack.b.ws_url, origin=stack.b.origin, session_id=session_id) as ws,
    ):
        await ws.subscribe(PRODUCT)
        code, out, err = await manage_async("shell", "-c", script, env=env)
        assert code == 0, err
        assert "flush timed out" not in err, err
        new_pk = str(last_json_line(out))

        updated, created, deleted = [await ws.receive() for _ in range(3)]
        assert (updated["op"], updated["pk"]) == ("updated", str(pk))
        assert updated["changed"] == ["stock"]
        assert updated["data"]["stock"] == 77
        assert (created["op"], created["pk"], created["changed"]) == ("created", new_pk, [])
        assert created["data"]["price"] == "3.50"
        assert set(created["data"]) == BROADCAST_FIELDS
        assert (deleted["op"], deleted["pk"]) == ("deleted", new_pk)
        assert "cost_price" not in json.dumps([updated, created, deleted])
        shell = origin_id("e2e-shell", stack.env["DJANGO_SECRET_KEY"])
        assert {e["origin"] for e in (updated, created, deleted)} == {shell}
        ids = [id_key(e["id"]) for e in (updated, created, deleted)]
        assert ids == sorted(set(ids))
        await ws.expect_nothing_queued()

        response = await http_b.get(json_url(pk))
        assert (response.headers["X-Cache"], response.json()) == ("hit", updated["data"])
        # The deletion left a tombstone: a racing miss cannot resurrect the product.
        gone = await http_b.get(json_url(int(new_pk)))
        assert (gone.status_code, gone.headers["X-Cache"]) == (404, "hit")


async def test_subscriptions_need_permission_and_a_known_model(
    stack: Stack, session_id: str
) -> None:
    pk = stack.pks["E2E-FORBIDDEN"]
    nobody = await asyncio.to_thread(login, stack.a.base_url, NOBODY, stack.password)
    b = stack.b
    async with (
        websocket(b.ws_url, origin=b.origin) as anonymous,
        websocket(b.ws_url, origin=b.origin, session_id=nobody) as unprivileged,
        websocket(b.ws_url, origin=b.origin, session_id=session_id) as admin,
        http_client(stack.a.base_url, session_id) as http_a,
    ):
        for ws in (anonymous, unprivileged):
            for target in ({}, {"pk": str(pk)}):
                reply = await ws.ask({"type": "subscribe", "model": PRODUCT, "ref": 7, **target})
                assert (reply["type"], reply["code"], reply["ref"]) == ("error", "forbidden", 7)
            for model in ("demo.nothing", "auth.user", "demo"):
                reply = await ws.ask({"type": "subscribe", "model": model, "ref": model})
                assert (reply["type"], reply["code"], reply["ref"]) == (
                    "error",
                    "unknown_model",
                    model,
                ), reply

        # Refused subscriptions deliver nothing: the listener hands an event to every
        # local subscriber at once, so once the admin has it, theirs would be queued.
        await admin.subscribe(PRODUCT, str(pk))
        await admin_change(http_a, PRODUCT, pk, stock="6")
        event = await admin.receive()
        assert (event["type"], event["pk"], event["changed"]) == ("change", str(pk), ["stock"])
        await anonymous.expect_nothing_queued()
        await unprivileged.expect_nothing_queued()

    for session in (None, nobody):
        async with http_client(b.base_url, session) as client:
            response = await client.get(json_url(pk))
            assert response.status_code == 403
            assert "E2E" not in response.text


GARBAGE: list[tuple[str, str | bytes | dict[str, object], str]] = [
    ("invalid JSON", '{"type": "ping"', "bad_json"),
    ("binary frame", b'{"type": "ping"}', "bad_request"),
    ("JSON array", '[{"type": "ping"}]', "bad_request"),
    ("JSON string", '"ping"', "bad_request"),
    ("unknown type", {"type": "dance", "ref": "r1"}, "bad_request"),
    ("no type", {"ref": "r1"}, "bad_request"),
    ("10 kB of JSON", {"type": "ping", "pad": "x" * 10_240}, "too_large"),
    ("10 kB of text", "x" * 10_240, "too_large"),
    # Under the limit in characters, over it in bytes (a str is sent as is, unescaped).
    (
        "3 kB of characters, 6 kB UTF-8",
        '{"type": "ping", "pad": "' + "é" * 3000 + '"}',
        "too_large",
    ),
    ("no model", {"type": "subscribe"}, "bad_request"),
    ("model not a string", {"type": "subscribe", "model": ["demo.product"]}, "bad_request"),
    ("pk not a pk", {"type": "subscribe", "model": PRODUCT, "pk": "twelve"}, "bad_request"),
    ("pk a boolean", {"type": "subscribe", "model": PRODUCT, "pk": True}, "bad_request"),
    ("pk an object", {"type": "unsubscribe", "model": PRODUCT, "pk": {}}, "bad_request"),
]


async def test_garbage_frames_get_error_frames_and_the_connection_lives_on(
    stack: Stack, session_id: str
) -> None:
    b = stack.b
    async with websocket(b.ws_url, origin=b.origin, session_id=session_id) as ws:
        for label, frame, code in GARBAGE:
            reply = await ws.ask(frame)
            assert (reply["type"], reply["code"]) == ("error", code), (label, reply)
            assert isinstance(reply["detail"], str), (label, reply)
            if isinstance(frame, dict) and "ref" in frame:
                assert reply["ref"] == frame["ref"], (label, reply)
        await ws.expect_nothing_queued()
        await ws.subscribe(PRODUCT, ref="still-works")
    for instance in (stack.a, stack.b):
        assert "Traceback" not in instance.log_text(), instance.log_text()


@pytest.mark.parametrize(
    "origin",
    ["http://evil.example", "http://127.0.0.1.evil.example", "null", None],
    ids=["foreign", "lookalike", "null", "missing"],
)
async def test_websocket_from_a_foreign_origin_is_rejected(
    stack: Stack, session_id: str, origin: str | None
) -> None:
    with pytest.raises(InvalidStatus) as rejected:
        async with websocket(stack.b.ws_url, origin=origin, session_id=session_id):
            pass
    assert rejected.value.response.status_code == 403


async def test_events_reach_the_publishing_instance_and_caches_agree(
    stack: Stack, session_id: str
) -> None:
    pk = stack.pks["E2E-COHERENT"]
    a, b = stack.a, stack.b
    async with (
        http_client(a.base_url, session_id) as http_a,
        http_client(b.base_url, session_id) as http_b,
        websocket(a.ws_url, origin=a.origin, session_id=session_id) as ws_a,
        websocket(b.ws_url, origin=b.origin, session_id=session_id) as ws_b,
    ):
        # Not cached yet anywhere: each instance loads it once, then serves it.
        first = {}
        for name, client in (("A", http_a), ("B", http_b)):
            miss = await client.get(json_url(pk))
            hit = await client.get(json_url(pk))
            assert (miss.status_code, miss.headers["X-Cache"]) == (200, "miss"), name
            assert (hit.headers["X-Cache"], hit.json()) == ("hit", miss.json()), name
            first[name] = miss.json()
        assert first["A"] == first["B"]
        assert "cost_price" not in first["A"]
        assert set(first["A"]) == BROADCAST_FIELDS

        subscribed = await ws_a.subscribe(PRODUCT, str(pk), ref="one")
        await ws_b.subscribe(PRODUCT)
        await admin_change(http_a, PRODUCT, pk, name="Renamed on A", stock="42")

        on_a, on_b = await ws_a.receive(), await ws_b.receive()
        assert on_a == on_b
        origin = origin_id("e2e-A", stack.env["DJANGO_SECRET_KEY"])
        assert (on_a["type"], on_a["op"], on_a["origin"]) == ("change", "updated", origin)
        assert on_a["changed"] == ["name", "stock"]
        if subscribed["last_id"] is not None:
            assert id_key(on_a["id"]) > id_key(subscribed["last_id"])
        data = on_a["data"]
        assert (data["name"], data["stock"]) == ("Renamed on A", 42)
        # Unchanged fields read the same as the database load did.
        assert (data["sku"], data["price"]) == (first["A"]["sku"], first["A"]["price"])

        for name, client in (("A", http_a), ("B", http_b)):
            response = await client.get(json_url(pk))
            assert (response.headers["X-Cache"], response.json()) == ("hit", data), name


async def test_a_filtered_subscription_on_b_follows_a_row_in_and_out(
    stack: Stack, session_id: str
) -> None:
    pk = stack.pks["E2E-FILTER"]
    where = {"stock__lt": 5, "sku": "E2E-FILTER"}
    async with (
        http_client(stack.a.base_url, session_id) as http_a,
        websocket(stack.b.ws_url, origin=stack.b.origin, session_id=session_id) as ws,
    ):
        reply = await ws.ask({"type": "subscribe", "model": PRODUCT, "where": where})
        assert (reply["type"], reply["where"]) == ("subscribed", {"sku": "E2E-FILTER", **where})
        # Each change goes through A's publisher, Redis and B's listener; the frame is
        # parsed as one JSON document (the old values behind it never reach a client).
        for stock, match in (("3", "enter"), ("4", "stay"), ("9", "leave"), ("10", None)):
            await admin_change(http_a, PRODUCT, pk, stock=stock, cost_price="1.00")
            if match is None:
                continue
            event = await ws.receive()
            assert (event["pk"], event["match"], event["data"]["stock"]) == (
                str(pk),
                match,
                int(stock),
            )
            assert "previous" not in event
        await ws.expect_nothing_queued()
        # And a snapshot of it, read by B from the database, as events carry it.
        mine = {"sku": "E2E-FILTER"}
        asked = {"type": "subscribe", "model": PRODUCT, "where": mine, "snapshot": True}
        reply = await ws.ask(asked)
        assert (reply["type"], reply["snapshot"]) == ("subscribed", True)
        snapshot = await ws.receive()
        assert (snapshot["type"], snapshot["last_id"]) == ("snapshot", reply["last_id"])
        [row] = snapshot["rows"]
        assert (row["pk"], row["data"]["stock"], set(row["data"])) == (
            str(pk),
            10,
            BROADCAST_FIELDS,
        )

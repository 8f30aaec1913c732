"""Presence, end to end: two real uvicorn instances of the demo on one Redis.

A user who joins an object on instance A is seen by a subscriber on instance B, with
their state and both tabs counted as one member; and when A is SIGKILLed (no shutdown
code runs, its members are never removed), B's subscriber sees them go within the
documented bound, 4/3 of ``BROADCAST_PRESENCE_TTL`` plus a read (the demo runs the
default TTL).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from broadcast_app.conf import conf
from broadcast_app.dev.embedded_redis import EmbeddedRedis
from tests.e2e_support import Instance, Socket, demo_stack, login, websocket

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

PRODUCT = "demo.product"
#: the documented bound on a killed instance's members, and room for one read
BOUND = conf.BROADCAST_PRESENCE_TTL * 4 / 3 + 1.0

SETUP = """
import json, os
from decimal import Decimal
from django.contrib.auth.models import Permission, User
from project.demo.models import Product

password = os.environ["E2E_PASSWORD"]
view = Permission.objects.get(codename="view_product")
for name, first in (("pr-ann", "Ann"), ("pr-ben", "Ben")):
    user = User.objects.create_user(
        name, password=password, first_name=first, last_name="E2E", is_staff=True
    )
    user.user_permissions.add(view)
product = Product.objects.create(name="Pres", sku="PRES", price=Decimal("1.00"), stock=1)
print(json.dumps({"pk": product.pk}))
"""


@dataclass(frozen=True)
class Stack:
    a: Instance
    b: Instance
    password: str
    pk: str


@pytest.fixture(scope="module")
def stack(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    directory: Path = tmp_path_factory.mktemp("e2e-presence")
    password = secrets.token_urlsafe(16)
    with demo_stack(redis_server.url, directory, SETUP, password, "pr-setup") as demo:
        yield Stack(demo.a, demo.b, password, str(demo.setup_output["pk"]))


async def members_until(
    ws: Socket, pk: str, holds: Callable[[list[dict[str, Any]]], bool], timeout: float
) -> list[dict[str, Any]]:
    """The first member list of ``pk`` for which ``holds`` is true, within ``timeout``."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"no presence list as expected within {timeout:.1f}s; seen {seen}")
        try:
            frame = await ws.receive(timeout=remaining)
        except AssertionError:
            pytest.fail(f"no presence list as expected within {timeout:.1f}s; seen {seen}")
        assert frame["type"] == "presence", frame
        assert (frame["model"], frame["pk"]) == (PRODUCT, pk)
        members: list[dict[str, Any]] = frame["members"]
        seen.append(members)
        if holds(members):
            return members


def names(members: list[dict[str, Any]]) -> list[str]:
    return [member["user"]["username"] for member in members]


async def test_a_member_on_a_is_seen_on_b_and_leaves_when_its_sockets_close(
    stack: Stack,
) -> None:
    a, b, pk = stack.a, stack.b, stack.pk
    ann = await asyncio.to_thread(login, a.base_url, "pr-ann", stack.password)
    ben = await asyncio.to_thread(login, b.base_url, "pr-ben", stack.password)
    async with websocket(b.ws_url, origin=b.origin, session_id=ben) as watcher:
        await watcher.subscribe(PRODUCT, pk)
        async with (
            websocket(a.ws_url, origin=a.origin, session_id=ann) as tab1,
            websocket(b.ws_url, origin=b.origin, session_id=ann) as tab2,
        ):
            await tab1.subscribe(PRODUCT, pk)
            await tab1.send({"type": "presence.join", "model": PRODUCT, "pk": pk,
                             "state": {"field": "price"}})  # fmt: skip
            members = await members_until(watcher, pk, lambda m: bool(m), timeout=5)
            assert members[0]["user"] == {
                "id": members[0]["user"]["id"],
                "username": "pr-ann",
                "name": "Ann E2E",
            }
            assert (members[0]["state"], members[0]["connections"]) == ({"field": "price"}, 1)
            # Her second tab, on the other instance: still one member, the latest state.
            await tab2.subscribe(PRODUCT, pk)
            await tab2.send({"type": "presence.join", "model": PRODUCT, "pk": pk,
                             "state": {"field": "stock"}})  # fmt: skip
            members = await members_until(
                watcher, pk, lambda m: bool(m) and m[0]["connections"] == 2, timeout=5
            )
            assert (names(members), members[0]["state"]) == (["pr-ann"], {"field": "stock"})
            # Ben joins on B: Ann's tab on A sees both.
            await watcher.send({"type": "presence.join", "model": PRODUCT, "pk": pk})
            members = await members_until(tab1, pk, lambda m: len(m) == 2, timeout=5)
            assert names(members) == ["pr-ann", "pr-ben"]
        # Both of Ann's sockets closed: she left at once (well within the TTL).
        members = await members_until(watcher, pk, lambda m: names(m) == ["pr-ben"], timeout=3)
        await watcher.send({"type": "presence.leave", "model": PRODUCT, "pk": pk})
        assert await members_until(watcher, pk, lambda m: not m, timeout=3) == []


async def test_a_killed_instances_members_disappear_within_the_bound(stack: Stack) -> None:
    a, b, pk = stack.a, stack.b, stack.pk
    ann = await asyncio.to_thread(login, a.base_url, "pr-ann", stack.password)
    ben = await asyncio.to_thread(login, b.base_url, "pr-ben", stack.password)
    async with websocket(b.ws_url, origin=b.origin, session_id=ben) as watcher:
        await watcher.subscribe(PRODUCT, pk)
        await watcher.send({"type": "presence.join", "model": PRODUCT, "pk": pk})
        await members_until(watcher, pk, lambda m: names(m) == ["pr-ben"], timeout=5)
        async with websocket(a.ws_url, origin=a.origin, session_id=ann) as on_a:
            await on_a.subscribe(PRODUCT, pk)
            await on_a.send({"type": "presence.join", "model": PRODUCT, "pk": pk})
            await members_until(watcher, pk, lambda m: len(m) == 2, timeout=5)
            await asyncio.to_thread(a.kill)  # SIGKILL: A removes nothing
            killed = time.monotonic()
            members = await members_until(
                watcher, pk, lambda m: names(m) == ["pr-ben"], timeout=BOUND + 5
            )
            gone_after = time.monotonic() - killed
        print(f"\nkilled instance's member gone after {gone_after:.2f}s (bound {BOUND:.1f}s)")
        assert gone_after < BOUND
        # B's own member stayed throughout.
        assert members[0]["connections"] == 1

"""Presence through the websocket endpoint (WebsocketCommunicator), on the test Redis.

Two instances on one Redis are in tests/demo/test_e2e_presence.py; here one process plays
every connection, and a member written to Redis under another process's token plays a
killed instance's.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, Permission, User
from django.test import override_settings

from broadcast_app.instance import presence
from broadcast_app.instance.presence_local import local
from broadcast_app.routing import websocket_urlpatterns

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

TIMEOUT = 5
PRODUCT = "testapp.product"


def make_user(username: str, view: bool = True) -> User:
    user = User.objects.create_user(
        username, password="x", first_name=username.title(), last_name="Tester"
    )
    if view:
        user.user_permissions.add(Permission.objects.get(codename="view_product"))
    return User.objects.get(pk=user.pk)  # fresh permission cache


async def connect(user: Any) -> WebsocketCommunicator:
    ws = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/broadcast/")
    ws.scope["user"] = user
    assert (await ws.connect(timeout=TIMEOUT))[0]
    return ws


async def ask(ws: WebsocketCommunicator, frame: Any) -> dict[str, Any]:
    await ws.send_to(text_data=frame if isinstance(frame, str) else json.dumps(frame))
    reply: dict[str, Any] = await ws.receive_json_from(timeout=TIMEOUT)
    return reply


async def subscribe(ws: WebsocketCommunicator, pk: str) -> None:
    reply = await ask(ws, {"type": "subscribe", "model": PRODUCT, "pk": pk})
    assert reply["type"] == "subscribed", reply


async def join(ws: WebsocketCommunicator, pk: str, state: Any = None, **more: Any) -> None:
    frame = {"type": "presence.join", "model": PRODUCT, "pk": pk, **more}
    if state is not None:
        frame["state"] = state
    await ws.send_json_to(frame)


async def members_until(
    ws: WebsocketCommunicator,
    pk: str,
    holds: Callable[[list[dict[str, Any]]], bool],
    timeout: float = TIMEOUT,
) -> list[dict[str, Any]]:
    """The members of the first ``presence`` frame of ``pk`` for which ``holds`` is true
    (earlier lists may go by: each change sends the whole list)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen = []
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            pytest.fail(f"no presence list as expected; seen {seen}")
        try:
            frame = await ws.receive_json_from(timeout=remaining)
        except TimeoutError:
            pytest.fail(f"no presence list as expected; seen {seen}")
        assert frame["type"] == "presence", frame
        assert (frame["model"], frame["pk"]) == (PRODUCT, pk)
        members: list[dict[str, Any]] = frame["members"]
        seen.append(members)
        if holds(members):
            return members


def names(members: list[dict[str, Any]]) -> list[str]:
    return [member["user"]["username"] for member in members]


async def ping_is_next(ws: WebsocketCommunicator) -> None:
    """Nothing else is queued: the server answers in order."""
    assert await ask(ws, {"type": "ping"}) == {"type": "pong"}


async def handled(ws: WebsocketCommunicator) -> None:
    """Every frame ``ws`` sent before was handled: the server answers a connection's
    frames in order (presence lists that arrive meanwhile go by)."""
    await ws.send_json_to({"type": "ping"})
    while (await ws.receive_json_from(TIMEOUT))["type"] != "pong":
        pass


@pytest_asyncio.fixture
async def users(running_listener: Any) -> AsyncIterator[dict[str, User]]:
    made = {
        name: await database_sync_to_async(make_user)(name, view=name != "nobody")
        for name in ("alice", "bob", "nobody")
    }
    yield made


@pytest_asyncio.fixture
async def sockets() -> AsyncIterator[list[WebsocketCommunicator]]:
    """Websockets a test opens (appended to it): all closed after the test."""
    opened: list[WebsocketCommunicator] = []
    yield opened
    for ws in opened:
        await ws.disconnect()


async def open_socket(sockets: list[WebsocketCommunicator], user: Any) -> WebsocketCommunicator:
    ws = await connect(user)
    sockets.append(ws)
    return ws


async def test_a_join_reaches_every_subscriber_of_the_object(
    users: dict[str, User], sockets: list[WebsocketCommunicator]
) -> None:
    alice = await open_socket(sockets, users["alice"])
    bob = await open_socket(sockets, users["bob"])
    for ws in (alice, bob):
        await subscribe(ws, "11")
    await join(alice, "11", {"editing": "price"})
    for ws in (alice, bob):
        members = await members_until(ws, "11", lambda m: bool(m))
        assert len(members) == 1
        member = members[0]
        assert member["user"] == {
            "id": users["alice"].pk,
            "username": "alice",
            "name": "Alice Tester",
        }
        assert (member["state"], member["connections"]) == ({"editing": "price"}, 1)
        assert member["since"].endswith("Z")
        assert set(member) == {"user", "state", "connections", "since"}
    # Nothing for another object's subscriber: it is per object.
    other = await open_socket(sockets, users["bob"])
    await subscribe(other, "12")
    await ping_is_next(other)


async def test_a_late_subscriber_gets_the_current_list_and_an_empty_object_sends_none(
    users: dict[str, User], sockets: list[WebsocketCommunicator]
) -> None:
    alice = await open_socket(sockets, users["alice"])
    await subscribe(alice, "13")
    await join(alice, "13", {"n": 1})
    await members_until(alice, "13", lambda m: names(m) == ["alice"])
    bob = await open_socket(sockets, users["bob"])
    await subscribe(bob, "13")
    members = await members_until(bob, "13", lambda m: True)
    assert (names(members), members[0]["state"]) == (["alice"], {"n": 1})
    # A subscriber of an object nobody is on gets nothing until someone joins.
    await subscribe(bob, "100")
    await join(alice, "13", {"n": 2})  # a list that goes out after 100's read ("100" < "13")
    await members_until(bob, "13", lambda m: m[0]["state"] == {"n": 2})
    await ping_is_next(bob)


async def test_two_tabs_are_one_member_with_the_latest_state_and_leave_one_by_one(
    users: dict[str, User], sockets: list[WebsocketCommunicator]
) -> None:
    tab1 = await open_socket(sockets, users["alice"])
    tab2 = await open_socket(sockets, users["alice"])
    bob = await open_socket(sockets, users["bob"])
    for ws in (tab1, tab2, bob):
        await subscribe(ws, "21")
    await join(tab1, "21", {"tab": 1})
    await members_until(bob, "21", lambda m: names(m) == ["alice"])
    await join(tab2, "21", {"tab": 2})
    members = await members_until(bob, "21", lambda m: m[0]["connections"] == 2)
    assert (names(members), members[0]["state"]) == (["alice"], {"tab": 2})
    since = members[0]["since"]
    await join(tab1, "21", {"tab": 1, "again": True})
    members = await members_until(bob, "21", lambda m: m[0]["state"].get("again") is True)
    assert (members[0]["connections"], members[0]["since"]) == (2, since)
    await tab1.send_json_to({"type": "presence.leave", "model": PRODUCT, "pk": "21"})
    members = await members_until(bob, "21", lambda m: m[0]["connections"] == 1)
    assert members[0]["state"] == {"tab": 2}
    await tab2.send_json_to({"type": "presence.leave", "model": PRODUCT, "pk": "21"})
    assert await members_until(bob, "21", lambda m: not m) == []


async def test_the_latest_of_two_tabs_updates_wins_within_one_millisecond(
    users: dict[str, User],
) -> None:
    """Two tabs' joins and updates come back to back (often within one millisecond of
    Redis' clock): the state shown is always the last one written."""
    user_key = str(users["alice"].pk)
    for n in range(20):
        pk = f"2{n:02d}"
        tabs = [f"t/{n}a|{user_key}", f"t/{n}b|{user_key}"]
        payloads = [json.dumps({"user": {}, "state": {"write": k}}) for k in range(3)]
        for write, tab in enumerate([*tabs, tabs[0]]):
            await presence.join(PRODUCT, pk, tab, user_key, payloads[write], 0)
            (member,) = await presence.read(PRODUCT, pk)
            assert member.state == {"write": write}
        await presence.leave(PRODUCT, pk, tabs)


async def test_two_users_are_two_members_in_the_order_they_came(
    users: dict[str, User], sockets: list[WebsocketCommunicator]
) -> None:
    alice = await open_socket(sockets, users["alice"])
    bob = await open_socket(sockets, users["bob"])
    for ws in (alice, bob):
        await subscribe(ws, "22")
    await join(alice, "22")
    await members_until(bob, "22", lambda m: len(m) == 1)
    await join(bob, "22", {"typing": True})
    members = await members_until(alice, "22", lambda m: len(m) == 2)
    assert names(members) == ["alice", "bob"]
    assert [m["state"] for m in members] == [{}, {"typing": True}]


@pytest.mark.parametrize("way_out", ["close", "unsubscribe", "exception"])
async def test_a_connection_that_ends_or_unsubscribes_leaves_at_once(
    users: dict[str, User],
    sockets: list[WebsocketCommunicator],
    monkeypatch: pytest.MonkeyPatch,
    way_out: str,
) -> None:
    alice = await open_socket(sockets, users["alice"])
    bob = await open_socket(sockets, users["bob"])
    for ws in (alice, bob):
        await subscribe(ws, "31")
    await join(alice, "31")
    await members_until(bob, "31", lambda m: names(m) == ["alice"])
    if way_out == "close":
        await alice.disconnect()
        sockets.remove(alice)
    elif way_out == "unsubscribe":
        await alice.send_json_to({"type": "unsubscribe", "model": PRODUCT, "pk": "31"})
    else:
        from broadcast_app.web import consumers

        # A fault outside receive()'s own handling: channels ends the consumer without
        # calling disconnect(); its __call__'s cleanup must still take it out.
        async def failing(self: Any, message: dict[str, Any]) -> None:
            raise RuntimeError("injected fault")

        monkeypatch.setattr(consumers.BroadcastConsumer, "websocket_receive", failing)
        await alice.send_json_to({"type": "ping"})
        with pytest.raises(RuntimeError, match="injected fault"):
            await alice.wait(TIMEOUT)
        sockets.remove(alice)
    # Well within the TTL: the leave is the cleanup's, not an expiry.
    assert await members_until(bob, "31", lambda m: not m, timeout=2) == []
    assert all((PRODUCT, "31") not in entries for entries in local.joined.values())


async def test_anonymous_users_and_users_without_the_permission_are_forbidden(
    users: dict[str, User], sockets: list[WebsocketCommunicator]
) -> None:
    anonymous = await open_socket(sockets, AnonymousUser())
    nobody = await open_socket(sockets, users["nobody"])
    for ws in (anonymous, nobody):
        reply = await ask(
            ws, {"type": "presence.join", "model": PRODUCT, "pk": "41", "state": {}, "ref": 3}
        )
        assert (reply["type"], reply["code"], reply["ref"]) == ("error", "forbidden", 3)
    alice = await open_socket(sockets, users["alice"])
    await subscribe(alice, "41")
    await ping_is_next(alice)  # nobody joined


async def test_an_object_check_that_refuses_the_object_forbids_joining(
    users: dict[str, User], sockets: list[WebsocketCommunicator], reregister: Any
) -> None:
    from tests.testapp.models import Product

    def make() -> Product:
        with override_settings(BROADCAST_ENABLED=False):  # no event to race with
            return Product.objects.create(sku="OC", name="OC", price="1.00", stock=1)

    product = await database_sync_to_async(make)()
    pk = str(product.pk)
    alice = await open_socket(sockets, users["alice"])
    await subscribe(alice, pk)
    # The subscription was allowed; the object check refuses it from now on.
    reregister(exclude=["cost_price"], object_check=lambda user, data: user.username != "alice")
    reply = await ask(alice, {"type": "presence.join", "model": PRODUCT, "pk": pk})
    assert (reply["type"], reply["code"]) == ("error", "forbidden")
    await ping_is_next(alice)


async def test_joining_needs_a_subscription_to_the_object(
    users: dict[str, User], sockets: list[WebsocketCommunicator]
) -> None:
    alice = await open_socket(sockets, users["alice"])
    await subscribe(alice, "42")
    reply = await ask(alice, {"type": "presence.join", "model": PRODUCT, "pk": "43"})
    assert (reply["type"], reply["code"]) == ("error", "bad_request")
    assert "Subscribe to testapp.product 43" in reply["detail"]


async def test_a_filtered_subscription_is_no_object_to_be_present_on(
    users: dict[str, User], sockets: list[WebsocketCommunicator]
) -> None:
    alice = await open_socket(sockets, users["alice"])
    where = {"stock__lt": 5}
    reply = await ask(alice, {"type": "subscribe", "model": PRODUCT, "where": where})
    assert reply["type"] == "subscribed"
    assert local.watchers == {}  # no member list to follow (nor to read from Redis)
    join = {"type": "presence.join", "model": PRODUCT, "where": where}
    reply = await ask(alice, join)
    assert (reply["type"], reply["code"]) == ("error", "bad_request")
    await alice.send_json_to({"type": "unsubscribe", "model": PRODUCT, "where": where})
    assert await ask(alice, {"type": "ping"}) == {"type": "pong"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"type": "presence.join", "model": PRODUCT}, "bad_request"),
        ({"type": "presence.join", "model": PRODUCT, "pk": None}, "bad_request"),
        ({"type": "presence.join", "model": PRODUCT, "pk": "x"}, "bad_request"),
        ({"type": "presence.join", "model": PRODUCT, "pk": "51", "state": []}, "bad_request"),
        ({"type": "presence.join", "model": PRODUCT, "pk": "51", "state": "hi"}, "bad_request"),
        ({"type": "presence.join", "model": PRODUCT, "pk": "51", "state": None}, "bad_request"),
        ({"type": "presence.join", "model": "no.such", "pk": "51"}, "unknown_model"),
        ({"type": "presence.join", "model": 5, "pk": "51"}, "bad_request"),
        ({"type": "presence.leave", "model": PRODUCT}, "bad_request"),
        ({"type": "presence.leave", "model": PRODUCT, "pk": {}}, "bad_request"),
        (
            {"type": "presence.join", "model": PRODUCT, "pk": "51", "state": {"a": "x" * 1100}},
            "too_large",
        ),
        (
            '{"type":"presence.join","model":"testapp.product","pk":"51","state":{"a":"\\ud800"}}',
            "bad_request",
        ),
    ],
)
async def test_hostile_presence_frames_get_error_frames(
    users: dict[str, User],
    sockets: list[WebsocketCommunicator],
    caplog: pytest.LogCaptureFixture,
    frame: Any,
    code: str,
) -> None:
    alice = await open_socket(sockets, users["alice"])
    await subscribe(alice, "51")
    with caplog.at_level(logging.WARNING):
        reply = await ask(alice, frame)
    assert (reply["type"], reply["code"]) == ("error", code), reply
    await ping_is_next(alice)  # no member list either: nobody joined
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_state_is_bounded_in_bytes_of_its_json(
    users: dict[str, User], sockets: list[WebsocketCommunicator]
) -> None:
    alice = await open_socket(sockets, users["alice"])
    await subscribe(alice, "52")
    # {"a":"éé"}: 10 characters of JSON, 12 bytes.
    with override_settings(BROADCAST_PRESENCE_STATE_BYTES=11):
        reply = await ask(alice, {"type": "presence.join", "model": PRODUCT, "pk": "52",
                                  "state": {"a": "éé"}})  # fmt: skip
        assert (reply["type"], reply["code"]) == ("error", "too_large")
    with override_settings(BROADCAST_PRESENCE_STATE_BYTES=12):
        await join(alice, "52", {"a": "éé"})
        members = await members_until(alice, "52", lambda m: bool(m))
    assert members[0]["state"] == {"a": "éé"}


@override_settings(BROADCAST_PRESENCE_RATE=1)
async def test_joins_and_updates_are_rate_limited_per_connection(
    users: dict[str, User], sockets: list[WebsocketCommunicator]
) -> None:
    alice = await open_socket(sockets, users["alice"])
    other_tab = await open_socket(sockets, users["alice"])
    for ws in (alice, other_tab):
        await subscribe(ws, "53")
    errors = []
    for n in range(3):
        await join(alice, "53", {"n": n}, ref=n)
    # A burst of one joins; the updates right after it are refused, each with its ref.
    while len(errors) < 2:
        frame = await alice.receive_json_from(timeout=TIMEOUT)
        if frame["type"] == "error":
            errors.append((frame["code"], frame["ref"]))
    assert errors == [("rate_limited", 1), ("rate_limited", 2)]
    members = await members_until(other_tab, "53", lambda m: bool(m))
    assert (members[0]["state"], members[0]["connections"]) == ({"n": 0}, 1)
    # Per connection: another tab of the same user still joins.
    await join(other_tab, "53", {"tab": 2})
    await members_until(alice, "53", lambda m: bool(m) and m[0]["connections"] == 2)


@override_settings(BROADCAST_PRESENCE_MAX_MEMBERS=1)
async def test_users_per_object_are_bounded_but_a_members_other_tab_joins(
    users: dict[str, User], sockets: list[WebsocketCommunicator]
) -> None:
    alice = await open_socket(sockets, users["alice"])
    alice2 = await open_socket(sockets, users["alice"])
    bob = await open_socket(sockets, users["bob"])
    for ws in (alice, alice2, bob):
        await subscribe(ws, "54")
    await join(alice, "54")
    await members_until(bob, "54", lambda m: bool(m))
    reply = await ask(bob, {"type": "presence.join", "model": PRODUCT, "pk": "54", "ref": 1})
    assert (reply["type"], reply["code"], reply["ref"]) == ("error", "too_many_members", 1)
    await join(alice2, "54")
    members = await members_until(bob, "54", lambda m: m[0]["connections"] == 2)
    assert names(members) == ["alice"]


async def test_the_user_hook_decides_what_members_show(
    users: dict[str, User], sockets: list[WebsocketCommunicator]
) -> None:
    alice = await open_socket(sockets, users["alice"])
    await subscribe(alice, "55")
    with override_settings(BROADCAST_PRESENCE_USER=lambda user: {"initial": user.username[0]}):
        await join(alice, "55")
        members = await members_until(alice, "55", lambda m: bool(m))
    assert members[0]["user"] == {"initial": "a"}


@override_settings(BROADCAST_REVALIDATE_INTERVAL=0.2)
@pytest.mark.slow
async def test_a_lost_permission_removes_the_member(
    users: dict[str, User], sockets: list[WebsocketCommunicator]
) -> None:
    from broadcast_app.web.access import revalidator

    alice = await open_socket(sockets, users["alice"])
    bob = await open_socket(sockets, users["bob"])
    for ws in (alice, bob):
        await subscribe(ws, "56")
    await join(alice, "56")
    await members_until(bob, "56", lambda m: names(m) == ["alice"])
    try:
        await database_sync_to_async(users["alice"].user_permissions.clear)()
        assert await members_until(bob, "56", lambda m: not m) == []
        reply = await alice.receive_json_from(timeout=TIMEOUT)
        while reply["type"] == "presence":
            reply = await alice.receive_json_from(timeout=TIMEOUT)
        assert (reply["type"], reply["code"], reply["pk"]) == ("error", "forbidden", "56")
    finally:
        await revalidator.stop()


@override_settings(BROADCAST_PRESENCE_TTL=0.6)
@pytest.mark.slow
async def test_members_whose_instance_stopped_refreshing_them_disappear_within_the_bound(
    users: dict[str, User], sockets: list[WebsocketCommunicator]
) -> None:
    bob = await open_socket(sockets, users["bob"])
    await subscribe(bob, "57")
    # What a killed instance leaves behind: an entry nobody refreshes any more.
    payload = json.dumps({"user": {"username": "ghost"}, "state": {}})
    ghost = presence.connection_id("deadbeefdeadbeef", 1, "999")
    assert await presence.join(PRODUCT, "57", ghost, "999", payload, 0) is not None
    await members_until(bob, "57", lambda m: names(m) == ["ghost"])
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await members_until(bob, "57", lambda m: not m, timeout=3) == []
    # The deadline (0.6 s) plus one re-read interval (0.2 s), plus scheduling.
    assert loop.time() - began < 0.6 * 4 / 3 + 0.5
    # Meanwhile a live member is kept: its instance refreshes it.
    await join(bob, "57")
    await members_until(bob, "57", lambda m: names(m) == ["bob"])
    # What is tested is time passing: more than two TTLs, the refresh kept it alive.
    await asyncio.sleep(1.5)
    assert [m.as_json()["user"]["username"] for m in await presence.read(PRODUCT, "57")] == ["bob"]


async def test_lists_are_read_from_redis_not_accumulated_from_notifications(
    users: dict[str, User], sockets: list[WebsocketCommunicator], redis_client: Any
) -> None:
    bob = await open_socket(sockets, users["bob"])
    await subscribe(bob, "58")
    deadlines, data = presence.deadlines_key(PRODUCT, "58"), presence.data_key(PRODUCT, "58")
    seconds, micros = redis_client.time()
    now = seconds * 1000 + micros // 1000
    # Another process's member whose notification never arrived (pub/sub is at most
    # once): the next list still has it, because every list is read whole from Redis.
    carol = presence.connection_id("0123456789abcdef", 1, "77")
    value = f'{now}|{now}|{{"user":{{"username":"carol"}},"state":{{}}}}'
    redis_client.zadd(deadlines, {carol: now + 60_000})
    redis_client.hset(data, carol, value)
    await join(bob, "58")
    members = await members_until(bob, "58", lambda m: "bob" in names(m))
    assert names(members) == ["carol", "bob"]
    # And its silent departure is not missed either.
    redis_client.zrem(deadlines, carol)
    redis_client.hdel(data, carol)
    await join(bob, "58", {"n": 1})
    members = await members_until(bob, "58", lambda m: m[-1]["state"] == {"n": 1})
    assert names(members) == ["bob"]


@override_settings(BROADCAST_REVALIDATE_INTERVAL=0.2)
@pytest.mark.slow
async def test_a_revoked_session_closes_the_socket_and_removes_the_member(
    users: dict[str, User], sockets: list[WebsocketCommunicator]
) -> None:
    from channels.auth import AuthMiddlewareStack
    from django.contrib.sessions.backends.db import SessionStore
    from django.test import Client

    from broadcast_app.web.access import revalidator

    def log_in() -> str:
        client = Client()
        assert client.login(username="alice", password="x")
        return str(client.cookies["sessionid"].value)

    key = await database_sync_to_async(log_in)()
    alice = WebsocketCommunicator(
        AuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
        "/ws/broadcast/",
        headers=[(b"cookie", f"sessionid={key}".encode())],
    )
    assert (await alice.connect(TIMEOUT))[0]
    bob = await open_socket(sockets, users["bob"])
    for ws in (alice, bob):
        await subscribe(ws, "59")
    try:
        await join(alice, "59")
        await members_until(bob, "59", lambda m: names(m) == ["alice"])
        await database_sync_to_async(SessionStore(key).delete)()  # what logout does
        assert await members_until(bob, "59", lambda m: not m) == []
        # Alice's socket was closed (4003), not just forgotten.
        output = await alice.receive_output(TIMEOUT)
        while output.get("type") == "websocket.send":
            output = await alice.receive_output(TIMEOUT)
        assert output == {"type": "websocket.close", "code": 4003}
        await alice.disconnect(code=4003)
    finally:
        await revalidator.stop()


async def test_the_dashboard_counts_present_connections_per_visible_model(
    users: dict[str, User], sockets: list[WebsocketCommunicator]
) -> None:
    from broadcast_app.conf import conf
    from broadcast_app.instance import heartbeat, status

    # Only this instance counts: an earlier test's instance (another id, this Redis) may
    # still have a heartbeat, with its presence figures, until it expires.
    async with heartbeat.connect() as client:
        for peer in await heartbeat.live_instances(client):
            if peer.get("id") != conf.BROADCAST_INSTANCE_ID:
                await client.delete(heartbeat.instance_key(str(peer.get("id"))))
    tabs = [await open_socket(sockets, users["alice"]) for _ in range(2)]
    for tab in tabs:
        await subscribe(tab, "60")
        await join(tab, "60")
    await members_until(tabs[0], "60", lambda m: bool(m) and m[0]["connections"] == 2)
    # The list goes out once Redis has both; this instance counts a join once its
    # handler is done, which may be after that list.
    for tab in tabs:
        await handled(tab)
    seen = await status.gather({PRODUCT})
    (product,) = [m for m in seen["models"] if m["label"] == PRODUCT]
    assert product["present"] == 2
    assert seen["instance"]["presence"] == {PRODUCT: 2}
    # A user who may not see the model sees nothing of it, not even its label.
    hidden = await status.gather(set())
    assert all(figures["presence"] == {} for figures in hidden["instances"])
    assert PRODUCT not in json.dumps(hidden)
    await tabs[1].send_json_to({"type": "presence.leave", "model": PRODUCT, "pk": "60"})
    await members_until(tabs[0], "60", lambda m: m[0]["connections"] == 1)
    (product,) = [m for m in (await status.gather({PRODUCT}))["models"] if m["label"] == PRODUCT]
    assert product["present"] == 1

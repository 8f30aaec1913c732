"""The websocket endpoint, through WebsocketCommunicator, with real Redis behind it."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, Permission, User
from django.test import override_settings

from broadcast_app.events.wire import id_key
from broadcast_app.routing import websocket_urlpatterns
from tests.testapp.models import Product

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

TIMEOUT = 5


def viewer() -> User:
    user = User.objects.create_user("viewer", password="x")
    user.user_permissions.add(Permission.objects.get(codename="view_product"))
    return User.objects.get(pk=user.pk)  # fresh permission cache


def make(sku: str, **fields: Any) -> Product:
    values: dict[str, Any] = {"name": sku, "price": Decimal("1.00"), "stock": 1}
    values.update(fields)
    return Product.objects.create(sku=sku, **values)


def make_quietly(sku: str, **fields: Any) -> Product:
    """Create a product without an event (so none can race with the test's frames)."""
    with override_settings(BROADCAST_ENABLED=False):
        return make(sku, **fields)


async def connect(user: Any) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/broadcast/")
    communicator.scope["user"] = user
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected
    return communicator


async def ask(ws: WebsocketCommunicator, frame: Any) -> dict[str, Any]:
    if isinstance(frame, bytes):
        await ws.send_to(bytes_data=frame)
    else:
        await ws.send_to(text_data=frame if isinstance(frame, str) else json.dumps(frame))
    reply: dict[str, Any] = await ws.receive_json_from(timeout=TIMEOUT)
    return reply


@pytest_asyncio.fixture
async def anon_ws(running_listener: Any) -> AsyncIterator[WebsocketCommunicator]:
    ws = await connect(AnonymousUser())
    yield ws
    await ws.disconnect()


@pytest_asyncio.fixture
async def viewer_ws(running_listener: Any) -> AsyncIterator[WebsocketCommunicator]:
    ws = await connect(await database_sync_to_async(viewer)())
    yield ws
    await ws.disconnect()


async def test_ping_pong(anon_ws: WebsocketCommunicator) -> None:
    assert await ask(anon_ws, {"type": "ping"}) == {"type": "pong"}


async def test_frames_beyond_the_connection_allowance_get_rate_limited_and_no_work(
    running_listener: Any, redis_client: Any
) -> None:
    with override_settings(BROADCAST_FRAME_BURST=3, BROADCAST_FRAME_RATE=0.001):
        ws = await connect(AnonymousUser())
        try:
            assert [await ask(ws, {"type": "ping"}) for _ in range(3)] == [{"type": "pong"}] * 3
            before = redis_client.info("commandstats").get("cmdstat_hget", {}).get("calls", 0)
            for frame in (
                {"type": "subscribe", "model": "testapp.product", "ref": 1},
                "x" * 10**5,
            ):
                error = await ask(ws, frame)
                assert (error["type"], error["code"], error["ref"]) == (
                    "error", "rate_limited", None
                ), error  # fmt: skip
            assert (
                redis_client.info("commandstats").get("cmdstat_hget", {}).get("calls", 0) == before
            )  # the subscribe was not read: no last id asked of Redis
            # Another connection has its own allowance.
            other = await connect(AnonymousUser())
            assert await ask(other, {"type": "ping"}) == {"type": "pong"}
            await other.disconnect()
        finally:
            await ws.disconnect()


@override_settings(BROADCAST_FRAME_BURST=2, BROADCAST_FRAME_RATE=4)
@pytest.mark.slow
async def test_the_frame_allowance_comes_back_at_its_rate(running_listener: Any) -> None:
    ws = await connect(AnonymousUser())
    replies = [(await ask(ws, {"type": "ping"}))["type"] for _ in range(3)]
    assert replies == ["pong", "pong", "error"]
    await asyncio.sleep(0.25)  # one frame's worth at 4/s: the rate itself is the subject
    assert await ask(ws, {"type": "ping"}) == {"type": "pong"}
    await ws.disconnect()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json {", "bad_json"),
        (b"\x00\x01binary", "bad_request"),
        ("[1, 2]", "bad_request"),
        ('"just a string"', "bad_request"),
        ({"type": "dance"}, "bad_request"),
        ({"no": "type"}, "bad_request"),
        ({"type": "subscribe"}, "bad_request"),
        ({"type": "subscribe", "model": 12}, "bad_request"),
        ({"type": "subscribe", "model": "testapp.product", "pk": ["x"]}, "bad_request"),
        ({"type": "subscribe", "model": "testapp.product", "pk": "abc"}, "bad_request"),
        ({"type": "subscribe", "model": "auth.user"}, "unknown_model"),
        ({"type": "subscribe", "model": "no.such"}, "unknown_model"),
        ({"type": "unsubscribe", "model": "nope"}, "unknown_model"),
        ("x" * 5000, "too_large"),
        ({"type": "ping", "pad": "é" * 3000}, "too_large"),
        # Each of these raised out of the consumer once (issue 12).
        ('{"type":[]}', "bad_request"),
        ('{"type":{}}', "bad_request"),
        ('{"type":"subscribe","model":["testapp.product"]}', "bad_request"),
        ("[" * 2000 + "]" * 2000, "bad_request"),  # 3.11's parser raises, 3.13's reads it
        ('{"type":"ping","ref":' + "[" * 40 + "]" * 40 + "}", "bad_request"),
        ('{"type":"ping","ref":NaN}', "bad_json"),
        ('{"type":"ping","ref":-Infinity}', "bad_json"),
        ('{"type":"ping","ref":1e999}', "bad_json"),
        ('{"type":"subscribe","model":"testapp.\\ud800"}', "bad_request"),
        ('{"type":"subscribe","model":"testapp.product","pk":"\\udfff"}', "bad_request"),
        ({"type": "subscribe", "model": "testapp.product", "pk": 10**30}, "bad_request"),
        ({"type": "subscribe", "model": "testapp.product", "pk": "9" * 40}, "bad_request"),
    ],
)
async def test_bad_frames_get_error_frames_and_the_connection_stays_usable(
    anon_ws: WebsocketCommunicator, frame: Any, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        reply = await ask(anon_ws, frame)
    assert reply["type"] == "error"
    assert reply["code"] == code
    assert reply["detail"]
    assert await ask(anon_ws, {"type": "ping"}) == {"type": "pong"}
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_error_frames_echo_ref(anon_ws: WebsocketCommunicator) -> None:
    reply = await ask(anon_ws, {"type": "subscribe", "model": "x.y", "ref": {"n": 7}})
    assert reply == {
        "type": "error",
        "code": "unknown_model",
        "detail": reply["detail"],
        "ref": {"n": 7},
    }


async def test_anonymous_subscribe_is_forbidden(anon_ws: WebsocketCommunicator) -> None:
    reply = await ask(anon_ws, {"type": "subscribe", "model": "testapp.product", "ref": 1})
    assert (reply["type"], reply["code"], reply["ref"]) == ("error", "forbidden", 1)


async def test_subscribed_then_change_events_then_unsubscribe(
    viewer_ws: WebsocketCommunicator,
) -> None:
    reply = await ask(viewer_ws, {"type": "subscribe", "model": "testapp.product", "ref": "r1"})
    assert reply == {
        "type": "subscribed",
        "model": "testapp.product",
        "pk": None,
        "ref": "r1",
        "last_id": reply["last_id"],
    }
    product = await database_sync_to_async(make)("S-1", cost_price=Decimal("3.33"))
    event = await viewer_ws.receive_json_from(timeout=TIMEOUT)
    assert event["type"] == "change"
    assert (event["op"], event["model"], event["pk"]) == (
        "created",
        "testapp.product",
        str(product.pk),
    )
    assert "cost_price" not in event["data"]
    assert isinstance(event["id"], str) and event["id"]

    # Swap the model-wide subscription for one on another object: a save of `product`
    # must no longer arrive, so the next frame is the other object's event.
    other = await database_sync_to_async(make)("S-2")
    assert (await viewer_ws.receive_json_from(timeout=TIMEOUT))["pk"] == str(other.pk)
    await viewer_ws.send_json_to({"type": "unsubscribe", "model": "testapp.product"})
    reply = await ask(viewer_ws, {"type": "subscribe", "model": "testapp.product", "pk": other.pk})
    assert (reply["type"], reply["pk"]) == ("subscribed", str(other.pk))

    def touch_both() -> None:
        product.stock = 50
        product.save()
        other.stock = 60
        other.save()

    await database_sync_to_async(touch_both)()
    event = await viewer_ws.receive_json_from(timeout=TIMEOUT)
    assert (event["pk"], event["changed"], event["data"]["stock"]) == (
        str(other.pk),
        ["stock"],
        60,
    )


async def test_subscription_to_model_and_object_delivers_once(
    viewer_ws: WebsocketCommunicator,
) -> None:
    product = await database_sync_to_async(make_quietly)("D-1")
    await ask(viewer_ws, {"type": "subscribe", "model": "testapp.product"})
    await ask(viewer_ws, {"type": "subscribe", "model": "testapp.product", "pk": str(product.pk)})

    def two_saves() -> None:
        product.stock = 2
        product.save()
        product.stock = 3
        product.save()

    await database_sync_to_async(two_saves)()
    first = await viewer_ws.receive_json_from(timeout=TIMEOUT)
    second = await viewer_ws.receive_json_from(timeout=TIMEOUT)
    assert (first["data"]["stock"], second["data"]["stock"]) == (2, 3)
    assert id_key(first["id"]) < id_key(second["id"])


@override_settings(BROADCAST_MAX_SUBSCRIPTIONS=2)
async def test_subscriptions_per_connection_are_bounded(viewer_ws: WebsocketCommunicator) -> None:
    for pk in ("1", "2"):
        reply = await ask(viewer_ws, {"type": "subscribe", "model": "testapp.product", "pk": pk})
        assert reply["type"] == "subscribed"
    # Subscribing again to the same target is not a new subscription.
    again = await ask(viewer_ws, {"type": "subscribe", "model": "testapp.product", "pk": "2"})
    assert again["type"] == "subscribed"
    reply = await ask(viewer_ws, {"type": "subscribe", "model": "testapp.product", "pk": "3"})
    assert (reply["type"], reply["code"]) == ("error", "too_many_subscriptions")


async def test_object_check_filters_subscriptions_and_events(
    running_listener: Any, reregister: Any
) -> None:
    reregister(exclude=["cost_price"], object_check=lambda user, data: data.get("stock", 0) > 0)
    hidden = await database_sync_to_async(make_quietly)("H-1", stock=0)
    ws = await connect(await database_sync_to_async(viewer)())
    try:
        reply = await ask(ws, {"type": "subscribe", "model": "testapp.product", "pk": hidden.pk})
        assert (reply["type"], reply["code"]) == ("error", "forbidden")
        await ask(ws, {"type": "subscribe", "model": "testapp.product"})
        await database_sync_to_async(make)("H-2", stock=0)
        shown = await database_sync_to_async(make)("V-1", stock=4)
        event = await ws.receive_json_from(timeout=TIMEOUT)
        assert event["pk"] == str(shown.pk)
    finally:
        await ws.disconnect()


async def test_an_object_check_may_ask_the_users_permissions_without_a_query(
    running_listener: Any, reregister: Any
) -> None:
    """The subscription's check leaves Django's permission cache on the connection's
    user when a model has an ``object_check``: the hook runs in the event loop, where
    ``has_perm`` must not query (it would fail, and the check deny)."""
    reregister(object_check=lambda user, data: user.has_perm("testapp.view_product"))
    product = await database_sync_to_async(make_quietly)("C-1")
    ws = await connect(await database_sync_to_async(viewer)())
    try:
        reply = await ask(ws, {"type": "subscribe", "model": "testapp.product", "pk": product.pk})
        assert reply["type"] == "subscribed", reply
    finally:
        await ws.disconnect()


@pytest.mark.slow
async def test_two_hundred_clients_connect_and_close_at_once_leaving_nothing_behind(
    running_listener: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from broadcast_app.instance.hub import hub

    user = await database_sync_to_async(viewer)()
    before = hub.count()
    with caplog.at_level(logging.WARNING):
        clients = await asyncio.gather(*(connect(user) for _ in range(200)))
        replies = await asyncio.gather(
            *(ask(ws, {"type": "subscribe", "model": "testapp.product"}) for ws in clients)
        )
        assert {r["type"] for r in replies} == {"subscribed"}
        assert hub.count() == before + 200
        product = await database_sync_to_async(make)("BURST-1")
        events = await asyncio.gather(*(ws.receive_json_from(timeout=TIMEOUT) for ws in clients))
        assert {e["pk"] for e in events} == {str(product.pk)}
        await asyncio.gather(*(ws.disconnect() for ws in clients))
    assert hub.count() == before
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest_asyncio.fixture
async def small_queue_ws(running_listener: Any) -> AsyncIterator[WebsocketCommunicator]:
    """A viewer whose connection queues at most 5 frames."""
    with override_settings(BROADCAST_SEND_QUEUE_SIZE=5):
        ws = await connect(await database_sync_to_async(viewer)())
    yield ws
    await ws.disconnect()


def change_frame(stock: int) -> tuple[str, dict[str, Any]]:
    event = {"type": "change", "id": f"1-{stock}:e", "op": "updated", "model": "testapp.product",
             "pk": "7", "data": {"id": 7, "stock": stock}, "changed": ["stock"]}  # fmt: skip
    return json.dumps(event, separators=(",", ":")), event


async def test_a_client_that_falls_behind_gets_a_reset_instead_of_the_backlog(
    small_queue_ws: WebsocketCommunicator,
) -> None:
    from broadcast_app.instance.hub import hub

    ws = small_queue_ws
    await ask(ws, {"type": "subscribe", "model": "testapp.product"})
    await ask(ws, {"type": "subscribe", "model": "testapp.product", "pk": "7"})
    (consumer,) = hub._subs["testapp.product"]["7"]
    # The client stops reading: the server makes each send wait until it reads again.
    reading = asyncio.Event()
    server_send = consumer.sender._send

    async def slow_send(message: dict[str, Any]) -> None:
        await reading.wait()
        await server_send(message)

    consumer.sender._send = slow_send
    # Seven events: the first waits in the server's send, five fill the queue behind
    # it, the seventh overflows it: the five queued events and the seventh give way to
    # one reset per subscription.
    for stock in range(1, 8):
        hub.deliver(*change_frame(stock))
    reading.set()
    received = [await ws.receive_json_from(timeout=TIMEOUT) for _ in range(3)]
    assert [(f["type"], f.get("pk"), f.get("reason")) for f in received] == [
        ("change", "7", None),
        ("reset", None, "overflow"),
        ("reset", "7", "overflow"),
    ]
    assert received[0]["data"]["stock"] == 1
    # A burst that overflows again supersedes the earlier resets, never piles them up.
    reading.clear()
    for stock in range(8, 30):
        hub.deliver(*change_frame(stock))
    reading.set()
    frames = [await ws.receive_json_from(timeout=TIMEOUT) for _ in range(6)]
    assert [f["type"] for f in frames] == ["change", "reset", "reset"] + ["change"] * 3
    assert [f["data"]["stock"] for f in frames[::5]] == [8, 29]
    assert [f["data"]["stock"] for f in frames[3:]] == [27, 28, 29]
    assert await ask(ws, {"type": "ping"}) == {"type": "pong"}


@pytest.mark.slow
async def test_a_replay_longer_than_the_send_queue_is_a_reset(
    small_queue_ws: WebsocketCommunicator,
) -> None:
    from broadcast_app.publish import publisher

    ws = small_queue_ws
    assert (await ask(ws, {"type": "subscribe", "model": "testapp.product"}))[
        "type"
    ] == "subscribed"
    product = await database_sync_to_async(make)("R-1")
    created = await ws.receive_json_from(timeout=TIMEOUT)
    assert created["op"] == "created", created
    await ws.send_json_to({"type": "unsubscribe", "model": "testapp.product"})
    assert await ask(ws, {"type": "ping"}) == {"type": "pong"}  # handled in order
    # Another subscriber, to know when the instance has handled the events: until then,
    # the subscription below would hold them live while it reads the log, and more of
    # them than the queue holds are a reset of another reason ("overflow").
    witness = await connect(await database_sync_to_async(User.objects.get)(username="viewer"))
    assert (await ask(witness, {"type": "subscribe", "model": "testapp.product"}))[
        "type"
    ] == "subscribed"

    def saves(count: int) -> None:
        for stock in range(count):
            product.stock = 100 + stock
            product.save()

    await database_sync_to_async(saves)(6)
    assert await asyncio.to_thread(publisher.flush, 5)
    try:
        seen = [await witness.receive_json_from(timeout=TIMEOUT) for _ in range(6)]
        assert [frame["data"]["stock"] for frame in seen] == list(range(100, 106))
    finally:
        await witness.disconnect()
    reply = await ask(
        ws, {"type": "subscribe", "model": "testapp.product", "since": created["id"]}
    )
    assert reply["type"] == "subscribed"
    reset = await ws.receive_json_from(timeout=TIMEOUT)
    assert (reset["type"], reset["reason"]) == ("reset", "too_many")
    assert await ask(ws, {"type": "ping"}) == {"type": "pong"}


async def test_events_the_replay_carried_are_not_sent_again_when_they_arrive_late(
    viewer_ws: WebsocketCommunicator, redis_server: Any
) -> None:
    """Events this instance's listener has not received yet when a resuming
    subscription reads the log reach the hub later (here: the listener repairs the gap
    they left); the client had them from the replay and gets each once."""
    from tests.instance.test_continuity import deaf_layers, save_stock

    ws = viewer_ws
    await ask(ws, {"type": "subscribe", "model": "testapp.product"})
    product = await database_sync_to_async(make)("L-1")
    created = await ws.receive_json_from(timeout=TIMEOUT)
    assert created["op"] == "created", created
    await ws.send_json_to({"type": "unsubscribe", "model": "testapp.product"})
    assert await ask(ws, {"type": "ping"}) == {"type": "pong"}
    with override_settings(CHANNEL_LAYERS=deaf_layers(redis_server.url)):
        await database_sync_to_async(save_stock)(product, range(11, 14))  # logged, unheard
    reply = await ask(
        ws, {"type": "subscribe", "model": "testapp.product", "since": created["id"]}
    )
    assert reply["type"] == "subscribed"
    replayed = [await ws.receive_json_from(timeout=TIMEOUT) for _ in range(3)]
    assert [f["data"]["stock"] for f in replayed] == [11, 12, 13]
    # The next event shows the listener its gap: it delivers 11..13 from the log, then 14.
    await database_sync_to_async(save_stock)(product, range(14, 15))
    after = await ws.receive_json_from(timeout=TIMEOUT)
    assert (after["type"], after["data"]["stock"]) == ("change", 14), after
    assert await ask(ws, {"type": "ping"}) == {"type": "pong"}


@pytest.mark.slow
async def test_live_events_piling_up_during_a_replay_turn_into_a_reset(
    small_queue_ws: WebsocketCommunicator, redis_client: Any
) -> None:
    from broadcast_app.instance.hub import hub

    ws = small_queue_ws
    await database_sync_to_async(make)("P-1")
    first = await ask(ws, {"type": "subscribe", "model": "testapp.product", "pk": "7"})
    (consumer,) = hub._subs["testapp.product"]["7"]
    # Redis holds the log read back (CLIENT PAUSE) while twelve live events arrive.
    redis_client.client_pause(1000)
    await ws.send_json_to(
        {"type": "subscribe", "model": "testapp.product", "since": first["last_id"]}
    )
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while ("testapp.product", None) not in (consumer.resuming or ()):
        assert asyncio.get_running_loop().time() < deadline, "the replay never started"
        await asyncio.sleep(0.01)  # the consumer's own task starts the read
    for stock in range(1, 13):
        hub.deliver(*change_frame(stock))
    frames = [await ws.receive_json_from(timeout=TIMEOUT) for _ in range(2)]
    assert [f["type"] for f in frames] == ["subscribed", "reset"], frames
    assert (frames[1]["pk"], frames[1]["reason"]) == (None, "overflow")
    assert await ask(ws, {"type": "ping"}) == {"type": "pong"}


async def test_ref_is_echoed_only_as_valid_json(anon_ws: WebsocketCommunicator) -> None:
    big = 10**300
    reply = await ask(anon_ws, {"type": "dance", "ref": [big, "\ud800", {"n": None}]})
    assert reply["ref"] == [big, "\ud800", {"n": None}]  # escaped: "\\ud800"
    await anon_ws.send_to(text_data='{"type":"dance","ref":NaN}')
    text = await anon_ws.receive_from(timeout=TIMEOUT)
    # What the server writes is JSON as the RFC has it: no NaN, Infinity or 1e999.
    reply = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in {text}"))
    assert (reply["code"], reply["ref"]) == ("bad_json", None)


async def test_a_message_with_neither_text_nor_bytes_is_a_binary_frame(
    anon_ws: WebsocketCommunicator,
) -> None:
    await anon_ws.send_input({"type": "websocket.receive", "bytes": None, "text": None})
    reply = await anon_ws.receive_json_from(timeout=TIMEOUT)
    assert (reply["type"], reply["code"]) == ("error", "bad_request")
    assert await ask(anon_ws, {"type": "ping"}) == {"type": "pong"}


def sender_tasks() -> list[asyncio.Task[Any]]:
    return [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "") == "Sender._run"
    ]


def open_senders() -> int:
    """Senders not closed yet (a sender's writer task exists only once a send waited)."""
    from broadcast_app.web.sender import Sender

    return sum(1 for obj in gc.get_objects() if isinstance(obj, Sender) and obj.open)


def open_connections() -> int:
    from broadcast_app.stats import stats

    return stats.get("connections_opened") - stats.get("connections_closed")


async def test_a_failing_object_check_denies_and_is_logged_once(
    running_listener: Any, reregister: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from broadcast_app.instance.hub import hub
    from broadcast_app.web import access

    access._failure_logged.clear()

    def broken(user: Any, data: dict[str, Any]) -> bool:
        raise RuntimeError("object_check bug")

    reregister(exclude=["cost_price"], object_check=broken)
    product = await database_sync_to_async(make_quietly)("OC-1")
    before = (hub.count(), open_connections())
    ws = await connect(await database_sync_to_async(viewer)())
    frame = {"type": "subscribe", "model": "testapp.product", "pk": product.pk, "ref": 3}
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            reply = await ask(ws, frame)
            assert (reply["type"], reply["code"], reply["ref"]) == ("error", "forbidden", 3)
        assert await ask(ws, {"type": "ping"}) == {"type": "pong"}
    # One traceback for the model, not one per frame.
    assert [r.exc_info is not None for r in caplog.records] == [True]
    await ws.disconnect()
    assert (hub.count(), open_connections()) == before
    assert sender_tasks() == []


@pytest.mark.parametrize("way_out", ["exception", "cancelled"])
@pytest.mark.slow
async def test_a_connection_ended_by_an_exception_or_cancellation_leaves_nothing_behind(
    running_listener: Any, monkeypatch: pytest.MonkeyPatch, way_out: str
) -> None:
    from broadcast_app.instance.hub import hub
    from broadcast_app.web import consumers

    before = (hub.count(), open_connections())
    ws = await connect(await database_sync_to_async(viewer)())
    for pk in (None, "5"):
        reply = await ask(ws, {"type": "subscribe", "model": "testapp.product", "pk": pk})
        assert reply["type"] == "subscribed"
    assert hub.count() == before[0] + 2
    senders = open_senders()
    assert senders >= 1
    if way_out == "exception":
        # A fault outside receive()'s own handling: channels ends the consumer without
        # calling disconnect().
        async def failing(self: Any, message: dict[str, Any]) -> None:
            raise RuntimeError("injected fault")

        monkeypatch.setattr(consumers.BroadcastConsumer, "websocket_receive", failing)
        await ws.send_json_to({"type": "ping"})
        with pytest.raises(RuntimeError, match="injected fault"):
            await ws.wait(TIMEOUT)
    else:
        ws.future.cancel()
        with pytest.raises(asyncio.CancelledError):
            await ws.future
    assert (hub.count(), open_connections()) == before
    assert sender_tasks() == []
    assert open_senders() == senders - 1  # this connection's sender was closed


async def test_a_subscribed_idle_connection_holds_no_task_and_no_state_of_its_own(
    running_listener: Any,
) -> None:
    """What every idle connection would hold times thousands (docs/scaling.md): no
    task beside the connection's own (channels' dispatch waits for the client in one of
    its own), the shared empty ``forbidden`` and ``resuming``, no permission cache."""
    from broadcast_app.instance.hub import hub
    from broadcast_app.web.access import revalidator
    from broadcast_app.web.consumers import BroadcastConsumer

    user = await database_sync_to_async(viewer)()
    attributes = set(vars(user))
    tasks_before = asyncio.all_tasks()
    clients = [await connect(user) for _ in range(5)]
    try:
        for ws in clients:
            reply = await ask(ws, {"type": "subscribe", "model": "testapp.product"})
            assert reply["type"] == "subscribed"
        # One task per connection: the communicator's, running the consumer (and the
        # instance's periodic check of users, started by the first subscription).
        started = asyncio.all_tasks() - tasks_before - {revalidator.task}
        assert len(started) == len(clients), started
        for consumer in hub._subs["testapp.product"][None]:
            assert isinstance(consumer, BroadcastConsumer)
            assert consumer.resuming is None
            assert consumer.forbidden is BroadcastConsumer.forbidden
            assert type(consumer.floors) is not dict and not consumer.floors
        # The permission check left nothing on the user the scope holds (Django's
        # backends cache every permission of a user on the object asked).
        assert set(vars(user)) == attributes
        # The connections still work as before.
        product = await database_sync_to_async(make)("IDLE-1")
        for ws in clients:
            event = await ws.receive_json_from(timeout=TIMEOUT)
            assert (event["type"], event["pk"]) == ("change", str(product.pk))
    finally:
        for ws in clients:
            await ws.disconnect()

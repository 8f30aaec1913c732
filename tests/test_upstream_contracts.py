"""What broadcast_app assumes of other libraries beyond their public APIs (see
broadcast_app/upstream/ and "Private APIs we use" in docs/architecture.md).

Two kinds of tests, for each fast path:

- a **contract** test pins the assumption on the installed versions, and fails with a
  message that names what changed upstream (the suite runs on every combination of the
  supported matrix, so each version is checked);
- a **fallback** test turns the fast path off (``BROADCAST_FAST_PATHS``) and runs the
  behaviour end to end against a real redis-server: the public path keeps it correct.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio
import redis
from channels.db import database_sync_to_async
from channels.layers import channel_layers
from channels.routing import URLRouter
from channels.sessions import SessionMiddlewareStack
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Permission, User
from django.core.cache import caches
from django.test import override_settings

from broadcast_app import upstream
from broadcast_app.capture.registry import get_config
from broadcast_app.conf import conf
from broadcast_app.dev.embedded_redis import EmbeddedRedis
from broadcast_app.events.change import Change
from broadcast_app.events.wire import id_key
from broadcast_app.instance import status
from broadcast_app.publish import publisher
from broadcast_app.publish.publisher import Publisher
from broadcast_app.routing import websocket_urlpatterns
from broadcast_app.stats import stats
from broadcast_app.transport import fast_path as direct
from broadcast_app.transport import outage_log_filter as quiet
from broadcast_app.transport.messages import events_of
from broadcast_app.transport.redis_clients import make_client
from broadcast_app.transport.routes import (
    BATCH_TYPE,
    MESSAGE_TYPE,
    group_name,
    layer_config,
    route,
)
from broadcast_app.transport.scripts import load, pack
from broadcast_app.upstream import asgi, channels_consumer
from broadcast_app.upstream import channels_redis as cr
from broadcast_app.upstream.django_cache import locmem_keys
from broadcast_app.upstream.redis_py import Pipelined, RawConnection, commands_for, resp
from broadcast_app.web.consumers import BroadcastConsumer
from broadcast_app.web.sender import Sender
from tests.conftest import Received, layers_for
from tests.testapp.models import Product

TIMEOUT = 5


def fast_paths_without(*names: str) -> Any:
    """Settings with every fast path but ``names``."""
    return override_settings(BROADCAST_FAST_PATHS=sorted(upstream.FAST_PATHS - set(names)))


@pytest.fixture
def public_paths(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fast paths ``request.param`` off (all of them for "all"), from before the
    listener starts (request this fixture before ``running_listener``)."""
    names = set(upstream.FAST_PATHS) if request.param == "all" else {request.param}
    with fast_paths_without(*names):
        yield


def make(sku: str, **fields: Any) -> Product:
    values: dict[str, Any] = {"name": sku, "price": Decimal("1.00"), "stock": 1}
    values.update(fields)
    return Product.objects.create(sku=sku, **values)


def viewer() -> User:
    user = User.objects.create_user("viewer", password="x")
    user.user_permissions.add(Permission.objects.get(codename="view_product"))
    return User.objects.get(pk=user.pk)


def count(name: str) -> int:
    return int(stats.snapshot().get(name, 0))


# -- the setting ------------------------------------------------------------------------


def test_the_setting_allows_all_none_or_named_fast_paths() -> None:
    assert all(upstream.enabled(name) for name in upstream.FAST_PATHS)
    with override_settings(BROADCAST_FAST_PATHS=False):
        assert not any(upstream.enabled(name) for name in upstream.FAST_PATHS)
    with override_settings(BROADCAST_FAST_PATHS=["direct_queue"]):
        assert [n for n in sorted(upstream.FAST_PATHS) if upstream.enabled(n)] == ["direct_queue"]
    with pytest.raises(ValueError, match="no fast path is called 'nope'"):
        upstream.enabled("nope")


# -- channels: InstanceSessionWrapper.real_send (session_send) -----------------------------


async def session_wrapped_send() -> tuple[Any, Any, list[dict[str, Any]]]:
    """The send channels' session middleware hands an application, the server's send
    beneath it, and what reached the server."""
    seen: dict[str, Any] = {}
    sent: list[dict[str, Any]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen["send"] = send
        await send({"type": "websocket.send", "text": "x"})

    async def server_send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        raise AssertionError("not read")

    scope = {"type": "websocket", "path": "/", "headers": []}
    await SessionMiddlewareStack(inner)(scope, receive, server_send)
    return seen["send"], server_send, sent


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_contract_channels_session_wrapper_keeps_the_servers_send_in_real_send() -> None:
    wrapped, server_send, sent = await session_wrapped_send()
    wrapper_class = asgi.session_wrapper_class()
    assert wrapper_class is not None, "channels.sessions.InstanceSessionWrapper is gone"
    assert isinstance(getattr(wrapped, "__self__", None), wrapper_class), (
        "channels' session middleware no longer hands the application "
        "InstanceSessionWrapper.send: server_send() cannot find the server's send"
    )
    assert asgi.server_send(wrapped) is server_send, (
        "InstanceSessionWrapper.real_send is no longer the server's send"
    )
    # What skipping the wrapper relies on: it passes websocket frames on untouched.
    assert sent == [{"type": "websocket.send", "text": "x"}], (
        "InstanceSessionWrapper.send changes websocket frames: skipping it is wrong"
    )


@pytest_asyncio.fixture
async def session_ws(running_listener: Any) -> AsyncIterator[WebsocketCommunicator]:
    ws = WebsocketCommunicator(
        SessionMiddlewareStack(URLRouter(websocket_urlpatterns)), "/ws/broadcast/"
    )
    ws.scope["user"] = await database_sync_to_async(viewer)()
    connected, _ = await ws.connect(timeout=TIMEOUT)
    assert connected
    yield ws
    await ws.disconnect()


async def subscribe_and_receive_a_save(ws: WebsocketCommunicator) -> dict[str, Any]:
    await ws.send_json_to({"type": "subscribe", "model": "testapp.product"})
    assert (await ws.receive_json_from(timeout=TIMEOUT))["type"] == "subscribed"
    await database_sync_to_async(make)("UP-1")
    frame: dict[str, Any] = await ws.receive_json_from(timeout=TIMEOUT)
    return frame


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("public_paths", ["session_send"], indirect=True)
async def test_fallback_frames_go_through_the_session_wrapper(
    public_paths: None, session_ws: WebsocketCommunicator
) -> None:
    wrapped, _server_send, _sent = await session_wrapped_send()
    assert asgi.server_send(wrapped) == wrapped  # the wrapper stays
    frame = await subscribe_and_receive_a_save(session_ws)
    assert (frame["type"], frame["op"], frame["data"]["sku"]) == ("change", "created", "UP-1")


# -- the ASGI server's send coroutine, stepped by hand (stepped_send) -----------------------


@pytest.mark.asyncio
async def test_contract_asyncio_coroutines_yield_the_future_they_wait_for() -> None:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    async def waits() -> None:
        await future

    coro = waits()
    assert coro.send(None) is future, (
        "an asyncio coroutine no longer yields the future it awaits: stepped sends "
        "(upstream/asgi.py _finish) cannot wait for it"
    )
    coro.close()
    yielding = asyncio.sleep(0)
    assert yielding.send(None) is None, "asyncio.sleep(0) no longer yields None"
    yielding.close()


class SlowServer:
    """A server ``send`` that writes at once, or waits while ``reading`` is clear."""

    def __init__(self) -> None:
        self.written: list[str] = []
        self.reading = asyncio.Event()
        self.reading.set()
        self.stalled = asyncio.Event()
        self.progress = asyncio.Event()

    async def send(self, message: dict[str, Any]) -> None:
        await self.reading.wait()
        self.written.append(message["text"])
        self.progress.set()

    async def on_stalled(self) -> None:
        self.stalled.set()

    async def until_written(self, n: int) -> None:
        async with asyncio.timeout(TIMEOUT):
            while len(self.written) < n:
                self.progress.clear()
                await self.progress.wait()


@pytest.mark.asyncio
@fast_paths_without("stepped_send")
async def test_fallback_sends_run_as_tasks_in_order_and_a_stall_is_detected() -> None:
    server = SlowServer()
    sender = Sender(server.send, 10, 0.2, server.on_stalled)
    for frame in "abc":
        assert sender.put(frame)
    await server.until_written(3)
    server.reading.clear()
    for frame in "de":
        assert sender.put(frame)
    server.reading.set()
    await server.until_written(5)
    assert server.written == list("abcde")
    server.reading.clear()
    sender.put("f")
    await asyncio.wait_for(server.stalled.wait(), TIMEOUT)
    assert not sender.open
    await sender.close()


@pytest.mark.asyncio
@fast_paths_without("stepped_send")
async def test_fallback_a_failing_send_closes_the_sender_without_raising() -> None:
    calls = 0

    async def send(message: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        raise OSError("reset by peer")

    sender = Sender(send, 3, TIMEOUT, server_never_stalls)
    sender.put("a")
    sender.put("b")
    async with asyncio.timeout(TIMEOUT):
        while sender.open:  # noqa: ASYNC110  (a plain flag: the Sender has no event for it)
            await asyncio.sleep(0)
    assert calls == 1 and not sender.queue
    await sender.close()


async def server_never_stalls() -> None:
    raise AssertionError("on_stalled must not be called")


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("public_paths", ["all"], indirect=True)
async def test_fallback_everything_public_a_save_reaches_a_websocket_client(
    public_paths: None, session_ws: WebsocketCommunicator
) -> None:
    """Every fast path off at once: save → Redis → listener → websocket, end to end."""
    assert route("testapp.product").channel == ""
    direct_before = count("received_direct")
    frame = await subscribe_and_receive_a_save(session_ws)
    assert (frame["op"], frame["data"]["sku"], frame["id"].count(":")) == ("created", "UP-1", 1)
    assert count("received_direct") == direct_before


# -- channels: AsyncConsumer.__call__, done in the consumer's own task (one_task) -------------


def test_contract_channels_async_consumer_call_uses_the_names_run_in_one_task_sets() -> None:
    from channels.consumer import AsyncConsumer

    names = set(AsyncConsumer.__call__.__code__.co_names)
    assert names == channels_consumer.KNOWN_NAMES, (
        "channels' AsyncConsumer.__call__ changed (names gone or new: "
        f"{sorted(names ^ channels_consumer.KNOWN_NAMES)}): "
        "upstream.channels_consumer.run_in_one_task must do what it does now"
    )
    assert channels_consumer.available(BroadcastConsumer), (
        "a class between BroadcastConsumer and AsyncConsumer overrides __call__ now"
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("public_paths", ["one_task"], indirect=True)
async def test_fallback_channels_own_call_runs_the_consumer(
    public_paths: None, session_ws: WebsocketCommunicator
) -> None:
    assert not channels_consumer.available(BroadcastConsumer)
    frame = await subscribe_and_receive_a_save(session_ws)
    assert (frame["type"], frame["op"], frame["data"]["sku"]) == ("change", "created", "UP-1")
    # channels' own __call__ ran it: a task of its own waits for the client's messages
    # beside the connection's (the fast path's test in test_consumers.py counts one).
    # (The communicator's receive() is its input queue's get().)
    awaiting_the_client = [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "") == "Queue.get"
    ]
    assert len(awaiting_the_client) == 1


# -- channels-redis: routing, group naming, serializer framing (script_publish) -------------


def test_contract_channels_redis_routes_names_and_reads_as_the_publish_script_writes() -> None:
    problem = cr._matches_layer(layer_config().get("CONFIG") or {})
    assert problem is None, f"channels-redis changed: {problem}"
    for fmt in ("json", "msgpack"):
        assert cr._matches_layer({"serializer_format": fmt}) is None, fmt
    # What the check refuses, the publisher then sends through group_send.
    assert "encryption" not in str(cr._matches_layer({"serializer_format": "json"}))
    assert cr._matches_layer({"symmetric_encryption_keys": ["k" * 32]}) is not None


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_contract_the_layer_subscribes_each_group_where_routes_say() -> None:
    """Behind the layer's public group_add: which Redis server, which channel name."""
    first, second = EmbeddedRedis(), EmbeddedRedis()
    with first, second:
        layers = layers_for(first.url)
        layers["default"]["CONFIG"]["hosts"] = [first.url, second.url]
        with override_settings(CHANNEL_LAYERS=layers):
            labels = ["testapp.product", "testapp.article", "a.b", "c.d", "e.f", "g.h"]
            routes = [route(label) for label in labels]
            layer = channel_layers.make_backend(conf.BROADCAST_CHANNEL_LAYER)
            channel = await layer.new_channel("contract.")
            for label in labels:
                await layer.group_add(group_name(label), channel)
            clients = {s.url: redis.Redis.from_url(s.url) for s in (first, second)}
            try:
                subscribed = {
                    url: {c.decode() for c in client.pubsub_channels()}
                    for url, client in clients.items()
                }
            finally:
                for client in clients.values():
                    client.close()
                await layer.flush()
        prefix = layers["default"]["CONFIG"].get("prefix", "asgi")
        assert {r.host["address"] for r in routes} == {first.url, second.url}
        for r in routes:
            channel = cr.group_channel(prefix, r.group)
            assert channel in subscribed[r.host["address"]], (
                f"channels-redis subscribes group {r.group} elsewhere than "
                f"{r.host['address']} as {channel}: its naming or sharding changed"
            )
            assert r.channel == channel  # the publish script publishes there


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("fmt", ["msgpack", "json"])
async def test_contract_the_layer_reads_what_the_publish_script_publishes(fmt: str) -> None:
    layers = layers_for(layer_config()["CONFIG"]["hosts"][0])
    layers["default"]["CONFIG"]["serializer_format"] = fmt
    with override_settings(CHANNEL_LAYERS=layers):
        assert route("testapp.product").channel  # the script publishes
        layer = channel_layers.make_backend(conf.BROADCAST_CHANNEL_LAYER)
        channel = await layer.new_channel("contract.")
        await layer.group_add(group_name("testapp.product"), channel)
        try:
            await database_sync_to_async(make)("UP-2")
            message = await asyncio.wait_for(layer.receive(channel), TIMEOUT)
        finally:
            await layer.flush()
    assert message["type"] == MESSAGE_TYPE, f"the layer read {message!r}"
    assert '"sku":"UP-2"' in message["frame"] and "prev" in message


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("fmt", ["msgpack", "json"])
async def test_contract_the_layer_reads_several_events_in_one_message(fmt: str) -> None:
    layers = layers_for(layer_config()["CONFIG"]["hosts"][0])
    layers["default"]["CONFIG"]["serializer_format"] = fmt
    with override_settings(CHANNEL_LAYERS=layers):
        r = route("testapp.product")
        layer = channel_layers.make_backend(conf.BROADCAST_CHANNEL_LAYER)
        channel = await layer.new_channel("contract.")
        await layer.group_add(group_name("testapp.product"), channel)
        client = make_client(r.host, TIMEOUT)
        try:
            packed = pack(
                [(r, '"n":1}', None), (r, '"n":2}', None)], load(client), 1000, 0, 60_000
            )
            client.execute_command(*packed.calls[0])
            message = await asyncio.wait_for(layer.receive(channel), TIMEOUT)
        finally:
            client.close()
            await layer.flush()
    assert message["type"] == BATCH_TYPE, f"the layer read {message!r}"
    frames = [frame for frame, _ in events_of(message)]
    assert [frame[-6:] for frame in frames] == ['"n":1}', '"n":2}']


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("public_paths", ["script_publish"], indirect=True)
async def test_fallback_events_and_resets_go_through_group_send(
    public_paths: None, running_listener: Any, received: Received, redis_client: redis.Redis
) -> None:
    r = route("testapp.product")
    assert r.channel == "" and r.group == group_name("testapp.product")
    for n in range(3):
        await database_sync_to_async(make)(f"UP-{n}")
    events = await received.wait_for(3)
    assert [e["data"]["sku"] for e in events] == ["UP-0", "UP-1", "UP-2"]
    assert [e["id"] for e in events] == sorted((e["id"] for e in events), key=id_key)
    # A reset (an outage dropped events) takes the same way.
    reset = asyncio.Event()

    class Watcher:
        def deliver(self, frame: str, event: dict[str, Any]) -> None:
            pass

        def reset(self, label: str, pk: str | None, reason: str) -> None:
            reset.set()

    from broadcast_app.instance.hub import hub

    watcher = Watcher()
    hub.add(watcher, "testapp.product", None)
    try:
        told = await asyncio.to_thread(
            publisher._publisher.send_resets, {"testapp.product"}, "test"
        )
        assert told == {"testapp.product"}
        await asyncio.wait_for(reset.wait(), TIMEOUT)
    finally:
        hub.remove(watcher, "testapp.product", None)
    assert redis_client.hget(r.meta, "epoch") is None  # the script still dropped it


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("public_paths", ["script_publish"], indirect=True)
async def test_fallback_racing_publishers_reach_listeners_complete_and_in_id_order(
    public_paths: None, running_listener: Any, received: Received
) -> None:
    """Without the atomic publish, two processes' events may arrive out of id order;
    the listener repairs the gap from the log and drops the late copy."""
    config = get_config(Product)
    per_publisher = 100

    def run(publisher_: Publisher, offset: int) -> None:
        for i in range(per_publisher):
            values = {"id": offset + i}
            change = Change(config, str(offset + i), "created", values, values, confirmed=True)
            publisher_.publish([change])
        assert publisher_.flush(TIMEOUT)
        publisher_.close()

    def race() -> None:
        threads = [threading.Thread(target=run, args=(Publisher(), n * 1000)) for n in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    # One event first, so the listener knows where the log stands: a listener that
    # started on an empty log cannot tell a first event from a late one (see "Private
    # APIs we use" in docs/architecture.md).
    await database_sync_to_async(make)("UP-0")
    assert (await received.next())["data"]["sku"] == "UP-0"
    await asyncio.to_thread(race)
    events = (await received.wait_for(1 + 2 * per_publisher, timeout=20))[1:]
    ids = [e["id"] for e in events]
    assert ids == sorted(ids, key=id_key) and len(set(ids)) == len(ids)
    pks = sorted(int(e["pk"]) for e in events)
    assert pks == [*range(1000, 1100), *range(2000, 2100)]


# -- channels-redis: the per-channel queues (direct_queue) ---------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_contract_the_layer_queues_raw_messages_per_channel() -> None:
    layer = channel_layers.make_backend(conf.BROADCAST_CHANNEL_LAYER)
    channel = await layer.new_channel("contract.")
    taken: list[Any] = []
    arrived = asyncio.Event()

    def take(item: Any) -> bool:
        taken.append(item)
        arrived.set()
        return True

    try:
        assert direct.install(layer, channel, take), (
            "channels-redis no longer keeps an empty asyncio.Queue per channel in "
            "layer.channels: the listener takes the ordinary way (receive())"
        )
        await layer.group_add("contract-group", channel)
        await layer.group_send("contract-group", {"type": "x.y", "n": 1})
        await asyncio.wait_for(arrived.wait(), TIMEOUT)
    finally:
        await layer.flush()
    assert layer.deserialize(taken[0]) == {"type": "x.y", "n": 1}, (
        "channels-redis' reader no longer put_nowait()s the raw message bytes"
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("public_paths", ["direct_queue"], indirect=True)
async def test_fallback_events_arrive_through_receive(
    public_paths: None, session_ws: WebsocketCommunicator
) -> None:
    layer = channel_layers.make_backend(conf.BROADCAST_CHANNEL_LAYER)
    channel = await layer.new_channel("contract.")
    try:
        assert not direct.install(layer, channel, lambda item: True)
    finally:
        await layer.flush()
    direct_before = count("received_direct")
    frame = await subscribe_and_receive_a_save(session_ws)
    assert (frame["op"], frame["data"]["sku"]) == ("created", "UP-1")
    assert count("received_direct") == direct_before


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_the_fast_path_takes_events_directly(session_ws: WebsocketCommunicator) -> None:
    """The counterpart of the test above: with the fast path, the same save is taken
    where channels-redis' reader hands it over."""
    direct_before = count("received_direct")
    await subscribe_and_receive_a_save(session_ws)
    assert count("received_direct") == direct_before + 1


# -- channels-redis: the logger of its outage tracebacks ---------------------------------


def test_contract_channels_redis_logs_outages_on_the_filtered_logger() -> None:
    from channels_redis import pubsub

    assert pubsub.logger.name == quiet.LOGGER, (
        f"channels-redis logs as {pubsub.logger.name!r}, not {quiet.LOGGER!r}: its "
        "outage tracebacks are no longer shortened"
    )
    assert cr.decode_hosts(["redis://h:1/0"]) == [{"address": "redis://h:1/0"}], (
        "channels_redis.utils.decode_hosts reads hosts differently"
    )


# -- redis-py: the low-level Connection API (raw_connection) ----------------------------------


@pytest.mark.django_db(transaction=True)
def test_contract_redis_py_connection_writes_and_reads_apart(redis_client: redis.Redis) -> None:
    commands = commands_for(redis_client)
    assert isinstance(commands, RawConnection), (
        "redis-py's ConnectionPool.get_connection() (no arguments) or Connection's "
        "send_packed_command/read_response changed: the publisher uses pipelines"
    )
    try:
        assert commands.call([("SET", "k", "é"), ("GET", "k")]) == [b"OK", "é".encode()]
    finally:
        commands.close()
    connection = redis_client.connection_pool.get_connection()
    try:
        batch: list[tuple[Any, ...]] = [("EVALSHA", b"a" * 40, 1, "k", 10, "é" * 900), ("PING",)]
        assert resp(batch) == b"".join(connection.pack_commands(batch)), (
            "redis-py packs commands differently from upstream/redis_py.resp()"
        )
    finally:
        redis_client.connection_pool.release(connection)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("public_paths", ["raw_connection"], indirect=True)
async def test_fallback_pipelines_publish_and_survive_a_flushed_script(
    public_paths: None, running_listener: Any, received: Received, redis_client: redis.Redis
) -> None:
    assert isinstance(commands_for(redis_client), Pipelined)
    await database_sync_to_async(make)("UP-1")
    redis_client.script_flush()  # as a restarted Redis would: NOSCRIPT, then a new client
    await database_sync_to_async(make)("UP-2")
    await database_sync_to_async(make)("UP-3")
    events = await received.wait_for(3)
    assert [e["data"]["sku"] for e in events] == ["UP-1", "UP-2", "UP-3"]


# -- Django: LocMemCache internals (locmem_count) -----------------------------------------


def test_contract_locmem_cache_keeps_its_entries_in_cache_under_lock() -> None:
    backend = caches[conf.BROADCAST_CACHE_ALIAS]
    backend.set(f"{conf.BROADCAST_GROUP_PREFIX}:obj:contract:0:1", {"id": None}, 60)
    keys = locmem_keys(backend)
    assert keys is not None, "LocMemCache no longer has _lock and _cache"
    assert backend.make_key(f"{conf.BROADCAST_GROUP_PREFIX}:obj:contract:0:1") in keys, (
        "LocMemCache no longer keys _cache by make_key()"
    )
    assert (status.cache_entries() or 0) >= 1


@fast_paths_without("locmem_count")
def test_fallback_the_cache_count_is_unknown() -> None:
    assert status.cache_entries() is None

"""Publisher → Redis → listener → cache / signal, against real redis-server processes."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest
import redis
from channels.db import database_sync_to_async
from django.db import connection
from django.test import override_settings

from broadcast_app import cache
from broadcast_app.dev.embedded_redis import EmbeddedRedis, free_port
from broadcast_app.events.wire import id_key
from broadcast_app.instance.hub import hub
from broadcast_app.instance.listener import listener
from broadcast_app.instance.runtime import runtime
from broadcast_app.publish import publisher
from broadcast_app.publish.publisher import Publisher
from broadcast_app.stats import stats
from broadcast_app.transport.routes import Route, route
from broadcast_app.upstream.redis_py import resp
from tests.conftest import Received, layers_for
from tests.logged import logged_events
from tests.testapp.models import Article, Attachment, Product

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 5


def make(sku: str = "P-1", **fields: Any) -> Product:
    values: dict[str, Any] = {"name": sku, "price": Decimal("2.00"), "stock": 1}
    values.update(fields)
    return Product.objects.create(sku=sku, cost_price=Decimal("0.99"), **values)


@contextmanager
def two_hosts() -> Iterator[tuple[EmbeddedRedis, EmbeddedRedis, Route, Route]]:
    """Two Redis servers as channels-redis shards: the products' log and group on the
    first, the articles' on the second."""
    with EmbeddedRedis() as first, EmbeddedRedis() as second:
        layers = layers_for(first.url)
        layers["default"]["CONFIG"]["hosts"] = [first.url, second.url]
        with override_settings(CHANNEL_LAYERS=layers):
            products, articles = route("testapp.product"), route("testapp.article")
            assert (products.host["address"], articles.host["address"]) == (first.url, second.url)
            yield first, second, products, articles


@pytest.mark.django_db(transaction=False)
def test_resp_packs_commands_as_redis_py_does(redis_client: redis.Redis) -> None:
    commands: list[tuple[Any, ...]] = [
        ("EVALSHA", b"a" * 40, 2, "broadcast:log:testapp.product", "k2", 10_000, "é" * 9000),
        ("PING",),
        ("SET", "", -1),
    ]
    connection = redis_client.connection_pool.get_connection()
    try:
        expected = b"".join(connection.pack_commands(commands))
        assert resp(commands) == expected
        connection.send_packed_command([resp([("SET", "k", "é"), ("GET", "k")])])
        assert [connection.read_response() for _ in range(2)] == [b"OK", "é".encode()]
    finally:
        redis_client.connection_pool.release(connection)
    with pytest.raises(TypeError):
        resp([("SET", "k", 1.5)])


def test_ids_increase_in_publish_order_across_publishers(redis_client: redis.Redis) -> None:
    """Two publishers (as two processes would) racing on one model: order is Redis's."""
    r = route("testapp.product")
    pubsub = redis_client.pubsub()
    pubsub.subscribe(r.channel)
    assert pubsub.get_message(timeout=TIMEOUT)["type"] == "subscribe"
    from broadcast_app.capture.registry import get_config
    from broadcast_app.events.change import Change

    config = get_config(Product)
    per_publisher = 200
    lost_resets = _count("lost_resets")

    def run(publisher_: Publisher, offset: int) -> None:
        for i in range(per_publisher):
            pk = str(offset + i)
            values = {"id": offset + i}
            publisher_.publish([Change(config, pk, "created", values, values, confirmed=True)])
        assert publisher_.flush(TIMEOUT)

    threads = [threading.Thread(target=run, args=(Publisher(), n * 1000)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    import msgpack

    from broadcast_app.transport.messages import events_of, is_event_message

    ids = []
    while len(ids) < 2 * per_publisher:
        message = pubsub.get_message(timeout=TIMEOUT)
        assert message is not None, f"only {len(ids)} events arrived"
        payload = msgpack.unpackb(message["data"])
        assert is_event_message(payload)  # one event, or several of a script call
        ids += [frame.split('"id":"')[1].split('"')[0] for frame, _ in events_of(payload)]
    pubsub.close()
    assert ids == sorted(ids, key=id_key)
    assert len(set(ids)) == len(ids)
    epochs = {i.split(":")[1] for i in ids}
    assert len(epochs) == 1
    # Each saw the other's events come between its own: not mistaken for lost ones.
    assert _count("lost_resets") == lost_resets
    logged = [event_id for event_id, _, _ in logged_events(redis_client, r)]
    assert ids == [i for i in logged if i in set(ids)]


@pytest.mark.asyncio
async def test_events_update_the_cache_in_place_and_send_the_signal(
    running_listener: Any, received: Received
) -> None:
    product = await database_sync_to_async(make)()
    created = await received.next()
    assert created["op"] == "created"
    lookup = await database_sync_to_async(cache.fetch)(Product, product.pk)
    assert lookup.hit
    assert lookup.data == created["data"]
    assert "cost_price" not in lookup.data

    def update() -> None:
        product.price = Decimal("7.10")
        product.cost_price = Decimal("5.55")
        product.save()

    await database_sync_to_async(update)()
    event = await received.next()
    assert event["changed"] == ["price"]
    lookup = await database_sync_to_async(cache.fetch)("testapp.product", str(product.pk))
    assert lookup.hit and lookup.data is not None
    assert lookup.data["price"] == "7.10"
    assert "5.55" not in lookup.data.values()  # the cost price, under any key

    await database_sync_to_async(product.delete)()
    assert (await received.next())["op"] == "deleted"
    assert await database_sync_to_async(cache.fetch)(Product, event["pk"]) == cache.Lookup(
        None, True
    )


@pytest.mark.asyncio
async def test_the_publisher_thread_compares_autocommit_saves_as_they_were_saved(
    running_listener: Any, received: Received
) -> None:
    """The values are copied in save(); comparing, dropping no-op saves and encoding
    happen in the publisher thread, after the caller may have changed the instance."""
    product = await database_sync_to_async(make)()
    assert (await received.next())["op"] == "created"
    attachment = await database_sync_to_async(Attachment.objects.create)(
        article=await database_sync_to_async(Article.objects.create)(title="t"), meta={"n": 1}
    )
    await received.wait_for(3)  # the article and the attachment

    def saves() -> None:
        product.save()  # nothing changed
        product.cost_price = Decimal("0.10")
        product.save()  # only an excluded field changed
        product.price = Decimal("3.00")
        product.save()
        product.price = Decimal("4.00")  # after the save: not in its event
        attachment.meta["n"] = 2
        attachment.save()
        attachment.meta["n"] = 3  # changed in place after the save: not in its event

    await database_sync_to_async(saves)()
    price, meta = await received.next(), await received.next()
    assert (price["changed"], price["data"]["price"]) == (["price"], "3.00")
    assert (meta["changed"], meta["data"]["meta"]) == (["meta"], {"n": 2})
    # Nothing came between: the next event is the next change.
    await database_sync_to_async(product.save)()
    following = await received.next()
    assert (following["pk"], following["data"]["price"]) == (str(product.pk), "4.00")


def test_cache_miss_loads_from_database_and_never_overwrites(db: None) -> None:
    with override_settings(BROADCAST_ENABLED=False):
        product = make(sku="C-1", price=Decimal("3.5"))
    first = cache.fetch(Product, product.pk)
    assert (first.hit, first.data and first.data["price"]) == (False, "3.50")
    assert "cost_price" not in (first.data or {})
    assert cache.fetch(Product, product.pk).hit
    # An event's newer data wins over what a racing miss loaded.
    cache.apply_event({"model": "testapp.product", "pk": str(product.pk), "op": "updated",
                       "id": "9-0", "data": {"price": "4.00"}})  # fmt: skip
    assert cache.get(Product, product.pk) == {"price": "4.00"}
    cache.delete(Product, product.pk)
    assert cache.fetch(Product, product.pk).hit is False
    assert cache.get(Product, 10_000_000) is None


def test_cache_completes_an_event_with_unknown_fields_or_reads_the_row(db: None) -> None:
    with override_settings(BROADCAST_ENABLED=False):
        product = make(sku="C-2", price=Decimal("3.5"))
    pk = str(product.pk)
    loaded = cache.fetch(Product, product.pk).data
    assert loaded is not None and loaded["sku"] == "C-2"
    # A save of an instance that had only ``stock`` loaded: the entry keeps the rest.
    cache.apply_event({"model": "testapp.product", "pk": pk, "op": "updated", "id": "9-0",
                       "data": {"id": product.pk, "stock": 7}, "unknown": ["sku"]})  # fmt: skip
    merged = cache.fetch(Product, product.pk)
    assert merged.hit and merged.data == {**loaded, "stock": 7}
    # No entry to complete: the row is read from the database, and nothing is stored,
    # not even by a miss that loaded the row before the event (it only adds).
    cache.delete(Product, product.pk)
    cache.apply_event({"model": "testapp.product", "pk": pk, "op": "updated", "id": "9-1",
                       "data": {"id": product.pk, "stock": 8}, "unknown": ["sku"]})  # fmt: skip
    with override_settings(BROADCAST_ENABLED=False):
        Product.objects.filter(pk=product.pk).update(stock=8)
    for _ in range(2):
        read = cache.fetch(Product, product.pk)
        assert (read.hit, read.data and read.data["stock"]) == (False, 8)


def _count(name: str) -> int:
    return stats.get(name)


@pytest.mark.slow
def test_save_neither_fails_nor_waits_when_redis_is_down(
    db: None, redis_client: redis.Redis
) -> None:
    closed = free_port()
    errors = _count("publish_errors")
    with override_settings(CHANNEL_LAYERS=layers_for(f"redis://127.0.0.1:{closed}/0")):
        product = make(sku="DOWN-1")
        assert Product.objects.filter(pk=product.pk).exists()
        # Not lost: held by the publisher, retried until Redis answers.
        assert not publisher.flush(0.5)
    assert _count("publish_errors") >= errors + 1
    assert publisher.flush(TIMEOUT)  # "Redis is back": the test server answers
    bodies = [body for _, _, body in logged_events(redis_client, route("testapp.product"))]
    assert any('"sku":"DOWN-1"' in body for body in bodies)


@pytest.mark.asyncio
@pytest.mark.slow
async def test_outage_overflow_becomes_a_reset_never_silence(running_listener: Any) -> None:
    class Subscriber:
        resets: list[str] = []
        got_reset = asyncio.Event()

        def deliver(self, frame: str, event: dict[str, Any]) -> None:
            pass

        def reset(self, label: str, pk: str | None, reason: str) -> None:
            self.resets.append(reason)
            self.got_reset.set()

    subscriber = Subscriber()
    hub.add(subscriber, "testapp.product", None)
    dropped = _count("dropped")
    closed = free_port()
    try:
        with override_settings(
            CHANNEL_LAYERS=layers_for(f"redis://127.0.0.1:{closed}/0"), BROADCAST_OUTAGE_BUFFER=3
        ):
            for i in range(8):
                await database_sync_to_async(make)(sku=f"OVER-{i}")
            assert not await database_sync_to_async(publisher.flush)(0.3)
        assert await database_sync_to_async(publisher.flush)(TIMEOUT)
        await asyncio.wait_for(subscriber.got_reset.wait(), TIMEOUT)
        assert subscriber.resets == ["lost"]
        assert _count("dropped") == dropped + 5
    finally:
        hub.remove(subscriber, "testapp.product", None)


@contextmanager
def silent_redis(**settings: Any) -> Iterator[None]:
    """The layer points at a server that accepts connections and never answers."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    try:
        with override_settings(
            CHANNEL_LAYERS=layers_for(f"redis://127.0.0.1:{port}/0"), **settings
        ):
            yield
    finally:
        silent.close()


@pytest.mark.slow
def test_save_does_not_wait_for_a_redis_that_never_answers(db: None) -> None:
    """A server that accepts connections but never replies: the publisher gives up."""
    errors = _count("publish_errors")
    with silent_redis(BROADCAST_REDIS_TIMEOUT=0.2):
        saved = threading.Event()

        def save() -> None:
            try:
                make(sku="SLOW-1")
                saved.set()
            finally:
                connection.close()  # this thread's own connection

        # The save itself runs while the publisher is stuck waiting on the socket.
        make(sku="SLOW-0")
        worker = threading.Thread(target=save)
        worker.start()
        assert saved.wait(TIMEOUT)
        worker.join()
        assert not publisher.flush(0.5)  # still waiting for an answer
    assert _count("publish_errors") >= errors + 1
    assert publisher.flush(TIMEOUT)


def test_a_full_publish_queue_drops_and_counts_instead_of_waiting(db: None) -> None:
    """While the publisher thread waits on a Redis that never answers, saves go on: past
    BROADCAST_QUEUE_SIZE waiting events, a save drops its event (counted) at once."""
    dropped = _count("dropped")
    with silent_redis(BROADCAST_REDIS_TIMEOUT=1.0, BROADCAST_QUEUE_SIZE=3):
        make(sku="FULL-0")  # the thread takes it and waits for an answer
        slowest = 0.0
        for number in range(1, 11):
            began = time.monotonic()
            make(sku=f"FULL-{number}")
            slowest = max(slowest, time.monotonic() - began)
        assert _count("dropped") - dropped >= 5, "the queue did not hold its bound"
        assert slowest < 0.5, f"a save waited {slowest:.2f}s for room"
    assert publisher.flush(TIMEOUT)


@pytest.mark.asyncio
@pytest.mark.slow
async def test_listener_survives_a_redis_restart(received: Received) -> None:
    server = EmbeddedRedis().start()
    try:
        with override_settings(CHANNEL_LAYERS=layers_for(server.url)):
            await runtime.start()
            await database_sync_to_async(make)(sku="R-0")
            assert (await received.next())["data"]["sku"] == "R-0"
            server.kill()
            await database_sync_to_async(make)(sku="R-lost")  # published nowhere: counted
            server.start()
            # Until the layer has resubscribed, events are lost (at-most-once pub/sub);
            # keep saving until one arrives, within a bounded number of attempts.
            for attempt in range(40):
                await database_sync_to_async(make)(sku=f"R-{attempt + 1}")
                try:
                    event = await received.next(timeout=0.5)
                except TimeoutError:
                    continue
                assert event["data"]["sku"].startswith("R-")
                break
            else:
                pytest.fail("no event arrived after Redis came back")
            await runtime.stop()
    finally:
        await runtime.stop()
        server.stop()


@pytest.mark.asyncio
async def test_json_serializer_format_and_several_hosts(received: Received) -> None:
    """channels-redis sharding: each model's group lives on one host; all arrive."""
    with EmbeddedRedis() as first, EmbeddedRedis() as second:
        layers = layers_for(first.url)
        layers["default"]["CONFIG"] = {
            "hosts": [first.url, second.url],
            "serializer_format": "json",
        }
        with override_settings(CHANNEL_LAYERS=layers):
            await runtime.start()
            try:
                await database_sync_to_async(make)(sku="J-1")
                assert (await received.next())["data"]["sku"] == "J-1"
            finally:
                await runtime.stop()


@pytest.mark.asyncio
@override_settings(BROADCAST_RECOVERY_INTERVAL=0.2)
@pytest.mark.slow
async def test_each_host_carries_its_models_and_one_down_leaves_the_others_alone(
    received: Received,
) -> None:
    """Two hosts: each model's log and group live on one of them. While one is down the
    other's models keep flowing, from the same publishing process too (an event held for
    the down host holds back only that host's); restarted empty, only its models are
    reset."""

    class Subscriber:
        resets: list[str] = []

        def deliver(self, frame: str, event: dict[str, Any]) -> None:
            pass

        def reset(self, label: str, pk: str | None, reason: str) -> None:
            self.resets.append(label)

    subscriber = Subscriber()
    with two_hosts() as (first, second, products, articles):
        listener.continuity.last.clear()  # nothing remembered of the session's Redis
        await runtime.start()
        for label in ("testapp.product", "testapp.article"):
            hub.add(subscriber, label, None)
        try:
            await database_sync_to_async(make)(sku="H-1")
            article = await database_sync_to_async(Article.objects.create)(title="A-1")
            arrived = {(await received.next())["model"] for _ in range(2)}
            assert arrived == {"testapp.product", "testapp.article"}
            with (
                redis.Redis.from_url(first.url) as one,
                redis.Redis.from_url(second.url) as two,
            ):
                assert [one.exists(products.stream), one.exists(articles.stream)] == [1, 0]
                assert [two.exists(products.stream), two.exists(articles.stream)] == [0, 1]

            second.kill()
            await database_sync_to_async(make)(sku="H-2")
            assert (await received.next())["data"]["sku"] == "H-2"
            article.title = "A-2"
            await database_sync_to_async(article.save)()  # held: its host is down
            # Held for the down host only: the other host's models go on.
            await database_sync_to_async(make)(sku="H-2b")
            assert (await received.next())["data"]["sku"] == "H-2b"
            second.start()  # empty: the article log starts a new epoch
            await database_sync_to_async(make)(sku="H-3")
            while (await received.next())["data"].get("sku") != "H-3":
                pass  # A-2, if the listener had resubscribed when it went out
            for _ in range(int(TIMEOUT / 0.05)):
                if subscriber.resets:
                    break
                await asyncio.sleep(0.05)
            assert subscriber.resets == ["testapp.article"]
        finally:
            for label in ("testapp.product", "testapp.article"):
                hub.remove(subscriber, label, None)
            await runtime.stop()


@pytest.mark.asyncio
@pytest.mark.slow
async def test_listener_still_receives_after_being_idle(
    running_listener: Any, received: Received
) -> None:
    """redis-py 8 defaults once made idle layer reads time out after 5 s; stay idle longer."""
    idle_for = 6.5  # the duration under test, not a synchronization
    await asyncio.sleep(idle_for)
    assert running_listener.running
    await database_sync_to_async(make)(sku="IDLE-1")
    assert (await received.next())["data"]["sku"] == "IDLE-1"


@pytest.mark.django_db(transaction=True)
def test_the_log_is_trimmed_by_age_at_most_once_a_second(redis_client: redis.Redis) -> None:
    r = route("testapp.product")
    redis_client.delete(r.stream, r.meta)
    # One entry per stream node: "~" trimming only drops whole nodes.
    node_size = redis_client.config_get("stream-node-max-entries")["stream-node-max-entries"]
    redis_client.config_set("stream-node-max-entries", 1)
    try:
        for ms in (1000, 1001, 1002):  # entries from 1970: far older than any max age
            redis_client.xadd(r.stream, {"b": "{}", "p": ""}, id=f"{ms}-1")
        with override_settings(BROADCAST_LOG_MAX_AGE=0):  # no age limit
            product = make("AGE-1")
            assert publisher.flush(TIMEOUT)
        assert len(redis_client.xrange(r.stream, max="1002-1")) == 3
        assert redis_client.hget(r.meta, "trimmed") is None

        with override_settings(BROADCAST_LOG_MAX_AGE=3600):
            product.stock = 2
            product.save()
            assert publisher.flush(TIMEOUT)
            assert redis_client.xrange(r.stream, max="1002-1") == []  # trimmed
            entries = redis_client.xrange(r.stream)
            assert len(entries) == 2  # the created and the updated event
            trimmed = redis_client.hget(r.meta, "trimmed")
            assert trimmed is not None
            last_ms = int(entries[-1][0].decode().split("-")[0])
            assert int(trimmed) == last_ms  # the new entry's time: Redis's clock

            # Within the same second, the next events do not trim again.
            for stock in (3, 4):
                product.stock = stock
                product.save()
            assert publisher.flush(TIMEOUT)
            # (The two may share one entry: the events are what count.)
            events = logged_events(redis_client, r)
            assert len(events) == 4
            later = redis_client.hget(r.meta, "trimmed")
            if int(events[-1][0].split("-")[0]) - last_ms < 1000:
                assert later == trimmed
            else:  # a second passed on a slow machine: then it trimmed again
                assert later is not None and int(later) > int(trimmed)
    finally:
        redis_client.config_set("stream-node-max-entries", node_size)


def test_an_event_queued_while_the_thread_waits_for_replies_goes_out_at_once(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an idle write the thread waits before reading replies (_REPLY_DELAY); an
    event (or a flush) queued meanwhile ends the wait instead of waiting it out."""
    from broadcast_app.capture.registry import get_config
    from broadcast_app.events.change import Change

    monkeypatch.setattr(publisher, "_REPLY_DELAY", 30.0)  # far beyond any timeout here
    config = get_config(Product)
    r = route("testapp.product")
    pubsub = redis_client.pubsub()
    pubsub.subscribe(r.channel)
    assert pubsub.get_message(timeout=TIMEOUT)["type"] == "subscribe"
    own = Publisher()
    try:
        for pk in ("901", "902"):
            values = {"id": int(pk)}
            own.publish([Change(config, pk, "created", values, values, confirmed=True)])
            # The first arrives while the thread waits after writing it; the second
            # was written once the wait ended: each is in Redis long before 30 s.
            message = pubsub.get_message(timeout=TIMEOUT)
            assert message is not None, f"event {pk} waited for the reply delay"
            assert f'"pk":"{pk}"' in message["data"].decode(errors="replace")
        assert own.flush(TIMEOUT)  # the marker, too, ends the wait
    finally:
        monkeypatch.setattr(publisher, "_REPLY_DELAY", 0.0)
        assert own.flush(TIMEOUT)
        own.close()
        pubsub.close()


def test_only_the_last_host_written_waits_before_reading_replies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With two hosts, the first host's write must not hold back the second's events for
    the reply wait: only the last write of a round pauses."""
    from broadcast_app.capture.registry import get_config
    from broadcast_app.events.change import Change

    monkeypatch.setattr(publisher, "_REPLY_DELAY", 30.0)  # far beyond any timeout here
    with two_hosts() as (first, second, products, articles):
        clients = [redis.Redis.from_url(url) for url in (first.url, second.url)]
        subscriptions = []
        for client, r in zip(clients, (products, articles), strict=True):
            pubsub = client.pubsub()
            pubsub.subscribe(r.channel)
            assert pubsub.get_message(timeout=TIMEOUT)["type"] == "subscribe"
            subscriptions.append(pubsub)
        own = Publisher()
        try:
            one = {"id": 1}
            own.publish(
                [
                    Change(get_config(Product), "1", "created", one, one, confirmed=True),
                    Change(get_config(Article), "1", "created", one, one, confirmed=True),
                ]
            )
            labels = ("testapp.product", "testapp.article")
            for pubsub, label in zip(subscriptions, labels, strict=True):
                message = pubsub.get_message(timeout=TIMEOUT)
                assert message is not None, f"the {label} event waited for the reply delay"
                assert f'"model":"{label}"' in message["data"].decode(errors="replace")
        finally:
            monkeypatch.setattr(publisher, "_REPLY_DELAY", 0.0)
            assert own.flush(TIMEOUT)
            own.close()
            for pubsub in subscriptions:
                pubsub.close()
            for client in clients:
                client.close()

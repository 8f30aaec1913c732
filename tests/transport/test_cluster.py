"""Redis Cluster as a transport, against a real cluster of three masters and three
replicas (tests/cluster_support.py): names in one slot per model, publishing with the
sharded scripts, logs read back, settings checked."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import redis
from django.test import override_settings
from redis.cluster import key_slot

from broadcast_app import checks
from broadcast_app.events.wire import frame_id
from broadcast_app.instance import presence
from broadcast_app.transport import cluster
from broadcast_app.transport.log_reader import EventLog
from broadcast_app.transport.messages import events_of
from broadcast_app.transport.redis_clients import make_async_client
from broadcast_app.transport.redis_transport import RedisTransport
from broadcast_app.transport.routes import once_key, route
from tests.cluster_support import ClusterSetup
from tests.logged import logged_events

pytestmark = pytest.mark.cluster

LABELS = ("testapp.product", "testapp.article")


@pytest.fixture(scope="module")
def cluster_setup() -> Iterator[ClusterSetup]:
    """Three masters and three replicas, from the same redis-server binary."""
    setup = ClusterSetup().start()
    yield setup
    setup.stop()


@pytest.fixture
def on_cluster(cluster_setup: ClusterSetup) -> Iterator[ClusterSetup]:
    """The settings pointed at the cluster, its logs emptied."""
    with override_settings(BROADCAST_REDIS_CLUSTER=cluster_setup.addresses):
        with cluster_setup.client() as client:
            for label in LABELS:
                client.delete(route(label).stream, route(label).meta)
        yield cluster_setup


def body(n: int) -> str:
    return f'"model":"x","n":{n}}}'


def sharded_messages(pubsub: Any, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for _ in range(200):
        if len(found) == count:
            return found
        message = pubsub.get_sharded_message(timeout=0.05)
        if message is not None and message["type"] == "smessage":
            found.append(
                {"channel": message["channel"].decode(), **msgpack.unpackb(message["data"])}
            )
    raise AssertionError(f"only {len(found)} of {count} messages arrived: {found}")


@pytest.mark.slow
def test_a_models_names_share_its_slot_and_differ_between_models(on_cluster: ClusterSetup) -> None:
    for label in LABELS:
        r = route(label)
        assert {key_slot(name.encode()) for name in (r.stream, r.meta, r.channel)} == {
            key_slot(label.encode())
        }
        assert r.host == {cluster.CLUSTER: [("127.0.0.1", n.port) for n in on_cluster.nodes]}
    assert route(LABELS[0]).stream != route(LABELS[1]).stream
    # Outside the cluster, nothing changes.
    with override_settings(BROADCAST_REDIS_CLUSTER=None):
        assert "{" not in route(LABELS[0]).stream


@pytest.mark.slow
def test_a_batch_is_logged_and_spublished_in_each_models_slot(on_cluster: ClusterSetup) -> None:
    products, articles = route(LABELS[0]), route(LABELS[1])
    with on_cluster.client() as client:
        pubsub = client.pubsub()
        pubsub.ssubscribe(products.channel, articles.channel)
        transport = RedisTransport()
        try:
            batch = [(LABELS[0], body(0)), (LABELS[1], body(1)), (LABELS[0], body(2))]
            assert transport.publish_batch(batch) == (3, 0)
            # The products' two events in one message, the article's alone.
            got = sharded_messages(pubsub, 2)
        finally:
            transport.close()
            pubsub.close()
        # One log entry per model's call: the products' two events, the article's one.
        assert [len(logged_events(client, r)) for r in (products, articles)] == [2, 1]
        assert client.xlen(products.stream) == 1 and client.xlen(articles.stream) == 1
        last = client.hget(products.meta, "last").decode()
    (mine,) = [m for m in got if m["channel"] == products.channel]
    assert mine["type"] == "broadcast.events"
    (first, first_prev), (second, second_prev) = events_of(mine)
    assert first_prev == "" and second_prev == frame_id(first) != ""
    assert second == '{"type":"change","id":"' + last + '",' + body(2)
    assert [m["frame"].endswith(body(1)) for m in got if m["channel"] == articles.channel] == [
        True
    ]

    async def read() -> tuple[Any, Any]:
        log = EventLog()
        try:
            return await log.read_from_start(LABELS[0]), await log.last_id(LABELS[0])
        finally:
            await log.close()

    replay, last_id = asyncio.run(read())
    assert replay.complete and [frame for _, frame in replay.frames] == [first, second]
    assert last_id == last


@pytest.mark.slow
def test_a_reset_is_spublished_and_drops_the_epoch(on_cluster: ClusterSetup) -> None:
    r = route(LABELS[0])
    transport = RedisTransport()
    with on_cluster.client() as client:
        pubsub = client.pubsub()
        pubsub.ssubscribe(r.channel)
        try:
            assert transport.publish_batch([(LABELS[0], body(0))]) == (1, 0)
            assert client.hget(r.meta, "epoch")
            assert transport.send_resets({LABELS[0]}, "were lost in a test") == {LABELS[0]}
            got = sharded_messages(pubsub, 2)
        finally:
            transport.close()
            pubsub.close()
        assert client.hget(r.meta, "epoch") is None
    assert got[1]["type"] == "broadcast.reset" and got[1]["model"] == LABELS[0]


@pytest.mark.slow
def test_presence_keeps_each_objects_keys_in_one_slot_and_notifies(
    on_cluster: ClusterSetup,
) -> None:
    assert key_slot(presence.deadlines_key(LABELS[0], "7").encode()) == key_slot(
        presence.data_key(LABELS[0], "7").encode()
    )

    async def run() -> tuple[Any, list[Any], Any]:
        [host] = presence.all_hosts()
        listening = make_async_client(host, 1.0, decode_responses=True, socket_timeout=None)
        await listening.initialize()  # type: ignore[attr-defined]
        pubsub = listening.pubsub()
        try:
            await pubsub.subscribe(presence.channel())
            since = await presence.join(LABELS[0], "7", "t/1|u1", "u1", '{"a":1}', 0)
            members = await presence.read(LABELS[0], "7")
            note = None
            for _ in range(100):
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
                if message is not None:
                    note = presence.parse_note(message["data"])
                    break
            await presence.leave(LABELS[0], "7", ["t/1|u1"])
            return since, members, note
        finally:
            await pubsub.aclose()
            await listening.aclose()
            await presence.close_clients()

    since, members, note = asyncio.run(run())
    assert since is not None and len(members) == 1
    assert note == (LABELS[0], "7")


@pytest.mark.slow
def test_outbox_events_are_published_once_with_their_records_in_the_models_slot(
    on_cluster: ClusterSetup,
) -> None:
    products, articles = route(LABELS[0]), route(LABELS[1])
    token_key = once_key("tx-1")
    batch = [(LABELS[0], body(0)), (LABELS[1], body(1))]
    once = [(token_key, f"{LABELS[0]}:1"), (token_key, f"{LABELS[1]}:2")]
    transport = RedisTransport()
    try:
        assert transport.publish_batch(batch, once) == (2, 0)
        # Relayed again (a relay died before deleting its rows): skipped, not twice.
        assert transport.publish_batch(batch, once) == (2, 2)
        with on_cluster.client() as client:
            assert client.xlen(products.stream) == 1 and client.xlen(articles.stream) == 1
            records = [f"{token_key}:{{{label}}}" for label in LABELS]
            assert [key_slot(k.encode()) for k in records] == [
                key_slot(products.stream.encode()),
                key_slot(articles.stream.encode()),
            ]
            assert client.exists(*records) == 2
            transport.forget([(label, token_key) for label in LABELS])
            assert client.exists(*records) == 0
    finally:
        transport.close()


@pytest.mark.slow
def test_publishing_follows_a_failover(cluster_setup: ClusterSetup) -> None:
    """Runs last in this module: it kills a master (its replica takes over)."""
    with override_settings(BROADCAST_REDIS_CLUSTER=cluster_setup.addresses):
        r = route(LABELS[0])
        transport = RedisTransport()
        try:
            assert transport.publish_batch([(LABELS[0], body(0))]) == (1, 0)
            cluster_setup.kill_master_of(r.stream)
            # The first batch finds the old master gone (and is kept by the caller); a
            # retry makes a new client, which reads the slot map and loads the scripts.
            results = [transport.publish_batch([(LABELS[0], body(1))]) for _ in range(2)]
            assert (1, 0) in results
        finally:
            transport.close()
        survivor = next(n for n in cluster_setup.nodes if n.process is not None)
        with redis.RedisCluster(host="127.0.0.1", port=survivor.port) as client:
            assert logged_events(client, r)[-1][2] == body(1)


@pytest.mark.parametrize(
    "value",
    ["127.0.0.1:7000", [], ["127.0.0.1"], ["127.0.0.1:x"], [("127.0.0.1", 7000)], 7000],
)
def test_malformed_cluster_nodes_are_e014(value: Any) -> None:
    with override_settings(BROADCAST_REDIS_CLUSTER=value):
        messages = checks.check_cluster(None)
    assert [m.id for m in messages] == ["broadcast_app.E014"]
    assert messages[0].hint


def test_well_formed_cluster_nodes_pass() -> None:
    with override_settings(
        BROADCAST_REDIS_CLUSTER=["127.0.0.1:7000", "[::1]:7001"], BROADCAST_DELIVERY="outbox"
    ):
        assert checks.check_cluster(None) == []

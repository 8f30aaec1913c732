"""Hostile frames, generated: whatever a client sends, the consumer answers and survives.

Hypothesis generates batches of frames, structure-aware (the protocol's keys with values
of every JSON type, deep nesting, escaped lone surrogates, huge numbers, NaN and
Infinity) and raw (any text, any bytes), and throws them at one connection of a viewer
(who may subscribe, so subscribe and resume run for real against the test Redis). Each
batch ends with a marker frame whose ``error`` reply closes it. Then: nothing was
logged at ERROR, no reply was an ``internal`` error, ``ping`` still answers, and once
every connection is closed the instance holds no subscription, no send task, no
consumer and no connection in its counters.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Permission, User
from django.db import connections
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broadcast_app.instance.hub import hub
from broadcast_app.instance.presence_local import local as presence_local
from broadcast_app.instance.runtime import runtime
from broadcast_app.publish import publisher
from broadcast_app.routing import websocket_urlpatterns
from broadcast_app.stats import stats
from broadcast_app.transport.log_reader import event_log
from broadcast_app.transport.routes import route
from tests.testapp.models import Product

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 10
BATCH = 50
BATCHES = 200  # BATCH x BATCHES frames in all
#: error codes a frame may get (docs/protocol.md); ``internal`` would be a bug
CLIENT_ERRORS = {
    "bad_json", "bad_request", "unknown_model", "forbidden", "too_many_subscriptions",
    "too_large", "rate_limited", "too_many_members",
}  # fmt: skip
RESET_REASONS = {
    "malformed", "epoch", "too_old", "unknown", "unavailable", "too_many", "overflow",
    "rate_limited", "busy",
}  # fmt: skip

SURROGATES = st.sampled_from(["\ud800", "\udfff", "a\udc00b", "\ud800:0", "1-0\udbff"])
TEXT = st.text(st.characters(exclude_categories=()), max_size=12) | SURROGATES
NUMBERS = (
    st.integers()
    | st.integers(min_value=10**18, max_value=10**400)
    | st.integers(max_value=-(10**18), min_value=-(10**400))
    | st.floats(allow_nan=True, allow_infinity=True)
)
SCALARS = st.none() | st.booleans() | NUMBERS | TEXT
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


def deep(depth: int, opener: str = "[", closer: str = "]") -> str:
    return opener * depth + closer * depth


def since_values(real: list[str]) -> st.SearchStrategy[Any]:
    """Resume points: real ones, ones that look real, and broken ones."""
    looks_real = st.builds(
        lambda ms, seq, epoch: f"{ms}-{seq}:{epoch}",
        st.integers(0, 2**70),
        st.integers(0, 2**70),
        st.text("0123456789abcdefXYZ_-", min_size=1, max_size=70),
    )
    return st.sampled_from(real) | looks_real | TEXT | VALUES


def wheres() -> st.SearchStrategy[Any]:
    """Filters: real fields and lookups (and an excluded field) with values of any type,
    lists for ``__in``, and any other key or value."""
    key = st.sampled_from(["stock", "stock__lt", "stock__in", "price__gte", "pk__in",
                           "name__icontains", "name__isnull", "updated_at__gt",
                           "cost_price", "stock__lt__gt", "nope"]) | TEXT  # fmt: skip
    value = SCALARS | st.lists(SCALARS, max_size=6) | st.sampled_from(["12.50", "2026-01-01"])
    return st.dictionaries(key, value, max_size=4) | SCALARS


def structured(real_since: list[str]) -> st.SearchStrategy[str]:
    """A JSON object with the protocol's keys, each of any type (json.dumps writes NaN,
    Infinity and escaped lone surrogates as they arrive from a hostile client)."""
    # The right values come up more often than wrong ones, so that frames go deep.
    kind = st.sampled_from(
        ["subscribe", "subscribe", "unsubscribe", "ping", "presence.join", "presence.leave"]
    )
    label = st.just("testapp.product") | st.sampled_from(
        ["TESTAPP.PRODUCT", "auth.user", "", "x" * 300]
    )
    pk = (
        st.integers(1, 10**6).map(str)
        | st.sampled_from(["1", "7", "0", "-1", "9" * 30, " 1", "1.5"])
        | NUMBERS
        | TEXT
    )
    frame = st.fixed_dictionaries(
        {"type": kind | kind | VALUES, "model": label | label | VALUES},
        optional={
            "pk": pk | VALUES,
            "since": since_values(real_since),
            "ref": VALUES,
            "state": st.dictionaries(TEXT, SCALARS, max_size=3) | VALUES,
            "extra": SCALARS,
        },
    )
    # A quarter also filter or ask for a snapshot (most such frames are refused, and
    # the others must still reach the resumes). Nested values only where the protocol
    # reads them first: drawing them is most of this test's time.
    extras = st.fixed_dictionaries(
        {},
        optional={
            "where": wheres(),
            "snapshot": st.just(True) | SCALARS,
            "limit": st.integers(-1, 2000) | SCALARS,
            "order": st.sampled_from(["price", "-stock", "cost_price", "-"]) | SCALARS,
        },
    )
    extended = st.builds(lambda message, more: {**message, **more}, frame, extras)
    chosen = st.one_of(frame, frame, frame, extended)
    return chosen.map(lambda message: json.dumps(message, allow_nan=True))


def nested() -> st.SearchStrategy[str]:
    """Arrays and objects nested 1 to 2,000 deep, alone or as a field's value."""
    depth = st.integers(1, 2000)
    bare = depth.map(deep)
    objects = depth.map(lambda n: '{"a":' * n + "1" + "}" * n)
    in_ref = depth.map(lambda n: '{"type":"ping","ref":' + deep(n) + "}")
    in_since = depth.map(lambda n: '{"type":"subscribe","model":"testapp.product","since":'
                         + deep(n) + "}")  # fmt: skip
    return bare | objects | in_ref | in_since


def literals() -> st.SearchStrategy[str]:
    """Numbers json.dumps never writes: 1e999, -1e999, huge exponents, NaN spellings."""
    number = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e-999",
                              "1" + "0" * 4000, "1E400", "-0.0e99999"])  # fmt: skip
    key = st.sampled_from(["ref", "pk", "since", "model", "type"])
    head = '{"type":"subscribe","model":"testapp.product","'
    return st.builds(lambda k, n: head + k + '":' + n + "}", key, number)


def raw() -> st.SearchStrategy[str | bytes]:
    return (
        st.text(max_size=200)
        | st.binary(max_size=200)
        | st.sampled_from(["", "null", "[]", "1", '"s"', "{", "x" * 5000, "é" * 2100])
    )


def frames(real_since: list[str]) -> st.SearchStrategy[list[str | bytes]]:
    # Half the frames structure-aware, a sixth each nested, odd literals, raw. one_of
    # picks each branch alike, the branches of a one_of inside it too: map() hides them.
    kinds = [structured(real_since)] * 3 + [nested(), literals(), raw()]
    one = st.one_of(*(kind.map(_same) for kind in kinds))
    # Each batch starts with a well-formed resume of the model, so that replays run
    # among the hostile frames whatever the draws (random frames fill the connection's
    # subscriptions; this one stays subscribed unless one of them unsubscribes it). It
    # resumes ten events before the end: the log also holds what earlier tests wrote (a
    # resume from its middle was a reset, not a replay, after a long test).
    since = real_since[-10]
    resume = json.dumps({"type": "subscribe", "model": "testapp.product", "since": since})
    return st.lists(one, min_size=BATCH - 1, max_size=BATCH - 1).map(lambda b: [resume, *b])


def logged_ids() -> list[str]:
    """Every event id in the testapp.product log, and the one before the first."""
    r = route("testapp.product")
    with redis.Redis.from_url(r.host["address"], decode_responses=True) as client:
        epoch = client.hget(r.meta, "epoch")
        entries = client.xrange(r.stream)
    return [entries[0][1]["p"]] + [f"{entry_id}:{epoch}" for entry_id, _ in entries]


def _same(frame: Any) -> Any:
    return frame


def viewer() -> User:
    user = User.objects.create_user("fuzz", password="x")
    user.user_permissions.add(Permission.objects.get(codename="view_product"))
    return User.objects.get(pk=user.pk)


def saves(count: int) -> None:
    product = Product.objects.create(sku="FUZZ", name="f", price=1, stock=0)
    for stock in range(count):
        product.stock = stock
        product.save()
    publisher.flush(TIMEOUT)


async def connect(user: Any) -> WebsocketCommunicator:
    ws = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/broadcast/")
    ws.scope["user"] = user
    assert (await ws.connect(TIMEOUT))[0]
    return ws


async def throw(ws: WebsocketCommunicator, batch: list[str | bytes], marker: str) -> list[Any]:
    """Send the batch and a marker; return every reply up to the marker's."""
    for frame in batch:
        key = "bytes" if isinstance(frame, bytes) else "text"
        await ws.send_input({"type": "websocket.receive", key: frame})
    await ws.send_input({"type": "websocket.receive", "text": json.dumps(
        {"type": "marker", "ref": marker})})  # fmt: skip
    replies: list[Any] = []
    while True:
        reply = json.loads(await ws.receive_from(TIMEOUT))
        if reply.get("ref") == marker and reply.get("type") == "error":
            return replies
        replies.append(reply)


def check(reply: Any) -> None:
    assert isinstance(reply, dict), reply
    kind = reply.get("type")
    if kind == "error":
        assert reply["code"] in CLIENT_ERRORS, reply
    elif kind == "reset":
        assert reply["reason"] in RESET_REASONS, reply
    else:
        assert kind in {"pong", "subscribed", "change", "presence", "snapshot"}, reply


def sender_tasks(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[Any]]:
    return [
        task
        for task in asyncio.all_tasks(loop)
        if getattr(task.get_coro(), "__qualname__", "") == "Sender._run"
    ]


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    """An event loop of this test's own: hypothesis calls the property synchronously."""
    with asyncio.Runner() as loop_runner:
        loop_runner.run(runtime.start())
        yield loop_runner
        loop_runner.run(runtime.stop())
        loop_runner.run(event_log.close())
        hub.last_ids.clear()
    connections.close_all()


# Frames, resumes and presence joins are budgeted per connection: lift the budgets so
# every frame is read, every resume reads the log and every join reaches Redis; and few
# subscriptions, so that the limit is reached. The loop runs only while a frame is
# handled (hypothesis draws the next one in between, for seconds on a loaded machine):
# the listener's probes, which come back through it, must not lapse meanwhile.
@override_settings(
    BROADCAST_RESUME_RATE=10**9,
    BROADCAST_FRAME_BURST=10**9,
    BROADCAST_PRESENCE_RATE=10**9,
    BROADCAST_MAX_SUBSCRIPTIONS=10,
    BROADCAST_CONFIRM_TIMEOUT=3600,
)
@pytest.mark.slow
def test_ten_thousand_hostile_frames_leave_one_usable_connection_and_nothing_behind(
    runner: asyncio.Runner, caplog: pytest.LogCaptureFixture
) -> None:
    user = viewer()
    saves(20)
    real = logged_ids()
    opened_before = stats.get("connections_opened") - stats.get("connections_closed")
    subscriptions_before = hub.count()
    ws = runner.run(connect(user))
    other = runner.run(connect(user))  # a bystander, subscribed, closed at the end too
    runner.run(other.send_json_to({"type": "subscribe", "model": "testapp.product"}))
    assert json.loads(runner.run(other.receive_from(TIMEOUT)))["type"] == "subscribed"
    (bystander,) = hub._subs["testapp.product"][None]
    runner.run(ws.send_json_to({"type": "subscribe", "model": "testapp.product", "pk": "424242"}))
    assert json.loads(runner.run(ws.receive_from(TIMEOUT)))["type"] == "subscribed"
    (target,) = hub._subs["testapp.product"]["424242"]
    runner.run(
        ws.send_json_to({"type": "unsubscribe", "model": "testapp.product", "pk": "424242"})
    )
    consumers = [weakref.ref(bystander), weakref.ref(target)]
    del target
    sent: list[int] = []
    kinds: dict[str, int] = {}

    @settings(
        max_examples=BATCHES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(batch=frames(real))
    def property_(batch: list[str | bytes]) -> None:
        replies = runner.run(throw(ws, batch, f"marker-{len(sent)}"))
        sent.append(len(batch))
        for reply in replies:
            check(reply)
            kind = reply["type"] + ":" + str(reply.get("code") or reply.get("reason") or "")
            kinds[kind] = kinds.get(kind, 0) + 1
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    with caplog.at_level(logging.WARNING):
        property_()
        runner.run(ws.send_json_to({"type": "ping"}))
        reply = json.loads(runner.run(ws.receive_from(TIMEOUT)))
        while reply["type"] == "presence":  # (a member list sent after the last marker)
            reply = json.loads(runner.run(ws.receive_from(TIMEOUT)))
        assert reply == {"type": "pong"}
        runner.run(ws.disconnect())
        runner.run(other.disconnect())
    assert sum(sent) >= 10_000
    print(f"\nfuzz: {sum(sent)} frames, replies by kind: {dict(sorted(kinds.items()))}")
    # The frames reached each path (the ones hundreds of frames take, whatever else
    # the log holds when this test runs).
    for kind in ("error:bad_json", "error:bad_request", "error:too_large", "pong:",
                 "subscribed:", "reset:malformed", "change:", "error:unknown_model"):  # fmt: skip
        assert kinds.get(kind), (kind, kinds)
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert hub.count() == subscriptions_before
    assert (presence_local.joined, presence_local.watchers) == ({}, {})
    # Nor a connection owed a member list after a read that failed (the loop idles
    # while hypothesis draws, and Redis calls time out).
    assert presence_local._fresh == {}
    assert sender_tasks(runner.get_loop()) == []
    assert stats.get("connections_opened") - stats.get("connections_closed") == opened_before
    del bystander
    gc.collect()
    assert [ref for ref in consumers if ref() is not None] == []

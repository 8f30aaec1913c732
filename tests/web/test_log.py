"""Reading the log costs at most what it returns, and resumes are budgeted (issue 12).

Redis' own command counters (``INFO commandstats`` of the test server) tell how many
XRANGE calls a read made: the script's count (XRANGEs inside it, a page of 10 entries,
then as many as the events still to count need at the events per entry seen), then one
per page of entries.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import redis
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import override_settings

from broadcast_app.publish import publisher
from broadcast_app.routing import websocket_urlpatterns
from broadcast_app.transport.log_reader import PAGE_SIZE, Replay, event_log
from broadcast_app.web.limits import read_gate
from tests.testapp.models import Product

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

TIMEOUT = 5
LABEL = "testapp.product"


def changes(count: int) -> None:
    """``count`` saves, each published alone (one log entry each: the publisher is never
    busy enough to take two at once)."""
    product, _ = Product.objects.get_or_create(sku="LOG", defaults={"name": "l", "price": 1})
    assert publisher.flush(TIMEOUT)
    for _ in range(count):
        product.stock += 1
        product.save()
        assert publisher.flush(TIMEOUT)


def calls(client: redis.Redis, command: str) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


@pytest_asyncio.fixture
async def log_start() -> AsyncIterator[str]:
    """The id the next events of the test follow."""
    await database_sync_to_async(changes)(1)
    since = await event_log.last_id(LABEL)
    assert since is not None
    yield since
    await event_log.close()


async def test_a_long_replay_is_read_in_pages(log_start: str, redis_client: redis.Redis) -> None:
    count = 2 * PAGE_SIZE + PAGE_SIZE // 2
    await database_sync_to_async(changes)(count)
    before = calls(redis_client, "xrange")
    replay = await event_log.read_after(LABEL, log_start, limit=1000)
    assert replay.complete and len(replay.frames) == count
    assert replay.last_id == await event_log.last_id(LABEL)
    # Two XRANGEs inside the script (it counts: 10 entries, then the 53 left, all it
    # needs at one event per entry), then three pages (since's entry and 62: 25, 25, 13).
    assert calls(redis_client, "xrange") - before == 2 + 3


async def test_too_many_is_known_without_reading_the_entries(
    log_start: str, redis_client: redis.Redis
) -> None:
    await database_sync_to_async(changes)(30)
    before = calls(redis_client, "xrange")
    replay = await event_log.read_after(LABEL, log_start, limit=29)
    assert (replay.complete, replay.reason, replay.frames) == (False, "too_many", [])
    assert calls(redis_client, "xrange") - before == 2  # the script's count only
    assert (await event_log.read_after(LABEL, log_start, limit=30)).complete


@pytest.mark.parametrize(
    "since",
    [
        "\ud800:0a1b2c3d",
        "1-0:\udfff",
        "1-0\ud800:ab",
        "\uff11-0:ab",
        "1-0:ab:c",
        "-1:ab",
        " 1-0:ab",
        7,
    ],
)
async def test_a_since_we_never_issued_is_refused_before_any_redis_call(
    since: Any, redis_client: redis.Redis
) -> None:
    before = calls(redis_client, "evalsha") + calls(redis_client, "eval")
    replay = await event_log.read_after(LABEL, since, limit=10)
    assert (replay.complete, replay.reason) == (False, "malformed")
    assert calls(redis_client, "evalsha") + calls(redis_client, "eval") == before


async def test_a_stream_id_beyond_redis_range_is_malformed(log_start: str) -> None:
    epoch = log_start.partition(":")[2]
    replay = await event_log.read_after(LABEL, f"99999999999999999999-0:{epoch}", limit=10)
    assert (replay.complete, replay.reason) == (False, "malformed")


# -- the consumer's budget -------------------------------------------------------------


async def connect(user: User) -> WebsocketCommunicator:
    ws = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/broadcast/")
    ws.scope["user"] = user
    assert (await ws.connect(TIMEOUT))[0]
    return ws


async def resume(ws: WebsocketCommunicator, since: str) -> list[dict[str, Any]]:
    """Subscribe with ``since``; the frames up to the ``pong`` that follows."""
    await ws.send_json_to({"type": "subscribe", "model": LABEL, "since": since})
    await ws.send_json_to({"type": "ping"})
    frames = []
    while (frame := await ws.receive_json_from(TIMEOUT)) != {"type": "pong"}:
        frames.append(frame)
    return frames


@pytest.fixture
def admin_user(db: None) -> User:
    return User.objects.create_superuser("root", password="pw")


@override_settings(BROADCAST_RESUME_RATE=3, BROADCAST_RESUME_WINDOW=60)
async def test_resumes_beyond_the_connection_allowance_are_reset_without_work(
    running_listener: Any, admin_user: User, log_start: str, redis_client: redis.Redis
) -> None:
    await database_sync_to_async(changes)(2)
    ws = await connect(admin_user)
    for _ in range(3):
        frames = await resume(ws, log_start)
        assert [f["type"] for f in frames] == ["subscribed", "change", "change"]
    before = calls(redis_client, "evalsha")
    frames = await resume(ws, log_start)
    assert [(f["type"], f.get("reason")) for f in frames] == [
        ("subscribed", None),
        ("reset", "rate_limited"),
    ]
    assert calls(redis_client, "evalsha") == before
    # Another connection has its own allowance.
    other = await connect(admin_user)
    assert [f["type"] for f in await resume(other, log_start)] == [
        "subscribed",
        "change",
        "change",
    ]
    await ws.disconnect()
    await other.disconnect()


@override_settings(BROADCAST_RESUME_RATE=2, BROADCAST_RESUME_WINDOW=0.2)
@pytest.mark.slow
async def test_the_allowance_comes_back_over_the_window(
    running_listener: Any, admin_user: User, log_start: str
) -> None:
    ws = await connect(admin_user)
    reasons = [[f.get("reason") for f in await resume(ws, log_start)] for _ in range(3)]
    assert reasons == [[None], [None], [None, "rate_limited"]]
    await asyncio.sleep(0.2)  # the window itself is what this test is about
    assert [f.get("reason") for f in await resume(ws, log_start)] == [None]
    await ws.disconnect()


@override_settings(BROADCAST_RESUME_CONCURRENCY=1, BROADCAST_REDIS_TIMEOUT=0.2)
@pytest.mark.slow
async def test_a_resume_finding_every_log_read_taken_waits_then_is_reset_busy(
    running_listener: Any, admin_user: User, log_start: str
) -> None:
    await database_sync_to_async(changes)(1)
    ws = await connect(admin_user)
    gate = read_gate()
    await gate.acquire()  # the instance's only turn, taken
    try:
        frames = await resume(ws, log_start)
        assert [(f["type"], f.get("reason")) for f in frames] == [
            ("subscribed", None),
            ("reset", "busy"),
        ]
    finally:
        gate.release()
    frames = await resume(ws, log_start)
    assert [f["type"] for f in frames] == ["subscribed", "change"]
    await ws.disconnect()


@override_settings(BROADCAST_RESUME_MAX_EVENTS=4)
async def test_a_replay_longer_than_the_resume_maximum_is_a_reset(
    running_listener: Any, admin_user: User, log_start: str
) -> None:
    await database_sync_to_async(changes)(4)
    ws = await connect(admin_user)
    assert [f["type"] for f in await resume(ws, log_start)] == ["subscribed"] + ["change"] * 4
    await ws.disconnect()
    await database_sync_to_async(changes)(1)
    ws = await connect(admin_user)
    frames = await resume(ws, log_start)
    assert [(f["type"], f.get("reason")) for f in frames] == [
        ("subscribed", None),
        ("reset", "too_many"),
    ]
    await ws.disconnect()


async def test_a_since_with_an_escaped_lone_surrogate_is_a_reset_malformed(
    running_listener: Any, admin_user: User, log_start: str
) -> None:
    ws = await connect(admin_user)
    epoch = log_start.partition(":")[2]
    # As a hostile client sends it: the escape is valid JSON, the string is not UTF-8.
    frame = '{"type":"subscribe","model":"' + LABEL + '","since":"\\ud800:' + epoch + '"}'
    await ws.send_to(text_data=frame)
    frames = [await ws.receive_json_from(TIMEOUT) for _ in range(2)]
    assert [(f["type"], f.get("reason")) for f in frames] == [
        ("subscribed", None),
        ("reset", "malformed"),
    ]
    await ws.send_json_to({"type": "ping"})
    assert await ws.receive_json_from(TIMEOUT) == {"type": "pong"}
    await ws.disconnect()


async def test_a_log_read_from_its_start_holds_every_event_or_says_it_lost_some(
    redis_client: redis.Redis,
) -> None:
    from broadcast_app.transport.routes import meta_key, stream_key

    redis_client.delete(stream_key(LABEL), meta_key(LABEL))
    try:
        assert await event_log.read_from_start(LABEL) == Replay(True)  # no event yet
        await database_sync_to_async(changes)(3)  # the created event and 3 updates
        replay = await event_log.read_from_start(LABEL)
        assert replay.complete and len(replay.frames) == 4
        assert replay.last_id == replay.frames[-1][0] == await event_log.last_id(LABEL)
        assert '"op":"created"' in replay.frames[0][1]
        # The first entry trimmed: what it held is lost, and the read says so.
        redis_client.xtrim(stream_key(LABEL), maxlen=3, approximate=False)
        trimmed = await event_log.read_from_start(LABEL)
        assert (trimmed.complete, trimmed.reason) == (False, "too_old")
        assert trimmed.last_id == replay.last_id
    finally:
        await event_log.close()

"""One log entry per publish script call: reads, resumes and trimming count events, not
entries, wherever an entry starts and ends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from broadcast_app.transport.log_reader import EventLog, Replay
from broadcast_app.transport.routes import Route, route
from broadcast_app.transport.scripts import MAX_PER_CALL, load, pack, unpack
from tests.logged import logged_events

LABEL = "testapp.product"


def body(n: int) -> str:
    return f'"model":"{LABEL}","n":{n}}}'


@pytest.fixture
def products(redis_client: redis.Redis) -> Route:
    r = route(LABEL)
    redis_client.delete(r.stream, r.meta)
    return r


def publish(client: redis.Redis, r: Route, sizes: list[int], maxlen: int = 10_000) -> list[str]:
    """One script call per size, each of that many events: every event's id, in order."""
    shas = load(client)
    ids: list[str] = []
    for size in sizes:
        entries: list[Any] = [(r, body(len(ids) + n), None) for n in range(size)]
        packed = pack(entries, shas, maxlen, 0, 60_000)
        assert len(packed.calls) == 1
        results = unpack(packed, [client.execute_command(*packed.calls[0])])
        ids += [result[0] for result in results if result]
    return ids


def read(call: str, *args: Any) -> Replay:
    async def run() -> Replay:
        log = EventLog()
        try:
            replay: Replay = await getattr(log, call)(LABEL, *args)
            return replay
        finally:
            await log.close()

    return asyncio.run(run())


def bodies_of(replay: Replay) -> list[int]:
    return [int(frame.rsplit('"n":', 1)[1].rstrip("}")) for _, frame in replay.frames]


def test_a_resume_from_any_event_of_an_entry_replays_exactly_the_events_after_it(
    redis_client: redis.Redis, products: Route
) -> None:
    ids = publish(redis_client, products, [1, 5, 1, 5])  # entries of 1, 5, 1 and 5 events
    assert redis_client.xlen(products.stream) == 4
    for n, since in enumerate(ids[:-1]):  # first, middle and last events of each entry
        replay = read("read_after", since)
        assert replay.complete, (n, replay.reason)
        assert [event_id for event_id, _ in replay.frames] == ids[n + 1 :]
        assert bodies_of(replay) == list(range(n + 1, len(ids)))
        assert replay.last_id == ids[-1]
    assert read("read_after", ids[-1]) == Replay(True, last_id=ids[-1])


def test_the_count_of_a_resume_is_in_events_and_known_before_reading_them(
    redis_client: redis.Redis, products: Route
) -> None:
    ids = publish(redis_client, products, [1, MAX_PER_CALL, MAX_PER_CALL, 3])
    since = ids[50]  # inside the first entry of many
    after = len(ids) - 51
    assert (read("read_after", since, after - 1).reason) == "too_many"
    replay = read("read_after", since, after)
    assert replay.complete and len(replay.frames) == after
    assert [event_id for event_id, _ in replay.frames] == ids[51:]


def test_a_log_read_from_its_start_gives_every_event_of_its_first_entry(
    redis_client: redis.Redis, products: Route
) -> None:
    ids = publish(redis_client, products, [4, 1, 2])
    replay = read("read_from_start")
    assert replay.complete and [event_id for event_id, _ in replay.frames] == ids
    assert bodies_of(replay) == list(range(7))


@pytest.mark.parametrize("meta", [True, False])
def test_ids_stay_above_a_log_whose_newest_id_is_ahead_of_the_clock(
    redis_client: redis.Redis, products: Route, meta: bool
) -> None:
    """With its meta (the epoch goes on) or without (a fresh epoch, the old entries kept
    until trimmed): Redis refuses an id at or below the stream's newest."""
    top = "99999999999999-7"
    redis_client.xadd(products.stream, {"b": "{}", "p": ""}, id=top)
    if meta:
        redis_client.hset(products.meta, mapping={"epoch": "e", "last": f"{top}:e"})
    ids = publish(redis_client, products, [3, 1])
    assert [i.partition(":")[0] for i in ids] == [f"99999999999999-{n}" for n in (8, 9, 10, 11)]
    epochs = {i.partition(":")[2] for i in ids}
    assert len(epochs) == 1 and (epochs == {"e"}) is meta
    assert [event[0] for event in logged_events(redis_client, products)][-4:] == ids


@pytest.mark.parametrize("size", [1, MAX_PER_CALL])
def test_the_log_keeps_about_maxlen_events_whatever_its_entries_hold(
    redis_client: redis.Redis, products: Route, size: int
) -> None:
    """From ``maxlen`` to 1.5 ``maxlen`` events, and up to a stream node more (whole
    nodes go; single events share them, an entry of 100 has its own)."""
    maxlen = 600
    node = redis_client.config_get("stream-node-max-entries")["stream-node-max-entries"]
    slack = size + (int(node) if size == 1 else 0)
    published, calls = 0, 10 if size == 1 else 1
    while published < 5 * maxlen:
        publish(redis_client, products, [size] * calls, maxlen=maxlen)
        published += size * calls
        kept = len(logged_events(redis_client, products))
        assert kept <= 1.5 * maxlen + slack, (published, kept)
        assert kept >= min(published, maxlen), (published, kept)
    # (the age trim, off here, is the other bound: test_pipeline.py)

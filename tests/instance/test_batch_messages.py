"""Several events of a model in one published message (``broadcast.events``): a real
listener hands each to its clients as its own frame, in order, checking each ``prev``,
beside single-event messages (publishers of the previous version)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from channels.db import database_sync_to_async

from broadcast_app.events.wire import id_key
from broadcast_app.stats import stats
from broadcast_app.transport.redis_clients import make_client
from broadcast_app.transport.routes import route
from broadcast_app.transport.scripts import MAX_PER_CALL, load, pack, unpack
from tests.instance.recording import LABEL, TIMEOUT, Recorder

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


def body(n: int) -> str:
    """A product update's body as the publisher writes it (after ``"id":...,``)."""
    return json.dumps(
        {"op": "updated", "model": LABEL, "pk": "7", "data": {"id": 7, "stock": n},
         "changed": ["stock"], "ts": "2026-12-07T03:00:00.000000Z", "origin": "test"},
        separators=(",", ":"),
    )[1:]  # fmt: skip


def publish_calls(counts: list[int], published: bool = True) -> list[str]:
    """One publish script call per count, each carrying that many events of the model;
    unpublished (logged only) with ``published`` False. Returns the ids in order."""
    r = route(LABEL)
    if not published:
        r = dataclasses.replace(r, channel="")
    client = make_client(r.host, TIMEOUT)
    try:
        shas = load(client)
        ids: list[str] = []
        for count in counts:
            entries: list[Any] = [(r, body(len(ids) + n), None) for n in range(count)]
            packed = pack(entries, shas, 10_000, 0, 60_000)
            assert len(packed.calls) == 1
            results = unpack(packed, [client.execute_command(*packed.calls[0])])
            ids += [result[0] for result in results if result]
        return ids
    finally:
        client.close()


async def test_a_burst_in_one_message_reaches_clients_one_frame_each_in_order(
    running_listener: Any, recorder: Recorder
) -> None:
    ids = await database_sync_to_async(publish_calls)([1])  # the listener's first event
    await recorder.wait_for(1)
    recovered = stats.get("recovered")
    ids += await database_sync_to_async(publish_calls)([MAX_PER_CALL])
    await recorder.wait_for(1 + MAX_PER_CALL)
    assert [f["id"] for f in recorder.frames] == ids
    assert [f["data"]["stock"] for f in recorder.frames] == [0, *range(MAX_PER_CALL)]
    # Each event named the one before it: nothing was read back from the log.
    assert stats.get("recovered") == recovered
    assert running_listener.continuity.last[LABEL] == ids[-1]


async def test_single_and_batch_messages_mixed_keep_one_chain(
    running_listener: Any, recorder: Recorder
) -> None:
    counts = [1, 5, 1, 1, 3, 2, 1]
    ids = await database_sync_to_async(publish_calls)(counts[:1])
    await recorder.wait_for(1)
    recovered = stats.get("recovered")
    ids += await database_sync_to_async(publish_calls)(counts[1:])
    await recorder.wait_for(sum(counts))
    assert [f["id"] for f in recorder.frames] == ids == sorted(ids, key=id_key)
    assert stats.get("recovered") == recovered


async def test_a_gap_before_a_batch_is_repaired_from_the_log_first(
    running_listener: Any, recorder: Recorder
) -> None:
    ids = await database_sync_to_async(publish_calls)([1])
    await recorder.wait_for(1)
    recovered = stats.get("recovered")
    # Two events logged but never published (as if their message was lost), then a batch
    # whose first event names the second of them.
    ids += await database_sync_to_async(publish_calls)([2], published=False)
    ids += await database_sync_to_async(publish_calls)([4])
    await recorder.wait_for(7)
    assert [f["id"] for f in recorder.frames] == ids
    assert stats.get("recovered") == recovered + 2

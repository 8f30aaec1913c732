"""The dashboard's feed: bounded, metadata only, with commit → receipt lag and a rate."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from broadcast_app import cache
from broadcast_app.instance.feed import RATE_WINDOW, Feed, feed
from broadcast_app.instance.hub import hub
from broadcast_app.instance.listener import listener

T0 = 1_800_000_000.0  # a fixed "now", in Unix seconds


def event(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": "change", "id": f"{n}-0", "op": "updated", "model": "testapp.product",
        "pk": str(n), "data": {"id": n, "price": "12.34"}, "changed": ["price"],
        "ts": "2027-01-15T08:00:00.000000Z", "origin": "a", **extra,
    }  # fmt: skip


@pytest.fixture(autouse=True)
def _fresh_feed() -> Iterator[None]:
    feed.reset()
    yield
    feed.reset()


def test_receipts_hold_metadata_and_lag_never_data() -> None:
    receipt = Feed().record(event(1), now=T0)
    as_dict = receipt.as_dict()
    assert set(as_dict) == {
        "id", "model", "pk", "op", "changed", "origin", "ts", "received_at", "lag_ms"
    }  # fmt: skip
    assert "12.34" not in json.dumps(as_dict)
    # 2027-01-15T08:00:00Z is T0 exactly: received 0 ms after the commit.
    assert as_dict["lag_ms"] == 0.0
    assert Feed().record(event(2), now=T0 + 0.0125).lag_ms == 12.5
    assert Feed().record(event(3, ts="garbage"), now=T0).lag_ms is None


def test_the_feed_is_bounded_newest_first() -> None:
    with override_settings(BROADCAST_FEED_SIZE=3):  # setting_changed resets the feed
        for n in range(5):
            feed.record(event(n), now=T0 + n)
        assert [r.id for r in feed.latest()] == ["4-0", "3-0", "2-0"]
        assert feed.last is not None and feed.last.id == "4-0"


def test_rate_in_slices_of_the_window() -> None:
    rates = Feed()
    for second, count in ((0, 10), (1, 5), (-6, 2), (-RATE_WINDOW - 5, 100)):
        for _ in range(count):
            rates.record(event(1), now=T0 + second)
    slices = rates.rate(step=5, window=RATE_WINDOW, now=T0 + 1)
    assert len(slices) == RATE_WINDOW // 5
    assert slices[-1] == 3.0  # 15 events in the last 5 s
    assert slices[-2] == 0.4  # 2 events, 6 s earlier
    assert sum(slices) == 3.4  # the one outside the window is not counted


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_the_listener_records_each_event() -> None:
    frame = json.dumps(event(42))
    try:
        await listener.handle(frame)
        assert feed.last is not None and (feed.last.id, feed.last.pk) == ("42-0", "42")
    finally:
        # handle() also updated the cache and the last ids: leave nothing behind.
        cache.delete("testapp.product", 42)
        hub.last_ids.clear()

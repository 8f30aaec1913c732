"""Fault test: Redis killed and restarted mid-stream while saves go on, in both modes.

A real redis-server with an append-only file (as a production Redis that keeps its
data), SIGKILLed after a third of the saves and restarted after two thirds. Every event
must reach the listening instance, once, in order per object. The figures (sent /
received / reset) are printed in the terminal summary and quoted in
docs/reliability.md.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
import redis
from channels.db import database_sync_to_async
from django.test import override_settings

from broadcast_app import publisher
from broadcast_app.embedded_redis import EmbeddedRedis
from broadcast_app.layer import route
from broadcast_app.listener import listener
from broadcast_app.models import OutboxEvent
from broadcast_app.relay import Relay
from broadcast_app.stats import stats
from tests.conftest import FIGURES, Received, layers_for
from tests.test_pipeline import make

pytestmark = pytest.mark.django_db(transaction=True)

OBJECTS = 5
UPDATES = 150
KILL_AT, RESTART_AT = 50, 100
RELAY_EVERY = 10  # saves between two relay passes (outbox mode)
DELIVERY_TIMEOUT = 30.0


def _resets() -> int:
    return stats.get("instance_resets") + stats.get("lost_resets")


async def _relay_until_empty(relay: Relay, timeout: float) -> int:
    """Relay passes until the outbox is empty (Redis may still be loading its script)."""
    import asyncio

    deadline = asyncio.get_running_loop().time() + timeout
    published = 0
    while await database_sync_to_async(OutboxEvent.objects.exists)():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail("the outbox did not drain after Redis came back")
        outcome = await database_sync_to_async(relay.drain)()
        published += outcome.published
        if outcome.failed:
            await asyncio.sleep(0.1)  # retry pacing, bounded by the deadline
    return published


@pytest.mark.parametrize("mode", ["best_effort", "outbox"])
@pytest.mark.asyncio
async def test_redis_killed_and_restarted_mid_stream(mode: str, received: Received) -> None:
    server = EmbeddedRedis(None, "--appendonly", "yes", "--appendfsync", "always").start()
    relay = Relay()
    resets = _resets()
    try:
        with override_settings(
            CHANNEL_LAYERS=layers_for(server.url),
            BROADCAST_DELIVERY=mode,
            BROADCAST_OUTBOX_RELAY=False,  # relayed by the test, at known points
            BROADCAST_RECOVERY_INTERVAL=0.5,
        ):
            # A fresh instance: what the listener processed from an earlier test's Redis
            # (another epoch) would rightly count as a reset here.
            listener.continuity.last.clear()
            await listener.start()
            products = [
                await database_sync_to_async(make)(f"KILL-{i}", stock=0) for i in range(OBJECTS)
            ]
            sent, held = OBJECTS, 0
            for n in range(1, UPDATES + 1):
                product = products[n % OBJECTS]
                product.stock = n
                await database_sync_to_async(product.save)()
                sent += 1
                if mode == "outbox" and n % RELAY_EVERY == 0:
                    await database_sync_to_async(relay.drain)()
                if n == KILL_AT:
                    server.kill()
                elif n == RESTART_AT:
                    held = await database_sync_to_async(OutboxEvent.objects.count)()
                    server.start()
            if mode == "outbox":
                await _relay_until_empty(relay, DELIVERY_TIMEOUT)
            else:
                assert await database_sync_to_async(publisher.flush)(DELIVERY_TIMEOUT)
            # Every event in the log must reach the listener, duplicates included.
            client = redis.Redis.from_url(server.url)
            published = client.xlen(route("demo.product").stream)
            client.close()
            got = await received.wait_for(published, DELIVERY_TIMEOUT, strict=False)
            await listener.stop()
    finally:
        await listener.stop()
        relay.publisher.close()
        server.stop()
    reset = _resets() - resets
    stocks: dict[str, list[int]] = defaultdict(list)
    for event in got:
        stocks[event["data"]["sku"]].append(event["data"]["stock"])
    expected = {
        f"KILL-{i}": [0] + [n for n in range(1, UPDATES + 1) if n % OBJECTS == i]
        for i in range(OBJECTS)
    }
    lost = sum(len(set(states) - set(stocks[sku])) for sku, states in expected.items())
    duplicates = len(got) - sum(len(set(states)) for states in stocks.values())
    FIGURES.append(
        f"Redis killed and restarted mid-stream [{mode}]: sent {sent}, published {published}, "
        f"received {len(got)} ({duplicates} duplicate(s)), reset {reset}, lost {lost}"
        + (f"; the outbox held {held} rows when Redis came back" if mode == "outbox" else "")
    )
    print(FIGURES[-1])
    missing = {sku: sorted(set(states) - set(stocks[sku])) for sku, states in expected.items()}
    assert lost == 0, missing
    assert len(got) == published
    assert reset == 0
    assert len({event["id"] for event in got}) == len(got)
    for sku, states in expected.items():
        assert stocks[sku][-1] == states[-1]
    if mode == "outbox":
        # Exactly once, in order: a retried event Redis had applied is skipped.
        assert duplicates == 0
        assert stocks == expected

"""Fault test: Redis killed and restarted mid-stream while saves go on, in both modes.

A real redis-server with an append-only file (as a production Redis that keeps its
data), SIGKILLed after a third of the saves and restarted after two thirds. Every event
must reach the listening instance, once, in order per object. The figures (sent /
received / reset) are printed in the terminal summary and quoted in
docs/reliability.md. A last run, outbox mode only, uses a Redis that keeps nothing.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from channels.db import database_sync_to_async
from django.test import override_settings

from broadcast_app.dev.embedded_redis import EmbeddedRedis
from broadcast_app.instance.hub import hub
from broadcast_app.instance.listener import listener
from broadcast_app.instance.runtime import runtime
from broadcast_app.models import OutboxEvent
from broadcast_app.publish import publisher
from broadcast_app.publish.relay import Relay
from broadcast_app.stats import stats
from broadcast_app.transport.routes import route
from tests.conftest import FIGURES, Received, layers_for
from tests.logged import logged_events
from tests.publish.test_pipeline import make

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

OBJECTS = 5
UPDATES = 150
KILL_AT, RESTART_AT = 50, 100
RELAY_EVERY = 10  # saves between two relay passes (outbox mode)
DELIVERY_TIMEOUT = 30.0


def _resets() -> int:
    return stats.get("instance_resets") + stats.get("lost_resets")


async def _relay_until_empty(relay: Relay, timeout: float) -> int:
    """Relay passes until the outbox is empty (Redis may still be loading its script)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    published = 0
    while await database_sync_to_async(OutboxEvent.objects.exists)():
        if loop.time() > deadline:
            pytest.fail("the outbox did not drain after Redis came back")
        outcome = await database_sync_to_async(relay.drain)()
        published += outcome.published
        if outcome.failed:
            await asyncio.sleep(0.1)  # retry pacing, bounded by the deadline
    return published


async def _save_through_an_outage(mode: str, server: EmbeddedRedis, relay: Relay) -> Run:
    """Create the products, update them, kill and restart Redis on the way, then wait
    until everything is published; the listener runs meanwhile."""
    # A fresh instance: what the listener processed from an earlier test's Redis
    # (another epoch) would rightly count as a reset here.
    listener.continuity.last.clear()
    await runtime.start()
    products = [await database_sync_to_async(make)(f"KILL-{i}", stock=0) for i in range(OBJECTS)]
    run = Run(sent=OBJECTS)
    for n in range(1, UPDATES + 1):
        product = products[n % OBJECTS]
        product.stock = n
        await database_sync_to_async(product.save)()
        run.sent += 1
        if mode == "outbox" and n % RELAY_EVERY == 0:
            run.relayed += (await database_sync_to_async(relay.drain)()).published
        if n == KILL_AT:
            server.kill()
        elif n == RESTART_AT:
            run.held = await database_sync_to_async(OutboxEvent.objects.count)()
            server.start()
    if mode == "outbox":
        run.relayed += await _relay_until_empty(relay, DELIVERY_TIMEOUT)
    else:
        assert await database_sync_to_async(publisher.flush)(DELIVERY_TIMEOUT)
    return run


@dataclass
class Run:
    """What a run did: saves, events relayed (outbox), rows held when Redis came back."""

    sent: int
    relayed: int = 0
    held: int = 0


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
            run = await _save_through_an_outage(mode, server, relay)
            sent, held = run.sent, run.held
            # Every event in the log must reach the listener, duplicates included.
            client = redis.Redis.from_url(server.url)
            published = len(logged_events(client, route("testapp.product")))
            client.close()
            got = await received.wait_for(published, DELIVERY_TIMEOUT, strict=False)
            await runtime.stop()
    finally:
        await runtime.stop()
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


@pytest.mark.asyncio
async def test_outbox_when_redis_restarts_without_its_data(received: Received) -> None:
    """A Redis that keeps nothing on disk: every row is still published, into a new log
    epoch, and the listening instance resets rather than missing events silently."""
    server = EmbeddedRedis().start()
    relay = Relay()
    resets = _resets()
    subscriber = ResetSubscriber()
    hub.add(subscriber, "testapp.product", None)
    try:
        with override_settings(
            CHANNEL_LAYERS=layers_for(server.url),
            BROADCAST_DELIVERY="outbox",
            BROADCAST_OUTBOX_RELAY=False,
            BROADCAST_RECOVERY_INTERVAL=0.5,
        ):
            run = await _save_through_an_outage("outbox", server, relay)
            # The instance notices the new epoch at the next event or watchdog check.
            await asyncio.wait_for(subscriber.reset_seen.wait(), DELIVERY_TIMEOUT)
            await runtime.stop()
    finally:
        hub.remove(subscriber, "testapp.product", None)
        await runtime.stop()
        relay.publisher.close()
        server.stop()
    reset = _resets() - resets
    FIGURES.append(
        f"Redis restarted without its data [outbox]: sent {run.sent}, relayed {run.relayed}, "
        f"received {received.queue.qsize() + len(received.list)} live or replayed, "
        f"reset {reset}, lost by the relay {run.sent - run.relayed}"
    )
    print(FIGURES[-1])
    assert run.relayed == run.sent
    assert reset >= 1
    assert subscriber.reasons[0] == "epoch"


class ResetSubscriber:
    """A local subscriber of the listening instance that records its resets."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.reset_seen = asyncio.Event()

    def deliver(self, frame: str, event: dict[str, Any]) -> None:
        pass

    def reset(self, label: str, pk: str | None, reason: str) -> None:
        self.reasons.append(reason)
        self.reset_seen.set()

"""The save loop, shared by every measurement, and what one save does (ours, floor).

Saves are paced on a deadline schedule: save ``i`` starts at ``start + i / rate`` (or
at once when the loop is late), so the time a save takes never shifts the ones after
it, and a saver that cannot keep up shows as a lower achieved rate, not as drift.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import redis
from django.test import override_settings

from ..models import Product

Save = Callable[[int], None]

#: the achieved rate must reach this share of the asked one for the step to count
PACE_TOLERANCE = 0.95


@dataclass
class Pace:
    """What one paced loop did."""

    rate: float
    count: int
    elapsed: float
    #: seconds each save took, in order
    durations: list[float]

    @property
    def achieved_rate(self) -> float:
        return self.count / self.elapsed if self.elapsed > 0 else float("inf")

    @property
    def kept_pace(self) -> bool:
        return self.achieved_rate >= PACE_TOLERANCE * self.rate

    @property
    def median_ms(self) -> float:
        return statistics.median(self.durations) * 1000 if self.durations else 0.0


def paced(rate: float, count: int, save: Save) -> Pace:
    """Call ``save(0)`` … ``save(count - 1)`` at ``rate`` per second on a fixed schedule."""
    period = 1.0 / rate
    durations: list[float] = []
    clock = time.perf_counter
    start = clock()
    for i in range(count):
        delay = start + i * period - clock()
        if delay > 0:
            time.sleep(delay)
        began = clock()
        save(i)
        durations.append(clock() - began)
    # On schedule, the loop spans count periods (the last one ends after the last save).
    return Pace(rate, count, max(clock() - start, count * period), durations)


class Products:
    """Fresh benchmark products, one per phase, so a phase's frames are told apart by pk."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.made = 0

    def new(self) -> Product:
        """Create a product without broadcasting it: a ``created`` frame of its pk
        arriving once the phase records would count as one of its events."""
        self.made += 1
        sku = f"{self.prefix}-{self.made}"
        with override_settings(BROADCAST_ENABLED=False):
            Product.objects.bulk_create(
                [Product(name="benchmark", sku=sku, price=Decimal("1.00"), stock=0)]
            )
        # Loaded from the database, as an application would: capture's snapshot is set.
        return Product.objects.get(sku=sku)

    def delete_all(self) -> None:
        Product.objects.filter(sku__startswith=f"{self.prefix}-").delete()


def marker(product: Product) -> str:
    """Text that every frame about ``product`` contains, ours and the floor's alike."""
    return f'"pk":"{product.pk}"'


def plain_save(product: Product) -> Save:
    """A ``save()`` that changes one field (broadcast_app publishes it when enabled)."""

    def save(i: int) -> None:
        product.stock = i + 1  # never the stock it was created with: every save changes it
        product.save()

    return save


def floor_save(product: Product, client: redis.Redis, channel: str) -> Save:
    """The floor's save: ``save()`` (broadcasting off), then a sync ``PUBLISH`` of its ts."""
    pk = str(product.pk)

    def save(i: int) -> None:
        product.stock = i + 1  # never the stock it was created with: every save changes it
        product.save()
        # Autocommit: the row is committed once save() returns.
        ts = datetime.now(UTC).isoformat(timespec="microseconds")[:26] + "Z"
        message = {"type": "change", "model": "demo.product", "pk": pk, "seq": i, "ts": ts}
        client.publish(channel, json.dumps(message, separators=(",", ":")))

    return save

"""Bulk publication throughput: rows/s of ``QuerySet.update()`` and ``delete()`` with
broadcasting on/off.

Measured in the driver process against the run's Redis: the time from the start of the
operation until every row's event is published (``publisher.flush``), against the same
operation with broadcasting off. The difference divided by the rows is the cost per row
that README and docs/benchmark.md quote.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import F
from django.test.utils import override_settings

from broadcast_app.publish import publisher
from broadcast_app.stats import stats

from ..models import Product

PREFIX = "bench-bulk-"


def bulk_throughput(rows: int) -> dict[str, Any]:
    """Seed ``rows`` products, update them all twice (off, then on), and report."""
    with override_settings(BROADCAST_ENABLED=False):
        _seed(rows)
        started = time.perf_counter()
        Product.objects.filter(sku__startswith=PREFIX).update(stock=F("stock") + 1)
        off = time.perf_counter() - started
    published, dropped = stats.get("published"), stats.get("dropped")
    started = time.perf_counter()
    Product.objects.filter(sku__startswith=PREFIX).update(stock=F("stock") + 1)
    in_update = time.perf_counter() - started
    drained = publisher.flush(120)
    on = time.perf_counter() - started
    with override_settings(BROADCAST_ENABLED=False):
        Product.objects.filter(sku__startswith=PREFIX).delete()
    return {
        "rows": rows,
        "update_off_s": round(off, 3),
        "update_on_s": round(in_update, 3),
        **_published(rows, on, off, drained, published, dropped),
    }


def bulk_delete_throughput(rows: int) -> dict[str, Any]:
    """Seed and delete ``rows`` products twice (off, then on), and report.

    Off is Django's own ``delete()``: with broadcast_app's ``post_delete`` receiver
    connected it loads every row first, so the figure also shows what chunking saves.
    """
    with override_settings(BROADCAST_ENABLED=False):
        _seed(rows)
        started = time.perf_counter()
        Product.objects.filter(sku__startswith=PREFIX).delete()
        off = time.perf_counter() - started
        _seed(rows)
    published, dropped = stats.get("published"), stats.get("dropped")
    started = time.perf_counter()
    with transaction.atomic():
        Product.objects.filter(sku__startswith=PREFIX).delete()
        in_transaction = time.perf_counter() - started
    drained = publisher.flush(120)
    on = time.perf_counter() - started
    return {
        "rows": rows,
        "delete_off_s": round(off, 3),
        "in_transaction_s": round(in_transaction, 3),
        **_published(rows, on, off, drained, published, dropped),
    }


def _seed(rows: int) -> None:
    Product.objects.filter(sku__startswith=PREFIX).delete()
    Product.objects.bulk_create(
        (
            Product(name=f"B{i}", sku=f"{PREFIX}{i}", price=Decimal("1.00"), stock=0)
            for i in range(rows)
        ),
        batch_size=2000,
    )


def _published(
    rows: int, on: float, off: float, drained: bool, published: int, dropped: int
) -> dict[str, Any]:
    """The figures common to both rows: time until published, cost per row, losses."""
    sent = stats.get("published") - published
    return {
        "until_published_s": round(on, 3),
        "rows_per_s": round(rows / on, 1) if on else None,
        "cost_per_row_us": round((on - off) / rows * 1e6, 1),
        "published": sent,
        "lost": rows - sent if drained else None,
        "dropped": stats.get("dropped") - dropped,
    }

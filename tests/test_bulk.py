"""Bulk writes broadcast: update(), bulk_create(), bulk_update(), delete(), publish_changes()."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.models import Count, F
from django.test import override_settings

import broadcast_app
from broadcast_app import publisher
from broadcast_app.stats import stats
from broadcast_app.testing import capture_events
from tests.testapp.models import Article, Comment, Product

pytestmark = pytest.mark.django_db(transaction=True)


def seed(n: int, **fields: Any) -> list[Product]:
    with override_settings(BROADCAST_ENABLED=False):
        return Product.objects.bulk_create(
            Product(name=f"P{i}", sku=f"S{i}", price=Decimal("1.00"), stock=i, **fields)
            for i in range(n)
        )


def test_update_publishes_one_event_per_really_changed_row() -> None:
    products = seed(4)
    with capture_events() as events:
        count = Product.objects.filter(stock__lt=3).update(stock=1, cost_price=Decimal("9"))
    assert count == 3
    # stock 1 -> 1 did not change; 0 -> 1 and 2 -> 1 did.
    assert sorted(e["pk"] for e in events) == sorted(str(p.pk) for p in (products[0], products[2]))
    for event in events:
        assert (event["op"], event["changed"], event["data"]["stock"]) == ("updated", ["stock"], 1)
        assert "cost_price" not in event["data"]
    assert Product.objects.filter(stock=1).count() == 3


def test_update_with_expressions_reads_the_new_values_back() -> None:
    seed(2)
    with capture_events() as events:
        Product.objects.update(price=F("price") * 2)
    assert {e["data"]["price"] for e in events} == {"2.00"}
    assert all(e["changed"] == ["price"] for e in events)


def test_update_of_excluded_fields_only_publishes_nothing() -> None:
    seed(3)
    with capture_events() as events:
        assert Product.objects.update(cost_price=Decimal("5.00")) == 3
    events.assert_none()


def test_update_in_a_rolled_back_transaction_publishes_nothing() -> None:
    seed(2)
    with capture_events() as events:
        with pytest.raises(RuntimeError), transaction.atomic():
            Product.objects.update(stock=99)
            raise RuntimeError
    events.assert_none()


def test_update_and_save_of_one_row_in_a_transaction_coalesce() -> None:
    product = seed(1)[0]
    with capture_events() as events, transaction.atomic():
        Product.objects.filter(pk=product.pk).update(stock=10)
        product.refresh_from_db()
        product.name = "Renamed"
        product.save()
    event = events.assert_one(pk=product.pk)
    assert event["changed"] == ["name", "stock"]
    assert (event["data"]["stock"], event["data"]["name"]) == (10, "Renamed")


def test_update_filtered_on_an_aggregate_works() -> None:
    """FOR UPDATE is not allowed with GROUP BY: such an update selects without locking."""
    lonely, busy = Article.objects.create(title="lonely"), Article.objects.create(title="busy")
    Comment.objects.create(article=busy)
    with capture_events() as events:
        assert Article.objects.annotate(n=Count("comments")).filter(n=0).update(hits=5) == 1
    assert events.assert_one(op="updated")["pk"] == str(lonely.pk)


def test_bulk_create_publishes_created_events_with_data() -> None:
    with capture_events() as events:
        created = seed_broadcast = Product.objects.bulk_create(
            [Product(name=f"B{i}", sku=f"B{i}", price="3.5", cost_price="1") for i in range(3)]
        )
    assert len(events) == 3
    assert {e["pk"] for e in events} == {str(p.pk) for p in seed_broadcast}
    assert all(e["op"] == "created" and e["data"]["price"] == "3.50" for e in events)
    assert all("cost_price" not in e["data"] for e in events)
    # The instances now know their saved values: a later save reports only real changes.
    with capture_events() as later:
        created[0].stock = 8
        created[0].save()
    assert later.assert_one(op="updated")["changed"] == ["stock"]


def test_bulk_update_publishes_only_rows_that_changed() -> None:
    products = list(Product.objects.filter(pk__in=[p.pk for p in seed(3)]))
    products[0].stock = 100
    products[1].price = Decimal("1.0")  # equal once normalized
    with capture_events() as events:
        Product.objects.bulk_update(products, ["stock", "price"])
    event = events.assert_one()
    assert (event["pk"], event["changed"], event["data"]["stock"]) == (
        str(products[0].pk),
        ["stock"],
        100,
    )


def test_queryset_delete_publishes_deleted_events() -> None:
    products = seed(3)
    with capture_events() as events:
        Product.objects.filter(stock__gte=1).delete()
    assert sorted(e["pk"] for e in events) == sorted(str(p.pk) for p in products[1:])
    assert all(e["op"] == "deleted" and "cost_price" not in e["data"] for e in events)


def test_publish_changes_reloads_rows_after_raw_sql() -> None:
    product = seed(1)[0]
    table = Product._meta.db_table
    with capture_events() as events, transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(f"UPDATE {table} SET stock = 77 WHERE id = %s", [product.pk])
        broadcast_app.publish_changes(Product, [product.pk], changed=["stock"])
        assert events == []
    event = events.assert_one(pk=product.pk, op="updated")
    assert (event["changed"], event["data"]["stock"]) == (["stock"], 77)


def test_publish_changes_defaults_and_deleted() -> None:
    product = seed(1)[0]
    with capture_events() as events:
        broadcast_app.publish_changes("testapp.product", [product.pk])
        broadcast_app.publish_changes(Product, ["123456"], op="deleted")
    assert events[0]["changed"] == ["name", "sku", "price", "stock"]
    assert (events[1]["op"], events[1]["data"]) == ("deleted", {"id": "123456"})
    with pytest.raises(ValueError, match="op must be"):
        broadcast_app.publish_changes(Product, [1], op="moved")  # type: ignore[arg-type]


@override_settings(BROADCAST_QUEUE_SIZE=100)
@pytest.mark.parametrize(
    "write",
    [lambda: Product.objects.update(stock=F("stock") + 1), lambda: Product.objects.all().delete()],
    ids=["update", "delete"],
)
@pytest.mark.slow
def test_large_bulk_write_publishes_every_row_through_a_small_queue(
    write: Callable[[], object],
) -> None:
    """5,000 rows through a queue of 100: bulk publication waits for room, drops nothing."""
    rows = 5000
    seed(rows)
    dropped, published = stats.get("dropped"), stats.get("published")
    write()
    assert publisher.flush(30)
    assert stats.get("dropped") == dropped
    assert stats.get("published") - published == rows


class ReadsFromAReplica:
    """A router that sends reads of products to a replica (an alias that does not
    exist here, so any read that goes there fails) and writes to ``default``."""

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return "replica" if model is Product else None

    def db_for_write(self, model: Any, **hints: Any) -> str:
        return "default"


def test_bulk_writes_lock_and_read_back_on_the_database_they_write_to() -> None:
    with override_settings(BROADCAST_ENABLED=False):
        rows = Product.objects.bulk_create(
            [Product(name="r", sku=f"RT-{i}", price=Decimal("1"), stock=0) for i in range(3)]
        )
    with override_settings(DATABASE_ROUTERS=[ReadsFromAReplica()]), capture_events() as events:
        # A replica may lag: the rows an operation touched are read where it wrote them.
        Product.objects.filter(sku__startswith="RT-").update(stock=1)
        rows[0].stock = 2
        Product.objects.bulk_update(rows[:1], ["stock"])
        Product.objects.bulk_create([Product(name="r", sku="RT-new", price=1, stock=5)])
        broadcast_app.publish_changes(Product, [rows[1].pk], changed=["stock"])
        Product.objects.filter(sku="RT-2").delete()
    got = [(e["op"], e["data"]["sku"], e["data"]["stock"]) for e in events]
    assert got == [
        ("updated", "RT-0", 1), ("updated", "RT-1", 1), ("updated", "RT-2", 1),
        ("updated", "RT-0", 2), ("created", "RT-new", 5), ("updated", "RT-1", 1),
        ("deleted", "RT-2", 1),
    ]  # fmt: skip

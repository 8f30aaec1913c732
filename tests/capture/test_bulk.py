"""Bulk writes broadcast: update(), bulk_create(), bulk_update(), delete(), publish_changes()."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.models import Count, F, Value
from django.db.models.functions import Lower
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

import broadcast_app
from broadcast_app import django_compat
from broadcast_app.capture import bulk
from broadcast_app.capture.registry import get_config
from broadcast_app.events.change import field_values, to_json_data
from broadcast_app.instance import cache
from broadcast_app.publish import publisher
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


# -- updates by pk and bulk_create(): no query of ours on the write path ---------------


def _sql(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries]


def _selects_before_updating(queries: CaptureQueriesContext) -> bool:
    sql = _sql(queries)
    # (On PostgreSQL the pre-read is a server-side cursor: DECLARE ... FOR SELECT.)
    selects = [i for i, text in enumerate(sql) if "SELECT" in text.split(" WHERE ")[0]]
    updates = [i for i, text in enumerate(sql) if text.startswith("UPDATE")]
    return bool(selects and updates) and selects[0] < updates[0]


def test_an_update_by_pk_runs_djangos_own_queries_only() -> None:
    """Its filter names the rows: nothing is selected before it, and its SQL is the one
    Django's own update() runs."""
    products = seed(3)
    pks = [products[0].pk, products[1].pk]
    unwrapped = bulk._original["update"]
    with transaction.atomic():
        with CaptureQueriesContext(connection) as djangos:
            unwrapped(Product.objects.filter(pk__in=pks), stock=7)
        transaction.set_rollback(True)
    with capture_events() as events, transaction.atomic():
        with CaptureQueriesContext(connection) as ours:
            assert Product.objects.filter(pk__in=pks).update(stock=7) == 2
    assert _sql(ours) == _sql(djangos)
    assert len(ours) == 1 and _sql(ours)[0].startswith("UPDATE")
    # Read back at commit: complete data; every field set counts as changed (old values
    # not read), and no old value goes out, not even to instances (no hidden tail).
    assert sorted(e["pk"] for e in events) == sorted(str(pk) for pk in pks)
    for event in events:
        assert (event["op"], event["changed"], event["data"]["stock"]) == ("updated", ["stock"], 7)
        assert event["data"]["sku"] in ("S0", "S1") and "unknown" not in event


def test_an_update_by_pk_of_a_row_that_is_not_there_publishes_nothing_for_it() -> None:
    product = seed(1)[0]
    with capture_events() as events:
        assert Product.objects.filter(pk__in=[product.pk, 10**9]).update(stock=5) == 1
        assert Product.objects.filter(pk=10**9).update(stock=5) == 0
        assert Product.objects.filter(pk__in=[]).update(stock=5) == 0
    assert events.assert_one()["pk"] == str(product.pk)


def test_an_update_by_pk_of_a_model_sending_previous_reads_the_old_values() -> None:
    """Article asks for ``previous``: the old values are selected first, as for any filter."""
    article = Article.objects.create(title="old", hits=1)
    with capture_events() as events, CaptureQueriesContext(connection) as queries:
        assert Article.objects.filter(pk=article.pk).update(hits=1, title="new") == 1
    assert _selects_before_updating(queries), _sql(queries)
    event = events.assert_one()
    assert (event["changed"], event["previous"]) == (["title"], {"title": "old"})


def test_an_update_by_pk_on_the_public_path_selects_first(monkeypatch: Any) -> None:
    """Where Django's query tree is not read (django_compat.QUERYSET_INTERNALS off), the
    rows are selected and compared, as for any filter: a row unchanged publishes nothing."""
    monkeypatch.setattr(django_compat, "QUERYSET_INTERNALS", False)
    products = seed(2)
    with capture_events() as events, CaptureQueriesContext(connection) as queries:
        Product.objects.filter(pk__in=[p.pk for p in products]).update(stock=1)
    assert _selects_before_updating(queries), _sql(queries)
    assert events.assert_one()["pk"] == str(products[0].pk)  # products[1] had stock 1


def test_a_cache_entry_follows_an_update_by_pk() -> None:
    product = seed(1)[0]
    assert (cache.get(Product, product.pk) or {})["stock"] == 0
    with capture_events() as events:
        Product.objects.filter(pk=product.pk).update(stock=6, name="six")
    event = events.assert_one()
    cache.apply_event({**event, "id": "1-0"})
    entry = cache.fetch(Product, product.pk)
    assert entry.hit and entry.data == to_json_data(
        field_values(get_config(Product), Product.objects.get(pk=product.pk))
    )


def test_bulk_create_publishes_from_the_objects_without_reading_them_back() -> None:
    """Autocommit: the rows publish at once, from the objects (pks returned by the
    database), so the queries are Django's INSERTs alone."""
    # (SQLite, PostgreSQL and MariaDB from 10.5 return them: the suite's databases.)
    assert connection.features.can_return_rows_from_bulk_insert
    objs = [Product(name=f"N{i}", sku=f"N{i}", price="2.5", stock=i) for i in range(3)]
    with capture_events() as events, CaptureQueriesContext(connection) as queries:
        created = Product.objects.bulk_create(objs, batch_size=2)
    assert not any(sql.startswith("SELECT") for sql in _sql(queries)), _sql(queries)
    config = get_config(Product)
    stored = {str(p.pk): to_json_data(field_values(config, p)) for p in Product.objects.all()}
    assert [e["pk"] for e in events] == [str(p.pk) for p in created]
    for event in events:
        assert event["op"] == "created" and "unknown" not in event
        assert to_json_data(event["data"]) == stored[event["pk"]]


def test_bulk_create_of_a_model_with_many_to_many_fields_queries_nothing_more() -> None:
    with capture_events() as events, CaptureQueriesContext(connection) as queries:
        Article.objects.bulk_create([Article(title="a"), Article(title="b")])
    assert not any(sql.startswith("SELECT") for sql in _sql(queries)), _sql(queries)
    assert [(e["data"]["title"], e["data"]["tags"]) for e in events] == [("a", []), ("b", [])]


def test_bulk_create_reads_back_a_value_the_database_computed() -> None:
    """An expression is computed by the database: that row (only) is read back."""
    objs = [
        Product(name="plain", sku="E1", price="1", stock=1),
        Product(name=Lower(Value("LOUD")), sku="E2", price="1", stock=2),
    ]
    with capture_events() as events:
        Product.objects.bulk_create(objs)
    assert sorted(e["data"]["name"] for e in events) == ["loud", "plain"]


def test_bulk_create_then_update_in_a_transaction_is_one_created_event() -> None:
    with capture_events() as events, transaction.atomic():
        (product,) = Product.objects.bulk_create([Product(name="x", sku="T1", price="1")])
        Product.objects.filter(pk=product.pk).update(stock=4)
    event = events.assert_one()
    assert (event["op"], event["data"]["stock"]) == ("created", 4)


def test_bulk_create_of_a_model_with_a_serializer_hook_reads_the_rows_back(
    reregister: Any,
) -> None:
    """The hook may read relations: it runs on the rows read back at commit, not per
    object inside bulk_create()."""
    seen: list[str] = []

    def serializer(product: Product) -> dict[str, Any]:
        seen.append(product.name)
        return {"id": product.pk, "name": product.name.upper()}

    reregister(exclude=["cost_price"], serializer=serializer)
    with capture_events() as events, transaction.atomic():
        Product.objects.bulk_create([Product(name="h", sku="H1", price="1")])
        assert seen == []  # nothing serialized inside the write
    assert events.assert_one(op="created")["data"] == {
        "id": Product.objects.get().pk,
        "name": "H",
    }

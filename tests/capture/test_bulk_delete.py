"""``QuerySet.delete()`` of registered models: one ``deleted`` event per row, whether
Django's collector takes every row at once (the default) or a chunk at a time
(``BROADCAST_DELETE_CHUNK_SIZE``).

Product excludes ``cost_price``; Article (testapp) excludes ``secret``; Comment
(testapp) cascades from Article and from itself, and is set null by its ``reply_to``.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.db import transaction
from django.db.models import Count, Manager, QuerySet
from django.template import Context, Template
from django.test import override_settings

from broadcast_app.capture import bulk
from broadcast_app.capture.registry import get_config
from broadcast_app.events.change import field_values, to_json_data
from broadcast_app.events.socket_ids import from_socket
from broadcast_app.publish import publisher
from broadcast_app.testing import capture_events
from tests.testapp.models import Article, Comment, Product, Tag

pytestmark = pytest.mark.django_db(transaction=True)


def seed(n: int, prefix: str = "P") -> list[Product]:
    with override_settings(BROADCAST_ENABLED=False):
        return Product.objects.bulk_create(
            (
                Product(
                    name=f"{prefix}{i}",
                    sku=f"{prefix}{i}",
                    price=Decimal("1.50"),
                    stock=i,
                    cost_price=Decimal("0.75"),
                )
                for i in range(n)
            ),
            batch_size=2000,
        )


def seed_articles(prefix: str) -> None:
    """Two articles with two comments each, one a child of the other."""
    with override_settings(BROADCAST_ENABLED=False):
        for i in range(2):
            article = Article.objects.create(title=f"{prefix}{i}", secret="s")
            top = Comment.objects.create(article=article, body="top")
            Comment.objects.create(article=article, parent=top, body="child")


@pytest.mark.parametrize("chunk", [None, 1000])
def test_filtered_delete_publishes_each_row_with_its_last_state(chunk: int | None) -> None:
    products = seed(2500)  # more than one chunk
    doomed = [p for p in Product.objects.order_by("pk") if p.stock >= 1000]
    config = get_config(Product)
    expected = {str(p.pk): to_json_data(field_values(config, p)) for p in doomed}
    with capture_events() as events, override_settings(BROADCAST_DELETE_CHUNK_SIZE=chunk):
        result = Product.objects.filter(stock__gte=1000).delete()
    assert result == (1500, {"testapp.Product": 1500})
    assert len(events) == 1500
    assert {e["pk"]: e["data"] for e in events} == expected
    assert all(e["op"] == "deleted" and e["changed"] == [] for e in events)
    assert all("cost_price" not in e["data"] for e in events)
    assert Product.objects.count() == len(products) - 1500


def test_bulk_deleted_data_has_the_shape_of_a_single_delete() -> None:
    first, second = seed(2)
    with capture_events() as events:
        Product.objects.get(pk=first.pk).delete()  # Model.delete(): no wrapper
        Product.objects.filter(pk=second.pk).delete()
    single, chunked = events
    assert (single["pk"], chunked["pk"]) == (str(first.pk), str(second.pk))
    assert single["data"].keys() == chunked["data"].keys()
    assert {k: v for k, v in chunked.items() if k not in ("pk", "data", "ts")} == {
        k: v for k, v in single.items() if k not in ("pk", "data", "ts")
    }


def test_data_pickle_cannot_copy_is_published_all_the_same(reregister: Any) -> None:
    class Label(str):  # a local class: pickle cannot find it by name
        pass

    reregister(exclude=["cost_price"], serializer=lambda p: {"id": p.pk, "name": Label(p.name)})
    seed(2)
    with capture_events() as events:
        Product.objects.all().delete()
    assert sorted(e["data"]["name"] for e in events) == ["P0", "P1"]


def test_delete_returns_what_django_returns() -> None:
    deletes: list[Callable[[], tuple[int, dict[str, int]]]] = [
        lambda: Article.objects.filter(title__startswith="r").delete(),
        lambda: Comment.objects.filter(body="top").delete(),
        lambda: Article.objects.filter(pk=-1).delete(),
        lambda: Comment.objects.none().delete(),
    ]
    for delete in deletes:
        seed_articles("r")
        with override_settings(BROADCAST_ENABLED=False):  # Django's own delete()
            expected = delete()
        Article.objects.all().delete()
        seed_articles("r")
        assert delete() == expected
        Article.objects.all().delete()
    assert deletes[0]() == (0, {})


def test_rolled_back_delete_publishes_nothing() -> None:
    seed(3)
    with capture_events() as events:
        with pytest.raises(RuntimeError), transaction.atomic():
            Product.objects.all().delete()
            raise RuntimeError
        with transaction.atomic():
            kept = Product.objects.create(name="kept", sku="kept", price="2")
            with pytest.raises(RuntimeError), transaction.atomic():
                Product.objects.all().delete()
                raise RuntimeError
    assert Product.objects.count() == 4
    assert [(e["op"], e["pk"]) for e in events] == [("created", str(kept.pk))]


def test_rows_created_then_deleted_in_one_transaction_publish_nothing() -> None:
    with capture_events() as events, transaction.atomic():
        Product.objects.bulk_create([Product(name="T", sku=f"T{i}", price="1") for i in range(3)])
        Product.objects.filter(sku__startswith="T").delete()
    events.assert_none()


def test_update_then_delete_in_one_transaction_publishes_the_delete_with_the_last_state() -> None:
    (product,) = seed(1)
    with capture_events() as events, transaction.atomic():
        Product.objects.filter(pk=product.pk).update(stock=42)
        Product.objects.filter(pk=product.pk).delete()
    event = events.assert_one()
    assert (event["op"], event["data"]["stock"]) == ("deleted", 42)


def test_cascade_to_another_registered_model_publishes_its_deletes() -> None:
    seed_articles("c")
    comments = {str(pk) for pk in Comment.objects.values_list("pk", flat=True)}
    with capture_events() as events:
        result = Article.objects.filter(title__startswith="c").delete()
    assert result == (6, {"testapp.Article": 2, "testapp.Comment": 4})
    articles = events.matching(model="testapp.article")
    assert len(articles) == 2
    assert all(e["op"] == "deleted" and "secret" not in e["data"] for e in articles)
    assert {e["pk"] for e in events.matching(model="testapp.comment", op="deleted")} == comments
    assert len(events) == 6


def test_cascade_within_the_model_and_set_null_broadcast() -> None:
    article = Article.objects.create(title="t")
    top = Comment.objects.create(article=article, body="top")
    child = Comment.objects.create(article=article, parent=top, body="child")
    reply = Comment.objects.create(article=article, reply_to=top, body="reply")
    with capture_events() as events:
        assert Comment.objects.filter(body="top").delete() == (2, {"testapp.Comment": 2})
    deleted = events.matching(op="deleted")
    assert sorted(e["pk"] for e in deleted) == sorted([str(top.pk), str(child.pk)])
    # on_delete=SET_NULL runs QuerySet.update(): the reply's change is broadcast too.
    updated = events.assert_one(op="updated", pk=reply.pk)
    assert (updated["changed"], updated["data"]["reply_to"]) == (["reply_to"], None)


def test_deletes_carry_the_socket_that_made_them() -> None:
    seed(2)
    with capture_events() as events, from_socket("socket-1", to_others=True):
        Product.objects.all().delete()
    assert len(events) == 2
    assert all((e["socket_id"], e["to_others"]) == ("socket-1", True) for e in events)


def test_deletes_django_refuses_still_raise_and_unregistered_models_are_untouched() -> None:
    seed(2)
    with pytest.raises(TypeError, match="limit"):
        Product.objects.all()[:1].delete()
    with pytest.raises(TypeError, match="values"):
        Product.objects.values("pk").delete()
    tag = Tag.objects.create(name="t")
    tag.articles.add(Article.objects.create(title="a"))
    with capture_events() as events:
        assert Tag.objects.all().delete() == (
            2,
            {"testapp.Article_tags": 1, "testapp.Tag": 1},
        )
    events.assert_none(model="testapp.tag")


def test_delete_filtered_on_an_aggregate_works() -> None:
    """FOR UPDATE is not allowed with GROUP BY: such a delete selects without locking."""
    seed_articles("g")
    Article.objects.create(title="lonely")
    with capture_events() as events:
        result = Article.objects.annotate(n=Count("comments")).filter(n=0).delete()
    assert result == (1, {"testapp.Article": 1})
    assert events.assert_one(op="deleted")["data"]["title"] == "lonely"


def test_wrapped_delete_stays_out_of_templates_and_managers() -> None:
    assert QuerySet.delete.alters_data and QuerySet.delete.queryset_only  # type: ignore[attr-defined]
    assert QuerySet.update.alters_data  # type: ignore[attr-defined]
    assert not hasattr(Manager.from_queryset(QuerySet), "delete")
    seed(2)
    Template("{{ products.delete }}").render(Context({"products": Product.objects.all()}))
    assert Product.objects.count() == 2


@override_settings(BROADCAST_DELETE_CHUNK_SIZE=1000)
def _delete_peak(rows: int, *, wrapped: bool = True) -> tuple[int, int]:
    """Peak and retained bytes traced while deleting ``rows`` products, before commit,
    a chunk of 1,000 at a time."""
    seed(rows, prefix=f"m{rows}-")
    delete = Product.objects.all().delete
    if not wrapped:
        delete = bulk._original["delete"].__get__(Product.objects.all())
    with transaction.atomic():
        tracemalloc.start()
        try:
            assert delete()[0] == rows
            retained, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    # The next measurement must not trace this one's events on their way to Redis.
    assert publisher.flush(30)
    return peak, retained


@pytest.mark.slow
def test_delete_memory_is_bounded_by_the_chunk_not_the_rows() -> None:
    """Until commit each row keeps its pk and packed data; instances live per chunk."""
    peak_small, retained_small = _delete_peak(4000)
    peak_large, retained_large = _delete_peak(8000)
    unchunked, _ = _delete_peak(4000, wrapped=False)  # what Django's delete() holds
    per_row_unchunked = unchunked / 4000
    per_row_growth = (peak_large - peak_small) / 4000
    retained_per_row = (retained_large - retained_small) / 4000
    report: dict[str, Any] = {
        "unchunked per row": per_row_unchunked,
        "peak growth per row": per_row_growth,
        "retained per row": retained_per_row,
    }
    assert per_row_growth < per_row_unchunked / 5, report
    assert retained_per_row < 300, report
    assert peak_large < unchunked, report

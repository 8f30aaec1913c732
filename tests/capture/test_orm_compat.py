"""Capture that does not surprise: no query on the save path, nothing of ours inside
users' instances, Django's own update() semantics, and QuerySet wrapping that can be
turned off (``BROADCAST_WRAP_QUERYSETS``)."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import FieldError
from django.db import connection, transaction
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

import broadcast_app
from broadcast_app import checks
from broadcast_app.testing import capture_events
from tests.testapp.models import Article, Comment, Product, Tag

pytestmark = pytest.mark.django_db(transaction=True)


def product(**fields: object) -> Product:
    values = {"name": "Anvil", "sku": "AN-1", "price": Decimal("1.00"), "stock": 1, **fields}
    return Product.objects.create(**values)


def test_pickled_instance_carries_no_broadcast_key() -> None:
    loaded = Product.objects.get(pk=product().pk)
    assert not [k for k in vars(loaded) if "broadcast" in k]
    assert b"broadcast" not in pickle.dumps(loaded)


def test_instance_loaded_from_a_cache_still_broadcasts_its_save() -> None:
    cached = pickle.dumps(Product.objects.get(pk=product().pk))
    restored = pickle.loads(cached)
    restored.stock = 7
    with capture_events() as events:
        restored.save()
    event = events.assert_one(op="updated", pk=restored.pk)
    assert event["data"]["stock"] == 7
    # No snapshot came with the pickle: what changed is unknown, so every field is listed.
    assert "stock" in event["changed"]


def test_save_of_a_deferred_instance_queries_nothing_more(
    django_assert_num_queries: Any,
) -> None:
    pk = product().pk
    obj = Product.objects.only("stock").get(pk=pk)
    obj.stock = 5
    with capture_events() as events:
        with django_assert_num_queries(1):
            obj.save(update_fields=["stock"])  # autocommit: published at once
    # The loaded fields, compared with their values as loaded; the rest named unknown.
    event = events.assert_one(op="updated", pk=pk, changed=["stock"])
    assert event["data"] == {"id": pk, "stock": 5}
    assert event["unknown"] == ["name", "sku", "price", "updated_at"]
    obj = Product.objects.defer("name").get(pk=pk)
    obj.price = Decimal("2.50")
    with capture_events() as events:
        # In a transaction: nothing read at commit either (as many queries as Django's).
        with CaptureQueriesContext(connection) as queries, transaction.atomic():
            obj.save()
    with override_settings(BROADCAST_ENABLED=False):
        with CaptureQueriesContext(connection) as django_alone, transaction.atomic():
            obj.save()
    assert len(queries) == len(django_alone), [q["sql"] for q in queries]
    event = events.assert_one(op="updated", pk=pk, changed=["price"])
    assert (event["data"]["price"], event["unknown"]) == ("2.50", ["name"])
    assert "name" not in event["data"]


def test_save_and_delete_with_unprefetched_m2m_query_nothing_more(
    django_assert_num_queries: Any,
) -> None:
    tag = Tag.objects.create(name="t")
    article = Article.objects.create(title="a")
    article.tags.add(tag)
    article = Article.objects.get(pk=article.pk)
    article.title = "c"
    with capture_events() as events:
        with django_assert_num_queries(1):
            article.save()
    event = events.assert_one(op="updated", pk=article.pk, changed=["title"])
    assert (event["data"]["title"], event["unknown"]) == ("c", ["tags"])
    assert "tags" not in event["data"]
    # Prefetched: nothing unknown.
    article = Article.objects.prefetch_related("tags").get(pk=article.pk)
    article.title = "d"
    with capture_events() as events:
        with django_assert_num_queries(1):
            article.save()
    event = events.assert_one(op="updated", pk=article.pk, changed=["title"])
    assert event["data"]["tags"] == [tag.pk] and "unknown" not in event
    pk = article.pk
    article = Article.objects.get(pk=pk)
    with capture_events() as events, transaction.atomic():
        with CaptureQueriesContext(connection) as queries:
            article.delete()
        assert not [q for q in queries if "testapp_tag" in q["sql"]]
    # Not prefetched: the deleted row's data leaves the m2m field out.
    assert "tags" not in events.assert_one(op="deleted", pk=pk)["data"]


def test_an_incomplete_save_folds_into_a_complete_change_of_its_transaction() -> None:
    pk = product().pk
    with capture_events() as events, transaction.atomic():
        whole = Product.objects.get(pk=pk)
        whole.name = "Hammer"
        whole.save()
        deferred = Product.objects.only("stock").get(pk=pk)
        deferred.stock = 9
        deferred.save()
    event = events.assert_one(op="updated", pk=pk)
    assert (event["data"]["name"], event["data"]["stock"]) == ("Hammer", 9)
    assert set(event["changed"]) == {"name", "stock"} and "unknown" not in event


def test_an_incomplete_save_is_read_back_where_the_whole_row_is_needed(
    reregister: Any,
) -> None:
    # A serializer hook may read any field: the row is read back at commit, as in outbox
    # delivery (where the relay reads it).
    reregister(exclude=["cost_price"], serializer=lambda p: {"id": p.pk, "name": p.name})
    pk = product().pk
    obj = Product.objects.only("stock").get(pk=pk)
    obj.stock = 3
    with capture_events() as events:
        obj.save()
    event = events.assert_one(op="updated", pk=pk)
    assert event["data"] == {"id": pk, "name": "Anvil"} and "unknown" not in event


def test_create_of_a_model_with_m2m_fields_costs_only_its_insert(
    django_assert_num_queries: Any,
) -> None:
    # A row the save inserted has no many-to-many rows: they are known empty, not read.
    with capture_events() as events:
        with django_assert_num_queries(1):
            alone = Article.objects.create(title="alone")  # autocommit: published at once
        with CaptureQueriesContext(connection) as queries, transaction.atomic():
            committed = Article.objects.create(title="committed")  # read at commit, if
    with override_settings(BROADCAST_ENABLED=False):
        with CaptureQueriesContext(connection) as django_alone, transaction.atomic():
            Article.objects.create(title="django alone")
    assert len(queries) == len(django_alone), [q["sql"] for q in queries]  # BEGIN, COMMIT
    assert events.assert_one(op="created", pk=alone.pk)["data"]["tags"] == []
    assert events.assert_one(op="created", pk=committed.pk)["data"]["title"] == "committed"
    tag = Tag.objects.create(name="t")
    with capture_events() as events, transaction.atomic():
        tagged = Article.objects.create(title="tagged")
        tagged.tags.add(tag)
    # The add() is read back at commit and folds into the created event.
    assert events.assert_one(op="created", pk=tagged.pk)["data"]["tags"] == [tag.pk]


def test_update_with_annotations_runs_as_django_runs_it() -> None:
    obj = product()
    with capture_events() as events:
        Product.objects.annotate(label=Concat(F("name"), Value("!"))).update(name=F("label"))
    assert events.assert_one(op="updated", pk=obj.pk)["data"]["name"] == "Anvil!"


def test_a_refused_update_leaves_the_callers_transaction_usable() -> None:
    Comment.objects.create(article=Article.objects.create(title="a"))
    with transaction.atomic():
        with pytest.raises(FieldError, match="Joined field references are not permitted"):
            Comment.objects.annotate(t=F("article__title")).update(body=F("t"))
        assert Comment.objects.count() == 1  # no TransactionManagementError


def test_wrapping_off_leaves_bulk_writes_to_publish_changes() -> None:
    obj = product()
    with override_settings(BROADCAST_WRAP_QUERYSETS=False):
        with capture_events() as events:
            Product.objects.filter(pk=obj.pk).update(stock=3)
        events.assert_none()
        with capture_events() as events:
            broadcast_app.publish_changes(Product, [obj.pk], changed=["stock"])
        assert events.assert_one(op="updated", pk=obj.pk)["data"]["stock"] == 3
        assert [m.id for m in checks.check_wrap_querysets(None)] == ["broadcast_app.W020"]
        assert all(m.hint for m in checks.check_wrap_querysets(None))
    assert checks.check_wrap_querysets(None) == []


def test_a_small_delete_costs_the_queries_of_djangos_own() -> None:
    from broadcast_app.capture import bulk

    def queries(delete: Callable[[], object]) -> list[str]:
        with CaptureQueriesContext(connection) as captured:
            delete()
        return [q["sql"] for q in captured if "SAVEPOINT" not in q["sql"]]

    def seed() -> int:
        article = Article.objects.create(title="a")
        Comment.objects.create(article=article)
        return article.pk

    first, second = seed(), seed()
    with transaction.atomic():
        ours = queries(lambda: Article.objects.filter(pk=first).delete())
        # Django's own delete(), with our receivers connected (no fast delete either way).
        django = queries(lambda: bulk._original["delete"](Article.objects.filter(pk=second)))
    assert len(ours) == len(django), (ours, django)

"""Contracts of the private Django internals broadcast_app uses (docs/architecture.md,
"Private Django APIs we use"): each test fails with a message naming the use when the
installed Django no longer behaves as relied on. Run on every matrix combination."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.models import Count
from django.db.models.deletion import Collector
from django.test import override_settings

from broadcast_app import django_compat
from broadcast_app.django_compat import hook_pending, keep_last, prefetched
from broadcast_app.testing import capture_events
from project.demo.models import Product
from tests.testapp.models import Article, Tag

pytestmark = pytest.mark.django_db(transaction=True)


def test_run_on_commit_holds_savepoint_ids_callable_robust_tuples() -> None:
    def hook() -> None:
        pass

    with transaction.atomic():
        transaction.on_commit(hook, robust=True)
        entries: list[Any] = list(connection.run_on_commit)
        assert entries and len(entries[-1]) == 3 and entries[-1][1] is hook, (
            "connection.run_on_commit no longer holds (sids, callable, robust) tuples: "
            "buffer.py and outbox.py's keep_last()/registered_in() rely on it"
        )
        assert entries[-1][2] is True


def test_queryset_private_attributes_used_by_bulk() -> None:
    qs = Product.objects.all()
    for name in ("_for_write", "_fields", "_result_cache"):
        assert hasattr(qs, name), f"QuerySet.{name} is gone: bulk.py uses it"
    assert Product.objects.values("pk")._fields == ("pk",), "QuerySet._fields changed"
    query = Product.objects.annotate(n=Count("pk")).query
    for name in ("is_sliced", "combinator", "distinct_fields", "group_by"):
        assert hasattr(query, name), f"Query.{name} is gone: bulk.py uses it"
    assert Product.objects.all()[:1].query.is_sliced is True


def test_collector_takes_an_origin() -> None:
    qs = Product.objects.none()
    collector = Collector(using="default", origin=qs)
    assert collector.origin is qs, "Collector(origin=) changed: bulk.py's delete passes it"


def test_prefetched_objects_cache_holds_prefetched_relations() -> None:
    tag = Tag.objects.create(name="t")
    article = Article.objects.create(title="a")
    article.tags.add(tag)
    loaded = Article.objects.prefetch_related("tags").get(pk=article.pk)
    assert [t.pk for t in prefetched(loaded)["tags"]] == [tag.pk], (
        "_prefetched_objects_cache changed: django_compat.prefetched() must follow"
    )


def test_prefetched_falls_back_to_nothing_prefetched() -> None:
    # Without the private cache, nothing counts as prefetched: the save is read back
    # at commit instead (correct, one read more).
    article = Article.objects.create(title="a")
    assert prefetched(article) == {}
    article.__dict__["_prefetched_objects_cache"] = "not a dict"
    assert prefetched(article) == {}


def test_keep_last_moves_a_hook_after_every_other() -> None:
    calls: list[str] = []

    def first() -> None:
        calls.append("first")

    def last() -> None:
        calls.append("last")

    with transaction.atomic():
        assert keep_last(connection, last)
        transaction.on_commit(first)
        assert hook_pending(connection, last)
        assert keep_last(connection, last)
    assert calls == ["first", "last"]
    assert not hook_pending(connection, last)


@pytest.fixture
def no_hook_tuples(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a Django whose commit hooks cannot be read: the public fallbacks apply."""
    monkeypatch.setattr(django_compat, "HOOK_TUPLES", False)


@pytest.mark.usefixtures("no_hook_tuples")
def test_fallback_publishes_each_committed_change_and_honours_savepoints() -> None:
    with capture_events() as events:
        with transaction.atomic():
            kept = Product.objects.create(name="a", sku="A", price=Decimal("1"), stock=1)
            try:
                with transaction.atomic():
                    Product.objects.create(name="b", sku="B", price=Decimal("1"), stock=1)
                    raise RuntimeError
            except RuntimeError:
                pass
            assert events == []  # not before commit
    assert [(e["op"], e["pk"]) for e in events] == [("created", str(kept.pk))]


@pytest.mark.usefixtures("no_hook_tuples")
def test_fallback_outbox_records_each_item_with_its_own_hook() -> None:
    with override_settings(BROADCAST_DELIVERY="outbox"), capture_events() as events:
        with transaction.atomic():
            product = Product.objects.create(name="a", sku="A", price=Decimal("1"), stock=1)
    events.assert_one(op="created", pk=product.pk)

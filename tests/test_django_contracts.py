"""Contracts of the private Django internals broadcast_app uses (docs/architecture.md,
"Private Django APIs we use"): each test fails with a message naming the use when the
installed Django no longer behaves as relied on. Run on every matrix combination."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.db import NotSupportedError, connection, transaction
from django.db.models import Count, F, Q
from django.db.models.functions import Length
from django.db.models.signals import post_delete
from django.test import override_settings

from broadcast_app import django_compat
from broadcast_app.django_compat import (
    NotAnded,
    admin_unquote,
    deletes_in_chunks,
    filter_lookups,
    hook_pending,
    keep_last,
    known_pks,
    loaded_values,
    may_lock,
    plain_attribute,
    prefetched,
    write_db,
)
from broadcast_app.events import model_configs
from broadcast_app.testing import capture_events
from tests.capture.test_bulk import ReadsFromAReplica
from tests.testapp.models import Article, ArticleProxy, Comment, Product, Restaurant, Tag

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


def test_select_for_update_querysets_go_to_the_write_database() -> None:
    qs = Product.objects.all()
    with override_settings(DATABASE_ROUTERS=[ReadsFromAReplica()]):
        assert qs.db == "replica"
        assert write_db(qs) == "default", (
            "select_for_update() no longer routes to the write database: "
            "django_compat.write_db() (bulk writes' reads) must follow"
        )
        assert write_db(qs.using("other")) == "other"


def test_filter_is_refused_where_update_is() -> None:
    # bulk._narrowable(): an update of a queryset that filter() refuses goes to Django.
    sliced = Product.objects.all()[:1]
    combined = Product.objects.all().union(Product.objects.all())
    with pytest.raises(TypeError):
        sliced.filter(pk__in=())
    with pytest.raises(NotSupportedError):
        combined.filter(pk__in=())
    with pytest.raises(TypeError, match="Cannot update a query once a slice"):
        sliced.update(stock=1)
    with pytest.raises(NotSupportedError, match=r"update\(\) after union\(\)"):
        combined.update(stock=1)


def test_queryset_internals_read_for_chunked_deletes() -> None:
    plain = Product.objects.filter(stock=1)
    refused = {
        "sliced (Query.is_sliced)": plain[:1],
        "combined (Query.combinator)": plain.union(plain),
        "after distinct(*fields) (Query.distinct_fields)": plain.distinct("name"),
        "after values() (QuerySet._fields)": plain.values("pk"),
    }
    assert deletes_in_chunks(plain), (
        "Query.is_sliced/combinator/distinct_fields, QuerySet._fields or _result_cache or "
        "Collector(origin=) changed: django_compat.deletes_in_chunks() must follow"
    )
    for what, qs in refused.items():
        assert not deletes_in_chunks(qs), f"a delete {what} is no longer told apart"


def test_the_rows_a_filter_names_by_pk_are_read_off_the_query() -> None:
    named = {
        "pk=": (Product.objects.filter(pk=5), ["5"]),
        "id__in=": (Product.objects.filter(id__in=[3, 1, 3, None]), ["3", "1"]),
        "a string pk": (Product.objects.filter(pk="7"), ["7"]),
        "through a proxy": (ArticleProxy.objects.filter(pk__in=[2]), ["2"]),
        "of a multi-table child": (Restaurant.objects.filter(pk=4), ["4"]),
        "none()": (Product.objects.none(), []),
    }
    for what, (qs, pks) in named.items():
        assert known_pks(qs) == pks, (
            f"Query.where (a filter by pk: {what}) is no longer read as before: "
            "django_compat.known_pks() must follow"
        )
    not_named = {
        "no filter": Product.objects.all(),
        "another field": Product.objects.filter(stock=1),
        "pk and another field": Product.objects.filter(pk=1, stock=2),
        "exclude()": Product.objects.exclude(pk=1),
        "an OR": Product.objects.filter(Q(pk=1) | Q(pk=2)),
        "a subquery": Product.objects.filter(pk__in=Product.objects.values("pk")),
        "an expression": Product.objects.filter(pk=F("stock")),
        "a range": Product.objects.filter(pk__gt=1),
        "across a relation": Comment.objects.filter(article__pk=1),
    }
    for what, qs in not_named.items():
        assert known_pks(qs) is None, f"a filter with {what} is taken as naming its rows"


def test_group_by_tells_an_aggregate_filter() -> None:
    assert may_lock(Product.objects.filter(stock=1)) is True, "Query.group_by changed"
    grouped = Article.objects.annotate(n=Count("comments")).filter(n=0)
    assert may_lock(grouped) is False, "Query.group_by no longer marks a GROUP BY"


@pytest.fixture(params=["internals", "public"])
def delete_path(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> str:
    """Each test twice: with the QuerySet internals (a chunked delete), and on the public
    paths (as on a Django where they are not as known)."""
    settings.BROADCAST_DELETE_CHUNK_SIZE = 1000
    if request.param == "public":
        monkeypatch.setattr(django_compat, "QUERYSET_INTERNALS", False)
    return str(request.param)


def seed(n: int) -> None:
    with override_settings(BROADCAST_ENABLED=False):
        Product.objects.bulk_create(
            Product(name=f"P{i}", sku=f"S{i}", price=Decimal("1.00"), stock=i) for i in range(n)
        )


def test_delete_receivers_get_the_users_queryset_as_origin(delete_path: str) -> None:
    # Collector(origin=) on the chunked path; Django's own delete() on the public one.
    seed(2)
    origins: list[Any] = []

    def receiver(origin: Any, **kwargs: Any) -> None:
        origins.append(origin)

    qs = Product.objects.filter(stock__gte=0)
    post_delete.connect(receiver, sender=Product)
    try:
        qs.delete()
    finally:
        post_delete.disconnect(receiver, sender=Product)
    assert origins == [qs, qs], f"{delete_path}: origin is not the deleted queryset"


def test_a_deleted_queryset_is_evaluated_afresh(delete_path: str) -> None:
    # QuerySet._result_cache emptied on the chunked path, by Django on the public one.
    seed(2)
    qs = Product.objects.all()
    assert len(qs) == 2
    with capture_events() as events:
        assert qs.delete() == (2, {"testapp.Product": 2})
    assert list(qs) == [], f"{delete_path}: the deleted queryset kept its rows"
    assert sorted(e["data"]["name"] for e in events.matching(op="deleted")) == ["P0", "P1"]


@pytest.mark.usefixtures("delete_path")
def test_deletes_django_refuses_keep_its_messages() -> None:
    seed(1)
    with pytest.raises(TypeError, match="Cannot use 'limit' or 'offset' with delete"):
        Product.objects.all()[:1].delete()
    with pytest.raises(TypeError, match=r"after \.values\(\)"):
        Product.objects.values("pk").delete()
    with pytest.raises(NotSupportedError, match=r"delete\(\) after union\(\)"):
        Product.objects.all().union(Product.objects.all()).delete()
    assert Product.objects.count() == 1


def test_public_path_deletes_and_cascades_publish_as_the_chunked_one(delete_path: str) -> None:
    with override_settings(BROADCAST_ENABLED=False):
        article = Article.objects.create(title="a")
        Comment.objects.create(article=article, body="c")
    with capture_events() as events:
        assert Article.objects.filter(title="a").delete() == (
            2,
            {"testapp.Comment": 1, "testapp.Article": 1},
        )
    got = sorted((e["model"], e["op"]) for e in events)
    assert got == [("testapp.article", "deleted"), ("testapp.comment", "deleted")], delete_path
    assert events.matching(model="testapp.article")[0]["data"]["title"] == "a"


def test_public_path_locks_an_aggregate_filtered_update_through_a_subquery(
    delete_path: str,
) -> None:
    # On PostgreSQL and MariaDB (CI runs both), the public path's FOR UPDATE is taken on
    # the rows of a pk subquery: valid where the user's query has GROUP BY.
    lonely, busy = Article.objects.create(title="lonely"), Article.objects.create(title="busy")
    Comment.objects.create(article=busy)
    with capture_events() as events, transaction.atomic():
        assert Article.objects.annotate(n=Count("comments")).filter(n=0).update(hits=5) == 1
    assert events.assert_one(op="updated", model="testapp.article")["pk"] == str(lonely.pk)


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


def test_loaded_field_values_live_in_the_instance_dict() -> None:
    # django_compat.loaded_values(): loaded fields told from deferred ones by the
    # instance's __dict__ (what Model.get_deferred_fields() itself reads), with no call
    # per field on the load and save paths.
    Product.objects.create(name="a", sku="A", price=Decimal("1"), stock=1)
    loaded = Product.objects.only("stock").get()
    deferred = {f.attname for f in Product._meta.concrete_fields} - loaded_values(loaded).keys()
    assert deferred == loaded.get_deferred_fields(), (
        "a model instance no longer keeps its loaded field values in __dict__ by attname: "
        "django_compat.loaded_values() must follow"
    )
    assert loaded.__dict__["stock"] == 1


def test_django_field_descriptors_are_told_apart() -> None:
    plain = [Product._meta.get_field("name"), Comment._meta.get_field("article")]
    assert all(plain_attribute(f.model, f) for f in plain), (
        "Django's field descriptors (DeferredAttribute, ForeignKeyDeferredAttribute) "
        "changed: django_compat.plain_attribute() must follow, or every field is read "
        "through value_from_object()"
    )


def test_fields_read_through_value_from_object_capture_the_same(
    reregister: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The public path: as on a Django whose descriptors are not known (patched only
    # while registering: reregister's teardown registers the model as it was).
    with monkeypatch.context() as patch:
        patch.setattr(model_configs, "plain_attribute", lambda model, f: False)
        config = reregister(exclude=["cost_price"])
    assert not any(f.direct for f in config.captured_fields)
    product = Product.objects.create(name="a", sku="A", price=Decimal("1.50"), stock=1)
    with capture_events() as events:
        product.stock = 2
        product.save()
    event = events.assert_one(op="updated")
    assert event["changed"] == ["stock"]
    assert (event["data"]["stock"], event["data"]["price"]) == (2, "1.50")


def test_admin_object_ids_are_unquoted_as_the_admin_quotes_them() -> None:
    from django.contrib.admin.utils import quote

    assert admin_unquote(quote("a/b_c:1")) == "a/b_c:1", (
        "django.contrib.admin.utils.unquote() no longer inverts quote(): "
        "django_compat.admin_unquote() must follow"
    )


def test_model_metadata_names_read() -> None:
    # Options and field attributes beyond the documented get_field()/get_fields(), read
    # by registry.py and capture.py.
    opts = Article._meta
    for name in ("pk", "concrete_model", "concrete_fields", "many_to_many", "label_lower"):
        assert hasattr(opts, name), f"Options.{name} is gone: registry.py/capture.py use it"
    assert callable(opts.get_parent_list), "Options.get_parent_list() is gone: registry.py"
    tags = opts.get_field("tags")
    assert tags.remote_field.through._meta.auto_created, "ManyToManyField.remote_field.through"
    assert opts.pk.attname == "id"


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


def test_a_querysets_filter_reads_as_anded_lookups_on_its_own_columns() -> None:
    # live_table and the live changelist follow a queryset's filter (querysets.where_of).
    qs = Product.objects.filter(stock__lt=5).filter(name__icontains="x", price=Decimal(2))
    found = {(f.name if f else None, name, rhs) for f, name, rhs in filter_lookups(qs) or []}
    assert found == {
        ("stock", "lt", 5),
        ("name", "icontains", "x"),
        ("price", "exact", Decimal(2)),
    }, "Query.where no longer holds the filter's Lookup objects on Col(initial alias)"
    assert filter_lookups(Product.objects.all()) == []
    assert filter_lookups(Product.objects.none()) is None, "none() no longer reads as empty"
    computed = Product.objects.annotate(n=Length("name")).filter(n=3)
    assert [f for f, _, _ in filter_lookups(computed) or []] == [None]
    either = Product.objects.filter(Q(stock=1) | Q(stock=2))
    for negated in (Product.objects.exclude(stock=1), either):
        with pytest.raises(NotAnded):
            filter_lookups(negated)

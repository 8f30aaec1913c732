"""Capture through the model classes projects really use: proxies, multi-table
inheritance, custom QuerySet and manager classes, the async ORM; and the read-back of
bulk writes, whose many-to-many values are prefetched."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from django.db import connection, connections, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from broadcast_app.testing import capture_events
from tests.testapp.models import (
    Article,
    ArticleProxy,
    Bar,
    Note,
    NoteQuerySet,
    Restaurant,
    Tag,
)

pytestmark = pytest.mark.django_db(transaction=True)


# -- proxies -----------------------------------------------------------------------


def test_proxy_save_and_delete_publish_as_the_concrete_model() -> None:
    with capture_events() as events:
        proxy = ArticleProxy.objects.create(title="one")
    events.assert_one(model="testapp.article", op="created", pk=proxy.pk)
    with capture_events() as events:
        proxy.title = "two"
        proxy.save()
    event = events.assert_one(model="testapp.article", op="updated", pk=proxy.pk)
    assert (event["changed"], event["data"]["title"]) == (["title"], "two")
    assert "secret" not in event["data"]
    pk = proxy.pk
    with capture_events() as events:
        proxy.delete()
    events.assert_one(model="testapp.article", op="deleted", pk=pk)


def test_proxy_bulk_writes_publish_as_the_concrete_model() -> None:
    with capture_events() as events:
        created = ArticleProxy.objects.bulk_create(
            [ArticleProxy(title="a"), ArticleProxy(title="b")]
        )
    assert len(events.matching(model="testapp.article", op="created")) == 2
    with capture_events() as events:
        assert ArticleProxy.objects.update(hits=7) == 2
    assert {(e["model"], e["data"]["hits"]) for e in events} == {("testapp.article", 7)}
    assert len(events) == 2
    for obj in created:
        obj.title = obj.title.upper()
    with capture_events() as events:
        ArticleProxy.objects.bulk_update(created, ["title"])
    assert sorted(e["data"]["title"] for e in events) == ["A", "B"]
    assert {e["model"] for e in events} == {"testapp.article"}
    with capture_events() as events:
        ArticleProxy.objects.all().delete()
    assert len(events.matching(model="testapp.article", op="deleted")) == 2


class LateProxy(Article):
    """Defined as this module is imported: after the apps' ready() registered Article."""

    class Meta:
        proxy = True
        app_label = "testapp"


def test_proxy_defined_after_registration_publishes_too() -> None:
    with capture_events() as events:
        late = LateProxy.objects.create(title="late")
        late.title = "later"
        late.save()
    assert [(e["model"], e["op"]) for e in events] == [
        ("testapp.article", "created"),
        ("testapp.article", "updated"),
    ]


# -- multi-table inheritance -------------------------------------------------------


def test_child_save_publishes_the_child_and_its_registered_parent() -> None:
    with capture_events() as events:
        restaurant = Restaurant.objects.create(name="Chez", seats=10)
    events.assert_one(model="testapp.restaurant", op="created", pk=restaurant.pk)
    parent = events.assert_one(model="testapp.place", op="created", pk=restaurant.pk)
    assert parent["data"] == {"id": restaurant.pk, "name": "Chez", "city": ""}
    with capture_events() as events:
        restaurant.seats = 12
        restaurant.save()
    # Only the child's own field changed: the parent's row is the same.
    events.assert_one(model="testapp.restaurant", changed=["seats"])
    events.assert_none(model="testapp.place")
    with capture_events() as events:
        restaurant.city = "Lyon"
        restaurant.save()
    events.assert_one(model="testapp.place", changed=["city"])
    events.assert_one(model="testapp.restaurant", changed=["city"])
    pk = restaurant.pk
    with capture_events() as events:
        restaurant.delete()
    events.assert_one(model="testapp.restaurant", op="deleted", pk=pk)
    events.assert_one(model="testapp.place", op="deleted", pk=pk)


def test_unregistered_child_writes_publish_the_registered_parent() -> None:
    with capture_events() as events:
        bar = Bar.objects.create(name="Le Bar")
    assert [(e["model"], e["op"]) for e in events] == [("testapp.place", "created")]
    with capture_events() as events:
        assert Bar.objects.filter(pk=bar.pk).update(name="Le Zinc", happy_hour=True) == 1
    event = events.assert_one(model="testapp.place", op="updated", pk=bar.pk)
    assert (event["changed"], event["data"]["name"]) == (["name"], "Le Zinc")
    assert len(events) == 1
    with capture_events() as events:
        Bar.objects.all().delete()
    assert [(e["model"], e["op"]) for e in events] == [("testapp.place", "deleted")]


def test_child_bulk_update_publishes_parent_and_child_rows() -> None:
    first = Restaurant.objects.create(name="A", seats=1)
    second = Restaurant.objects.create(name="B", seats=2)
    with capture_events() as events:
        assert Restaurant.objects.update(city="Paris") == 2
    assert sorted((e["model"], e["pk"]) for e in events) == sorted(
        (model, str(obj.pk))
        for model in ("testapp.place", "testapp.restaurant")
        for obj in (first, second)
    )
    assert all(e["changed"] == ["city"] and e["data"]["city"] == "Paris" for e in events)
    first.name, second.seats = "A2", 20
    with capture_events() as events:
        Restaurant.objects.bulk_update([first, second], ["name", "seats"])
    assert sorted((e["model"], e["pk"], tuple(e["changed"])) for e in events) == sorted(
        [
            ("testapp.place", str(first.pk), ("name",)),
            ("testapp.restaurant", str(first.pk), ("name",)),
            ("testapp.restaurant", str(second.pk), ("seats",)),
        ]
    )


# -- custom QuerySet and manager classes -------------------------------------------


@pytest.mark.parametrize("manager", ["objects", "visible"])
def test_custom_queryset_keeps_its_class_and_overrides(manager: str) -> None:
    notes = getattr(Note, manager)
    with capture_events() as events:
        created = notes.bulk_create([Note(text="a"), Note(text="b")])
    assert {e["data"]["by"] for e in events} == {"NoteQuerySet"}
    assert isinstance(notes.all(), NoteQuerySet)
    with capture_events() as events:
        assert notes.open().filter(text="a").update(text="A") == 1
    event = events.assert_one(model="testapp.note", op="updated", pk=created[0].pk)
    assert (event["data"]["text"], event["data"]["by"]) == ("A", "NoteQuerySet")
    # The soft delete is the project's: an update, published as one.
    with capture_events() as events:
        notes.filter(text="b").delete()
    events.assert_one(model="testapp.note", op="updated", changed=["closed"])
    assert Note.objects.filter(closed=True).count() == 1
    assert Note.objects.count() == 2


@override_settings(BROADCAST_DELETE_CHUNK_SIZE=1000)
def test_delete_chunks_are_of_the_queryset_s_own_class() -> None:
    """The chunked delete() loads its rows through the queryset's own class, as Django's
    delete() does: a class that customizes iteration (e.g. one returning the rows as
    subclass instances) hands those to the deletion and its signals."""
    seen: list[type] = []

    class Recording(NoteQuerySet):
        def __iter__(self):  # type: ignore[no-untyped-def]
            seen.append(type(self))
            return super().__iter__()

        def delete(self):  # type: ignore[no-untyped-def]
            return super(NoteQuerySet, self).delete()  # the real delete, not the soft one

    Note.objects.bulk_create([Note(text=str(i)) for i in range(3)])
    with capture_events() as events:
        Recording(Note).delete()
    assert len(events.matching(op="deleted")) == 3
    assert seen and set(seen) == {Recording}


# -- the async ORM -----------------------------------------------------------------


@pytest_asyncio.fixture
async def close_thread_connections() -> AsyncIterator[None]:
    yield
    # The async ORM's calls run in one sync_to_async thread: close its connection, or
    # PostgreSQL refuses to drop the test database at the end of the session.
    await sync_to_async(connections.close_all)()


@pytest.mark.asyncio
@pytest.mark.usefixtures("close_thread_connections")
async def test_async_orm_writes_are_captured_after_commit() -> None:
    with capture_events() as events:
        article = await Article.objects.acreate(title="async")
        article.title = "changed"
        await article.asave()
        assert await Article.objects.filter(pk=article.pk).aupdate(hits=3) == 1
        made = await Article.objects.abulk_create([Article(title="b1"), Article(title="b2")])
        made[0].hits = 9
        await Article.objects.abulk_update(made, ["hits"])
        pk = article.pk
        await article.adelete()
    ops = [(e["op"], e["pk"], tuple(e.get("changed") or ())) for e in events]
    assert ops == [
        ("created", str(pk), ()),
        ("updated", str(pk), ("title",)),
        ("updated", str(pk), ("hits",)),
        ("created", str(made[0].pk), ()),
        ("created", str(made[1].pk), ()),
        ("updated", str(made[0].pk), ("hits",)),
        ("deleted", str(pk), ()),
    ]


@pytest.mark.asyncio
@pytest.mark.usefixtures("close_thread_connections")
async def test_async_writes_in_a_transaction_publish_at_its_commit_only() -> None:
    with capture_events() as events:

        @sync_to_async
        def in_transaction(rollback: bool) -> None:
            with transaction.atomic():
                Article.objects.create(title="rolled back" if rollback else "kept")
                Article.objects.update(hits=5)
                assert list(events) == [], "published before the commit"
                if rollback:
                    transaction.set_rollback(True)

        await in_transaction(rollback=True)
        assert list(events) == []
        await in_transaction(rollback=False)
    assert [(e["op"], e["data"]["title"], e["data"]["hits"]) for e in events] == [
        ("created", "kept", 5)
    ]


# -- read-back ---------------------------------------------------------------------


def _read_back_queries(rows: int) -> int:
    tags = Tag.objects.bulk_create([Tag(name="t1"), Tag(name="t2")])
    articles = Article.objects.bulk_create([Article(title=str(i)) for i in range(rows)])
    for article in articles:
        article.tags.set(tags)
    with capture_events() as events, CaptureQueriesContext(connection) as queries:
        Article.objects.filter(pk__in=[a.pk for a in articles]).update(hits=1)
    assert len(events) == rows
    assert all(e["data"]["tags"] == sorted(t.pk for t in tags) for e in events)
    Article.objects.all().delete()
    Tag.objects.all().delete()
    return len(queries)


def test_bulk_read_back_prefetches_many_to_many() -> None:
    few, many = _read_back_queries(2), _read_back_queries(30)
    assert few == many, f"the read-back costs a query per row: {few} for 2, {many} for 30"

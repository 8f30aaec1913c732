"""Many-to-many changes and ``previous`` values (tests.testapp.Article, registered with
``previous=True`` and ``exclude=["secret"]``)."""

from __future__ import annotations

import pytest
from django.db import transaction

from broadcast_app.testing import CapturedEvents
from tests.testapp.models import Article, Tag

pytestmark = pytest.mark.django_db(transaction=True)


def test_forward_add_remove_clear_publish_updated_with_the_field(
    broadcast_events: CapturedEvents,
) -> None:
    article = Article.objects.create(title="A")
    red, blue = Tag.objects.create(name="red"), Tag.objects.create(name="blue")
    broadcast_events.clear()
    article.tags.add(red, blue)
    article.tags.remove(red)
    article.tags.clear()
    assert [e["op"] for e in broadcast_events] == ["updated"] * 3
    assert all(e["changed"] == ["tags"] for e in broadcast_events)
    assert [e["data"]["tags"] for e in broadcast_events] == [
        sorted([red.pk, blue.pk]),
        [blue.pk],
        [],
    ]
    assert all("secret" not in e["data"] for e in broadcast_events)


def test_reverse_side_changes_publish_for_each_article(broadcast_events: CapturedEvents) -> None:
    first, second = Article.objects.create(title="1"), Article.objects.create(title="2")
    tag = Tag.objects.create(name="t")
    broadcast_events.clear()
    tag.articles.add(first, second)
    assert sorted(e["pk"] for e in broadcast_events) == sorted([str(first.pk), str(second.pk)])
    assert all(e["data"]["tags"] == [tag.pk] for e in broadcast_events)
    broadcast_events.clear()
    tag.articles.clear()
    assert sorted(e["pk"] for e in broadcast_events) == sorted([str(first.pk), str(second.pk)])
    assert all(e["data"]["tags"] == [] and e["changed"] == ["tags"] for e in broadcast_events)


def test_create_and_tag_in_one_transaction_is_one_created_event(
    broadcast_events: CapturedEvents,
) -> None:
    tag = Tag.objects.create(name="t")
    with transaction.atomic():
        article = Article.objects.create(title="new", secret="s3cr3t")
        article.tags.add(tag)
    event = broadcast_events.assert_one(pk=article.pk)
    assert (event["op"], event["data"]["tags"]) == ("created", [tag.pk])
    assert "s3cr3t" not in repr(event)


def test_previous_holds_old_values_of_changed_fields(broadcast_events: CapturedEvents) -> None:
    article = Article.objects.create(title="old", hits=1, secret="x")
    with transaction.atomic():
        article.title = "mid"
        article.save()
        article.title = "new"
        article.hits = 2
        article.secret = "y"
        article.save()
    event = broadcast_events.assert_one(op="updated")
    assert event["changed"] == ["title", "hits"]
    assert event["previous"] == {"title": "old", "hits": 1}


def test_models_without_previous_do_not_carry_it(broadcast_events: CapturedEvents) -> None:
    from tests.testapp.models import Product

    product = Product.objects.create(name="p", sku="p", price="1.00")
    product.stock = 3
    product.save()
    assert "previous" not in broadcast_events.assert_one(op="updated")

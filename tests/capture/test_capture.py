"""Capture after commit: coalescing, rollbacks, savepoints, `changed`, excluded fields."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest
from django.db import transaction
from django.test import override_settings

from broadcast_app.stats import stats
from broadcast_app.testing import capture_events
from tests.testapp.models import Article, Attachment, Product

pytestmark = pytest.mark.django_db(transaction=True)


def make(sku: str = "A-1", **fields: object) -> Product:
    values: dict[str, object] = {
        "name": "Anvil",
        "price": Decimal("10.00"),
        "stock": 5,
        "cost_price": Decimal("4.00"),
    }
    values.update(fields)
    return Product.objects.create(sku=sku, **values)


def test_create_publishes_created_with_broadcast_fields_only() -> None:
    with capture_events() as events:
        product = make(price="12.5")
    event = events.assert_one(op="created", model="testapp.product", pk=product.pk)
    assert event["data"]["price"] == "12.50"
    assert event["data"]["name"] == "Anvil"
    assert event["data"]["id"] == product.pk
    assert "cost_price" not in event["data"]
    assert event["changed"] == []
    assert event["pk"] == str(product.pk)
    assert event["ts"].endswith("Z")
    assert event["origin"]


def test_update_lists_only_really_changed_fields() -> None:
    product = make()
    with capture_events() as events:
        product.price = Decimal("11.00")
        product.stock = 5  # same value
        product.save()
    event = events.assert_one(op="updated")
    assert event["changed"] == ["price"]
    assert event["data"]["price"] == "11.00"


def test_update_of_excluded_field_or_nothing_publishes_nothing() -> None:
    product = make()
    with capture_events() as events:
        product.cost_price = Decimal("1.00")
        product.save()
        product.save()
        product.price = "10.0"  # equal once normalized
        product.save()
    events.assert_none()


def test_auto_now_is_in_data_but_never_in_changed() -> None:
    product = make()
    with capture_events() as events:
        product.name = "Hammer"
        product.save()
    event = events.assert_one(op="updated")
    assert event["changed"] == ["name"]
    assert "updated_at" in event["data"]


def test_loaded_instance_tracks_previous_values_without_extra_query(
    django_assert_num_queries,
) -> None:
    make()
    product = Product.objects.get(sku="A-1")
    with capture_events() as events, django_assert_num_queries(1):
        product.stock = 7
        product.save()
    assert events.assert_one(op="updated")["changed"] == ["stock"]


def test_nothing_is_published_before_commit_and_once_after() -> None:
    with capture_events() as events:
        with transaction.atomic():
            product = make()
            product.stock = 9
            product.save()
            assert events == []
        event = events.assert_one(pk=product.pk)
    assert event["op"] == "created"
    assert event["data"]["stock"] == 9
    assert len(events) == 1


def test_create_then_delete_in_one_transaction_publishes_nothing() -> None:
    with capture_events() as events, transaction.atomic():
        make().delete()
    events.assert_none()


def test_updates_that_cancel_out_publish_nothing() -> None:
    product = make()
    with capture_events() as events, transaction.atomic():
        product.price = Decimal("99.00")
        product.save()
        product.price = Decimal("10.00")
        product.save()
    events.assert_none()


def test_several_updates_coalesce_against_the_original_values() -> None:
    product = make()
    with capture_events() as events, transaction.atomic():
        product.price = Decimal("20.00")
        product.save()
        product.name = "Big anvil"
        product.save()
    event = events.assert_one(op="updated")
    assert event["changed"] == ["name", "price"]
    assert event["data"]["name"] == "Big anvil"


def test_update_then_delete_publishes_deleted_with_last_data() -> None:
    product = make()
    pk = product.pk
    with capture_events() as events, transaction.atomic():
        product.stock = 0
        product.save()
        product.delete()
    event = events.assert_one(op="deleted", pk=pk)
    assert event["data"]["stock"] == 0
    assert "cost_price" not in event["data"]
    assert len(events) == 1


def test_rolled_back_transaction_publishes_nothing() -> None:
    with capture_events() as events:
        with pytest.raises(RuntimeError), transaction.atomic():
            make()
            raise RuntimeError
        events.assert_none()
        # The next transaction on the same connection starts clean.
        with transaction.atomic():
            make(sku="B-1")
    assert [e["data"]["sku"] for e in events] == ["B-1"]


def test_rolled_back_savepoint_drops_only_its_part() -> None:
    kept = make(sku="K-1")
    with capture_events() as events, transaction.atomic():
        kept.stock = 1
        kept.save()
        with pytest.raises(RuntimeError), transaction.atomic():
            make(sku="R-1")
            kept.stock = 2
            kept.save()
            raise RuntimeError
        make(sku="N-1")
    assert sorted(e["data"]["sku"] for e in events) == ["K-1", "N-1"]
    assert events.assert_one(pk=kept.pk)["data"]["stock"] == 1


def test_changes_only_inside_a_rolled_back_savepoint_publish_nothing() -> None:
    with capture_events() as events, transaction.atomic():
        with pytest.raises(RuntimeError), transaction.atomic():
            make(sku="R-1")
            raise RuntimeError
    events.assert_none()


def test_released_savepoint_inside_rolled_back_one_is_discarded() -> None:
    with capture_events() as events, transaction.atomic():
        make(sku="O-1")
        with pytest.raises(RuntimeError), transaction.atomic():
            with transaction.atomic():
                make(sku="I-1")
            raise RuntimeError
    assert [e["data"]["sku"] for e in events] == ["O-1"]


def test_user_on_commit_hooks_still_run_in_order_around_ours() -> None:
    seen: list[str] = []
    with capture_events() as events, transaction.atomic():
        make(sku="A-1")
        transaction.on_commit(lambda: seen.append(f"hook saw {len(events)} event(s)"))
        make(sku="A-2")
    assert seen == ["hook saw 0 event(s)"]
    assert len(events) == 2


def test_deferred_field_set_after_only_counts_as_changed() -> None:
    make()
    product = Product.objects.only("id", "name").get(sku="A-1")
    with capture_events() as events:
        product.stock = 42
        product.save(update_fields=["stock"])
    event = events.assert_one(op="updated")
    assert event["changed"] == ["stock"]


def test_custom_serializer_cannot_leak_excluded_fields(reregister) -> None:
    reregister(
        exclude=["cost_price"],
        serializer=lambda p: {"name": p.name, "cost_price": str(p.cost_price), "label": "x"},
    )
    with capture_events() as events:
        make()
    data = events.assert_one(op="created")["data"]
    assert data == {"name": "Anvil", "label": "x"}


def test_broken_serializer_never_breaks_save(reregister, caplog) -> None:
    def boom(product: Product) -> dict[str, object]:
        raise ValueError("serializer bug")

    reregister(exclude=["cost_price"], serializer=boom)
    before = stats.get("capture_errors")
    with capture_events() as events, caplog.at_level(logging.ERROR):
        product = make()
    assert Product.objects.filter(pk=product.pk).exists()
    events.assert_none()
    assert stats.get("capture_errors") == before + 1


@override_settings(BROADCAST_ENABLED=False)
def test_disabled_broadcasting_captures_nothing() -> None:
    with capture_events() as events:
        make()
    events.assert_none()


def test_excluded_values_never_reach_events_or_logs(caplog) -> None:
    secret = "31337.77"
    with capture_events() as events, caplog.at_level(logging.DEBUG):
        product = make(cost_price=secret)
        product.cost_price = Decimal("31338.88")
        product.name = "Changed"
        product.save()
        product.delete()
    assert len(events) == 3
    assert secret not in repr(list(events))
    assert "31338" not in repr(list(events))
    assert "31337" not in caplog.text and "31338" not in caplog.text


def test_field_kinds_with_their_own_attribute_semantics_are_tracked() -> None:
    """A key by its id, a file by its name, JSON changed in place, not by identity."""
    first, second = Article.objects.create(title="a"), Article.objects.create(title="b")
    attachment = Attachment.objects.create(article=first, file="attachments/a.txt", meta={})
    loaded = Attachment.objects.get(pk=attachment.pk)
    with capture_events() as events:
        loaded.article = second
        loaded.save()
        loaded.file.name = "attachments/b.txt"  # the same FieldFile, renamed
        loaded.save()
        loaded.meta["tags"] = ["x"]  # the same dict, changed in place
        loaded.save()
        loaded.meta["tags"].append("y")
        loaded.save()
        loaded.save()  # nothing changed since
    assert [e["changed"] for e in events] == [["article"], ["file"], ["meta"], ["meta"]]
    assert events[1]["data"]["file"] == "attachments/b.txt"
    assert events[2]["data"]["meta"] == {"tags": ["x"]}
    assert events[3]["data"]["meta"] == {"tags": ["x", "y"]}
    assert events[0]["data"]["article"] == second.pk


def test_json_changed_in_place_after_save_does_not_reach_the_event() -> None:
    article = Article.objects.create(title="a")
    attachment = Attachment.objects.create(article=article, meta={"n": 1})
    with capture_events() as events, transaction.atomic():
        attachment.meta["n"] = 2
        attachment.save()
        attachment.meta["n"] = 3  # after the save, before the commit: not saved
    assert events.assert_one(op="updated")["data"]["meta"] == {"n": 2}

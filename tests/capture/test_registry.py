from __future__ import annotations

import pytest

import broadcast_app
from broadcast_app.capture.registry import (
    AlreadyRegistered,
    NotRegistered,
    all_configs,
    get_config,
)
from tests.testapp.models import Article, Attachment, Product


def test_product_is_registered_without_cost_price() -> None:
    config = get_config(Product)
    assert config is get_config("testapp.product") is get_config("TESTAPP.Product")
    names = [f.name for f in config.broadcast_fields]
    assert names == ["id", "name", "sku", "price", "stock", "updated_at"]
    assert "cost_price" in config.private_names
    assert config.volatile_names == {"updated_at"}
    assert config.view_permission == "testapp.view_product"
    assert config in all_configs()


def test_capture_reads_plain_attributes_directly_and_the_rest_through_the_field() -> None:
    by_name = {f.name: f for f in get_config(Attachment).captured_fields}
    assert by_name["article"].attname == "article_id"
    assert by_name["article"].direct and by_name["meta"].direct
    assert not by_name["file"].direct  # a FieldFile descriptor wraps the stored name
    assert not by_name["id"].tracked  # the primary key is never in ``changed``
    product = {f.name: f for f in get_config(Product).captured_fields}
    assert product["stock"].normal is int and product["price"].normal is None
    assert not product["updated_at"].tracked  # auto_now
    # Compared off the saving thread unless the instance itself is needed for it.
    assert get_config(Product).needs_no_instance and get_config(Attachment).needs_no_instance
    assert not get_config(Article).needs_no_instance  # many-to-many data: a query
    assert [f.name for f in get_config(Product).captured_fields] == [
        f.name for f in get_config(Product).broadcast_fields
    ]


def test_registering_twice_is_an_error() -> None:
    with pytest.raises(AlreadyRegistered):
        broadcast_app.register(Product)


def test_unknown_label_is_not_registered() -> None:
    with pytest.raises(NotRegistered):
        get_config("testapp.nothing")


def test_fields_keeps_primary_key_and_order(reregister) -> None:
    config = reregister(fields=["stock", "name"], permission="testapp.change_product")
    assert [f.name for f in config.broadcast_fields] == ["id", "name", "stock"]
    assert {"price", "sku", "cost_price", "updated_at"} <= config.private_names
    assert config.view_permission == "testapp.change_product"
    assert config.unknown_field_names() == []


def test_unknown_field_names_are_reported(reregister) -> None:
    config = reregister(exclude=["cost_price", "nope"])
    assert config.unknown_field_names() == ["nope"]

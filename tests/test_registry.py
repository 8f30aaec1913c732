from __future__ import annotations

import pytest

import broadcast_app
from broadcast_app.registry import AlreadyRegistered, NotRegistered, all_configs, get_config
from project.demo.models import Product


def test_demo_product_is_registered_without_cost_price() -> None:
    config = get_config(Product)
    assert config is get_config("demo.product") is get_config("DEMO.Product")
    names = [f.name for f in config.broadcast_fields]
    assert names == ["id", "name", "sku", "price", "stock", "updated_at"]
    assert "cost_price" in config.private_names
    assert config.volatile_names == {"updated_at"}
    assert config.view_permission == "demo.view_product"
    assert config in all_configs()


def test_registering_twice_is_an_error() -> None:
    with pytest.raises(AlreadyRegistered):
        broadcast_app.register(Product)


def test_unknown_label_is_not_registered() -> None:
    with pytest.raises(NotRegistered):
        get_config("demo.nothing")


def test_fields_keeps_primary_key_and_order(reregister) -> None:
    config = reregister(fields=["stock", "name"], permission="demo.change_product")
    assert [f.name for f in config.broadcast_fields] == ["id", "name", "stock"]
    assert {"price", "sku", "cost_price", "updated_at"} <= config.private_names
    assert config.view_permission == "demo.change_product"
    assert config.unknown_field_names() == []


def test_unknown_field_names_are_reported(reregister) -> None:
    config = reregister(exclude=["cost_price", "nope"])
    assert config.unknown_field_names() == ["nope"]

"""Filters of filtered subscriptions: what a ``where`` accepts, and that it matches the
rows the ORM's ``filter()`` returns."""

from __future__ import annotations

import warnings
from decimal import Decimal
from typing import Any

import pytest
from django.test import override_settings

from broadcast_app.capture.registry import get_config
from broadcast_app.events.change import field_values, to_json_data
from broadcast_app.events.filters import Where, _State, compile_where, replay_frames
from broadcast_app.events.frames import ProtocolError
from tests.testapp.models import Product

ROWS: list[dict[str, Any]] = [
    {"name": "Pro Anvil", "sku": "a", "price": Decimal("12.50"), "stock": 4},
    {"name": "anvil", "sku": "b", "price": Decimal("5.00"), "stock": 0},
    {"name": "PROTEIN bar", "sku": "c", "price": Decimal("0.99"), "stock": 12},
    {"name": "Émile's pro kit", "sku": "d", "price": Decimal("100.00"), "stock": 5},
    {"name": "", "sku": "e", "price": Decimal("12.5"), "stock": -3},
]

WHERES: list[dict[str, Any]] = [
    {"stock__lt": 5},
    {"stock__lte": 5, "name__icontains": "pro"},
    {"stock": 4},
    {"stock__in": [0, 12, 99]},
    {"stock__in": []},
    {"stock__gt": 4.0},
    {"price": "12.5"},
    {"price__gte": 12.5},
    {"price__lt": "1"},
    {"price__in": ["12.50", 5, "0.990"]},
    {"name__icontains": "PRO"},
    {"name__istartswith": "pro"},
    {"name": ""},
    {"name__isnull": False},
    {"name__isnull": True},
    {"pk__gte": 0},
    {"sku__in": ["a", "e", "zz"]},
    {"updated_at__gt": "2000-01-01T00:00:00Z"},
    {"updated_at__lt": "2000-01-01T00:00:00"},
]


def data_of(product: Product) -> dict[str, Any]:
    return to_json_data(field_values(get_config(Product), product))


def matches(key: Where, data: dict[str, Any]) -> bool:
    state = _State({"op": "created", "data": data}, None)
    return key.compiled.match(state) == "enter"


@pytest.mark.django_db
@pytest.mark.parametrize("where", WHERES)
def test_a_filter_matches_the_rows_the_orm_returns(where: dict[str, Any]) -> None:
    with override_settings(BROADCAST_ENABLED=False):
        products = [Product.objects.create(**row) for row in ROWS]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a naive datetime, as asked
        expected = set(Product.objects.filter(**where).values_list("pk", flat=True))
    key = compile_where(get_config(Product), where)
    assert {p.pk for p in products if matches(key, data_of(p))} == expected
    # What a snapshot asks the database for holds every matching row.
    assert expected <= set(
        Product.objects.filter(**key.compiled.prefilter()).values_list("pk", flat=True)
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("where", "skus"),
    [
        # Case-sensitive, as Django documents them (SQLite's LIKE is not: the database's
        # answer there would differ), and case folding beyond ASCII.
        ({"name__contains": "pro"}, {"d"}),
        ({"name__startswith": "Pro"}, {"a"}),
        ({"name__istartswith": "émile"}, {"d"}),
        ({"name__icontains": "ÉMILE"}, {"d"}),
    ],
)
def test_text_lookups(where: dict[str, Any], skus: set[str]) -> None:
    with override_settings(BROADCAST_ENABLED=False):
        products = [Product.objects.create(**row) for row in ROWS]
    key = compile_where(get_config(Product), where)
    assert {p.sku for p in products if matches(key, data_of(p))} == skus


def event(op: str, data: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"op": op, "data": data, "changed": [], **more}


@pytest.mark.parametrize(
    ("old", "new", "found"),
    [
        (10, 3, "enter"),
        (3, 4, "stay"),
        (3, 10, "leave"),
        (10, 20, None),
    ],
)
def test_enter_stay_leave_from_the_hidden_old_values(
    old: int, new: int, found: str | None
) -> None:
    key = compile_where(get_config(Product), {"stock__lt": 5})
    state = _State(event("updated", {"stock": new}, changed=["stock"]), {"stock": old})
    assert key.compiled.match(state) == found


def test_previous_serves_as_old_values_too() -> None:
    key = compile_where(get_config(Product), {"stock__lt": 5})
    changed = event("updated", {"stock": 3}, changed=["stock"], previous={"stock": 3})
    assert key.compiled.match(_State(changed, None)) == "stay"


def test_created_deleted_and_unknown_old_values() -> None:
    key = compile_where(get_config(Product), {"stock__lt": 5, "name": "x"})
    assert key.compiled.match(_State(event("created", {"stock": 1, "name": "x"}), None)) == "enter"
    assert key.compiled.match(_State(event("created", {"stock": 9, "name": "x"}), None)) is None
    assert key.compiled.match(_State(event("deleted", {"stock": 1, "name": "x"}), None)) == "leave"
    assert key.compiled.match(_State(event("deleted", {"stock": 9, "name": "x"}), None)) is None
    # A deleted row whose data lacks a field (deferred when deleted): it may have matched.
    assert key.compiled.match(_State(event("deleted", {"stock": 1}), None)) == "leave"
    # Old value not carried (an event read from the log): sent by its new values.
    unknown = event("updated", {"stock": 1, "name": "x"}, changed=["stock"])
    assert key.compiled.match(_State(unknown, None)) == "enter"
    unknown = event("updated", {"stock": 9, "name": "x"}, changed=["stock"])
    assert key.compiled.match(_State(unknown, None)) == "leave"
    # A field unchanged and known: no doubt.
    other = event("updated", {"stock": 9, "name": "y"}, changed=["stock"])
    assert key.compiled.match(_State(other, None)) is None


def test_equal_wheres_are_one_key_whatever_their_order() -> None:
    config = get_config(Product)
    first = compile_where(config, {"stock__lt": 5, "name": "x"})
    second = compile_where(config, {"name": "x", "stock__lt": 5})
    assert first == second
    assert first.where == {"name": "x", "stock__lt": 5}
    assert first != compile_where(config, {"stock__lt": 6, "name": "x"})


def test_a_replay_gets_the_variant_frames() -> None:
    key = compile_where(get_config(Product), {"stock__lt": 5})
    body = '"op":"created","model":"testapp.product","pk":"1","data":{"stock":%d},"changed":[]}'
    frames = [
        ("1-0:e", '{"type":"change","id":"1-0:e",' + body % 1),
        ("2-0:e", '{"type":"change","id":"2-0:e",' + body % 9),
    ]
    [(event_id, frame)] = replay_frames(key, frames)
    assert event_id == "1-0:e"
    assert frame.endswith(',"match":"enter","where":{"stock__lt":5}}')


@pytest.mark.parametrize(
    ("where", "code"),
    [
        ({"cost_price__lt": 5}, "forbidden"),  # excluded: filtering would tell its values
        ({"cost_price": 5}, "forbidden"),
        ({"nope": 1}, "bad_request"),
        ({"stock__regex": "x"}, "bad_request"),
        ({"stock__lt__gt": 1}, "bad_request"),
        ({"category__name": "x"}, "bad_request"),
        ({"stock__contains": "1"}, "bad_request"),  # text lookups on text fields only
        ({"stock": "many"}, "bad_request"),
        ({"stock": 1.5}, "bad_request"),
        ({"stock": True}, "bad_request"),
        ({"stock": [1]}, "bad_request"),
        ({"stock": {"a": 1}}, "bad_request"),
        ({"stock__lt": None}, "bad_request"),
        ({"stock__isnull": "yes"}, "bad_request"),
        ({"stock__in": 5}, "bad_request"),
        ({"stock__in": list(range(101))}, "bad_request"),
        ({"stock__in": [[1]]}, "bad_request"),
        ({"price": "12.5.5"}, "bad_request"),
        ({"price": "NaN"}, "bad_request"),
        ({"updated_at__gt": "yesterday"}, "bad_request"),
        ({"name__icontains": 5}, "bad_request"),
        ({"name": "x" * 201}, "bad_request"),
        ({"name": "\ud800"}, "bad_request"),
        ({f"stock__{n}": 1 for n in ("lt", "lte", "gt", "gte")} | {"name": "x", "sku": "y"}, None),
        ({}, "bad_request"),
        ([], "bad_request"),
        ("stock<5", "bad_request"),
    ],
)
def test_what_a_where_refuses(where: Any, code: str | None) -> None:
    config = get_config(Product)
    if code is None:
        compile_where(config, where)
        return
    with pytest.raises(ProtocolError) as refused:
        compile_where(config, where)
    assert refused.value.code == code


@override_settings(
    BROADCAST_FILTER_MAX_CONDITIONS=2, BROADCAST_FILTER_MAX_VALUES=3, BROADCAST_FILTER_MAX_TEXT=4
)
@pytest.mark.parametrize(
    ("where", "allowed"),
    [
        ({"stock": 1, "name": "x"}, True),
        ({"stock": 1, "name": "x", "sku": "y"}, False),
        ({"stock__in": [1, 2, 3]}, True),
        ({"stock__in": [1, 2, 3, 4]}, False),
        ({"name": "abcd"}, True),
        ({"name": "abcde"}, False),
        ({"name__in": ["abcde"]}, False),
    ],
)
def test_the_limits_are_settings(where: dict[str, Any], allowed: bool) -> None:
    config = get_config(Product)
    if allowed:
        compile_where(config, where)
    else:
        with pytest.raises(ProtocolError):
            compile_where(config, where)

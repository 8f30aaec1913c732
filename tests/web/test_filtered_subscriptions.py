"""Filtered subscriptions (``where``) through the websocket endpoint, with real Redis."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User
from django.test import override_settings

from broadcast_app.instance.hub import hub
from broadcast_app.instance.presence_local import local
from tests.testapp.models import Product
from tests.web.test_consumers import (
    TIMEOUT,
    ask,
    connect,
    make,
    make_quietly,
    viewer,
    viewer_ws,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

__all__ = ["viewer_ws"]  # (a fixture)

LOW = {"stock__lt": 5}


async def frame(ws: WebsocketCommunicator) -> dict[str, Any]:
    """The next frame, checked to be plain JSON (no hidden tail reaches a client)."""
    text = await ws.receive_from(timeout=TIMEOUT)
    assert "\x1e" not in text
    result: dict[str, Any] = json.loads(text)
    return result


def save(product: Product, **values: Any) -> None:
    for name, value in values.items():
        setattr(product, name, value)
    product.save()


async def test_rows_enter_stay_and_leave(viewer_ws: WebsocketCommunicator) -> None:
    reply = await ask(
        viewer_ws, {"type": "subscribe", "model": "testapp.product", "where": LOW, "ref": "low"}
    )
    assert reply == {
        "type": "subscribed",
        "model": "testapp.product",
        "pk": None,
        "where": LOW,
        "ref": "low",
        "last_id": reply["last_id"],
    }
    product = await database_sync_to_async(make)("F-1", stock=1)
    created = await frame(viewer_ws)
    assert (created["op"], created["match"], created["where"]) == ("created", "enter", LOW)
    assert created["pk"] == str(product.pk)

    for stock, match in ((3, "stay"), (10, "leave"), (20, None), (4, "enter")):
        await database_sync_to_async(save)(product, stock=stock)
        if match is None:
            continue  # (the next frame proves nothing was sent for this one)
        event = await frame(viewer_ws)
        assert (event["op"], event["match"], event["data"]["stock"]) == ("updated", match, stock)
        # Product is not registered with previous=True: the old values stay on the server.
        assert "previous" not in event
        assert "cost_price" not in event["data"]

    await database_sync_to_async(make)("F-2", stock=50)  # never matches: not sent
    await database_sync_to_async(Product.objects.filter(pk=product.pk).delete)()
    deleted = await frame(viewer_ws)
    assert (deleted["op"], deleted["match"], deleted["pk"]) == (
        "deleted",
        "leave",
        str(product.pk),
    )


async def test_a_change_of_another_field_keeps_the_row_in(
    viewer_ws: WebsocketCommunicator,
) -> None:
    product = await database_sync_to_async(make_quietly)("F-3", stock=1, price=Decimal("9.00"))
    where = {"stock__lt": 5, "price__gte": "8.5"}
    await ask(viewer_ws, {"type": "subscribe", "model": "testapp.product", "where": where})
    await database_sync_to_async(save)(product, price=Decimal("8.00"))
    left = await frame(viewer_ws)
    assert (left["match"], left["changed"]) == ("leave", ["price"])
    await database_sync_to_async(save)(product, name="renamed")  # out and still out
    await database_sync_to_async(save)(product, price=Decimal("8.50"))
    back = await frame(viewer_ws)
    assert (back["match"], back["data"]["price"]) == ("enter", "8.50")


async def test_filters_are_subscriptions_of_their_own(viewer_ws: WebsocketCommunicator) -> None:
    await ask(viewer_ws, {"type": "subscribe", "model": "testapp.product", "where": LOW})
    high = {"stock__gte": 5}
    await ask(viewer_ws, {"type": "subscribe", "model": "testapp.product", "where": high})
    await ask(viewer_ws, {"type": "subscribe", "model": "testapp.product"})
    product = await database_sync_to_async(make)("F-4", stock=1)
    frames = [await frame(viewer_ws) for _ in range(2)]
    plain = next(f for f in frames if "match" not in f)
    low = next(f for f in frames if "match" in f)
    assert (low["where"], low["match"]) == (LOW, "enter")
    assert plain["pk"] == low["pk"] == str(product.pk)

    # Unsubscribing names the where (its keys in any order stand for the same one).
    await viewer_ws.send_json_to({"type": "unsubscribe", "model": "testapp.product"})
    await viewer_ws.send_json_to(
        {"type": "unsubscribe", "model": "testapp.product", "where": {"stock__lt": 5}}
    )
    assert await ask(viewer_ws, {"type": "ping"}) == {"type": "pong"}  # both handled
    await database_sync_to_async(save)(product, stock=7)
    moved = await frame(viewer_ws)
    assert (moved["where"], moved["match"]) == (high, "enter")
    assert await ask(viewer_ws, {"type": "ping"}) == {"type": "pong"}  # nothing else came


@override_settings(BROADCAST_MAX_SUBSCRIPTIONS=2)
async def test_filters_count_as_subscriptions(viewer_ws: WebsocketCommunicator) -> None:
    await ask(viewer_ws, {"type": "subscribe", "model": "testapp.product"})
    reply = await ask(viewer_ws, {"type": "subscribe", "model": "testapp.product", "where": LOW})
    assert reply["type"] == "subscribed"
    again = {"type": "subscribe", "model": "testapp.product", "where": {"stock__lt": 5}}
    assert (await ask(viewer_ws, again))["type"] == "subscribed"  # the same one
    other = {"type": "subscribe", "model": "testapp.product", "where": {"stock__lt": 6}}
    reply = await ask(viewer_ws, other)
    assert (reply["type"], reply["code"]) == ("error", "too_many_subscriptions")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("message", "code"),
    [
        ({"where": {"cost_price__lt": 5}}, "forbidden"),
        ({"where": {"colour": "red"}}, "bad_request"),
        ({"where": {"stock__near": 5}}, "bad_request"),
        ({"where": {"stock": "lots"}}, "bad_request"),
        ({"where": {"stock": 1}, "pk": "1"}, "bad_request"),
        ({"where": ["stock", 1]}, "bad_request"),
    ],
)
async def test_refused_filters(
    viewer_ws: WebsocketCommunicator, message: dict[str, Any], code: str
) -> None:
    reply = await ask(viewer_ws, {"type": "subscribe", "model": "testapp.product", **message})
    assert (reply["type"], reply["code"]) == ("error", code)
    assert hub.count() == 0
    assert await ask(viewer_ws, {"type": "ping"}) == {"type": "pong"}


async def test_anonymous_filters_are_forbidden(running_listener: Any) -> None:
    ws = await connect(AnonymousUser())
    try:
        reply = await ask(ws, {"type": "subscribe", "model": "testapp.product", "where": LOW})
        assert (reply["type"], reply["code"]) == ("error", "forbidden")
    finally:
        await ws.disconnect()


async def test_previous_is_sent_only_where_the_model_opts_in(
    running_listener: Any, reregister: Any
) -> None:
    reregister(exclude=["cost_price"], previous=True)
    product = await database_sync_to_async(make_quietly)("F-5", stock=1)
    ws = await connect(await database_sync_to_async(viewer)())
    try:
        await ask(ws, {"type": "subscribe", "model": "testapp.product", "where": LOW})
        await database_sync_to_async(save)(product, stock=9, cost_price=Decimal("7.00"))
        event = await frame(ws)
        assert (event["match"], event["previous"]) == ("leave", {"stock": 1})
    finally:
        await ws.disconnect()


@pytest.mark.parametrize("previous", [True, False])
async def test_the_object_check_hides_what_a_row_was_from_whom_it_refused_then(
    running_listener: Any, reregister: Any, previous: bool
) -> None:
    reregister(
        exclude=["cost_price"],
        previous=previous,
        object_check=lambda user, data: data["name"] != "x",
    )
    hidden = await database_sync_to_async(make_quietly)("x", stock=1)
    shown = await database_sync_to_async(make_quietly)("y", stock=1)
    ws = await connect(await database_sync_to_async(viewer)())
    try:
        await ask(ws, {"type": "subscribe", "model": "testapp.product", "where": LOW})
        await database_sync_to_async(save)(hidden, stock=2)  # refused now: not sent
        # Matched before, but the reader could not see it then: not a "stay".
        await database_sync_to_async(save)(hidden, name="z", stock=3)
        event = await frame(ws)
        assert (event["pk"], event["match"], event["where"]) == (str(hidden.pk), "enter", LOW)
        assert "previous" not in event and "sub" not in event and "old" not in event
        other = await database_sync_to_async(make_quietly)("x2", name="x", stock=1)
        # Matched before, unseen then, matches no more: no "leave" to tell it matched.
        await database_sync_to_async(save)(other, name="w", stock=9)
        await database_sync_to_async(save)(shown, stock=9)  # seen before: its leave comes
        event = await frame(ws)
        assert (event["pk"], event["match"]) == (str(shown.pk), "leave")
        assert ("previous" in event) == previous
    finally:
        await ws.disconnect()


async def test_a_resume_replays_the_filtered_events(viewer_ws: WebsocketCommunicator) -> None:
    reply = await ask(viewer_ws, {"type": "subscribe", "model": "testapp.product", "where": LOW})
    since = reply["last_id"]
    await viewer_ws.send_json_to({"type": "unsubscribe", "model": "testapp.product", "where": LOW})
    product = await database_sync_to_async(make)("F-6", stock=1)
    await database_sync_to_async(make)("F-7", stock=10)
    await database_sync_to_async(save)(product, stock=2)
    # Subscribed meanwhile elsewhere to be sure the three events are logged.
    user = await database_sync_to_async(User.objects.get)(username="viewer")
    other = await connect(user)
    try:
        await ask(other, {"type": "subscribe", "model": "testapp.product", "since": since})
        assert [(await frame(other))["op"] for _ in range(3)] == ["created", "created", "updated"]
    finally:
        await other.disconnect()
    message = {"type": "subscribe", "model": "testapp.product", "where": LOW, "since": since}
    assert (await ask(viewer_ws, message))["type"] == "subscribed"
    first, second = await frame(viewer_ws), await frame(viewer_ws)
    assert (first["op"], first["match"]) == ("created", "enter")
    # The log holds no old values: an update of a matching row is sent as an enter.
    assert (second["op"], second["match"], second["data"]["stock"]) == ("updated", "enter", 2)
    assert await ask(viewer_ws, {"type": "ping"}) == {"type": "pong"}


async def test_a_filter_is_not_an_object_presence_watches(
    viewer_ws: WebsocketCommunicator,
) -> None:
    # A filter's key is a str, as a pk is: presence must not take it for an object (its
    # send task failed, and restarted, on every filtered subscribe).
    await ask(viewer_ws, {"type": "subscribe", "model": "testapp.product", "where": LOW})
    await ask(viewer_ws, {"type": "subscribe", "model": "testapp.product", "pk": "7"})
    watched = [key for key, members in local.watchers.items() if members]
    assert watched == [("testapp.product", "7")]
    assert all(type(pk) is str for _label, pk in watched)


async def test_an_update_by_pk_is_sent_by_its_new_values(viewer_ws: WebsocketCommunicator) -> None:
    """An update() whose filter names its rows by pk reads no old value: whether the row
    matched before is not known, so it is sent as ``enter`` or ``leave`` by the new
    values (never dropped), as an event read back from the log is."""
    product = await database_sync_to_async(make_quietly)("F-9", stock=1)
    await ask(viewer_ws, {"type": "subscribe", "model": "testapp.product", "where": LOW})

    def update(**values: Any) -> None:
        Product.objects.filter(pk=product.pk).update(**values)

    for stock, match in ((3, "enter"), (10, "leave"), (20, "leave"), (4, "enter")):
        await database_sync_to_async(update)(stock=stock)
        event = await frame(viewer_ws)
        assert (event["match"], event["changed"], event["data"]["stock"]) == (
            match,
            ["stock"],
            stock,
        )
        assert event["data"]["sku"] == "F-9" and "unknown" not in event
    # A field the filter does not read: nothing moved, known from the data alone.
    await database_sync_to_async(update)(name="renamed")
    renamed = await frame(viewer_ws)
    assert (renamed["match"], renamed["data"]["name"]) == ("stay", "renamed")


async def test_a_save_lacking_a_filtered_field_resets_the_filter(
    viewer_ws: WebsocketCommunicator,
) -> None:
    """A save of an instance loaded with ``only()`` lacks the deferred fields (``unknown``):
    whether the row matches a filter on one of them is not known, so the subscription
    gets a ``reset`` (reload), neither the change (a row that never matched would appear)
    nor nothing (a row shown would keep its old values)."""
    product = await database_sync_to_async(make_quietly)("F-10", stock=1)
    await ask(viewer_ws, {"type": "subscribe", "model": "testapp.product", "where": LOW})

    def rename(name: str, *loaded: str) -> None:
        save(Product.objects.only(*loaded).get(pk=product.pk), name=name)

    await database_sync_to_async(rename)("first", "name")
    assert await frame(viewer_ws) == {
        "type": "reset",
        "model": "testapp.product",
        "pk": None,
        "where": LOW,
        "reason": "incomplete",
    }
    # With the filtered field loaded, the filter decides as ever.
    await database_sync_to_async(rename)("second", "name", "stock")
    kept = await frame(viewer_ws)
    assert (kept["match"], kept["data"]["name"], kept["data"]["stock"]) == ("stay", "second", 1)
    assert "stock" not in kept["unknown"]

    # A resume over such an event is one reset as well.
    await viewer_ws.send_json_to({"type": "unsubscribe", "model": "testapp.product", "where": LOW})
    # (The whole model too, to see both events pass this instance before the resume.)
    reply = await ask(viewer_ws, {"type": "subscribe", "model": "testapp.product"})
    since = reply["last_id"]
    await database_sync_to_async(rename)("third", "name")
    await database_sync_to_async(save)(product, stock=2)  # (logged after it: a known end)
    assert [(await frame(viewer_ws))["type"] for _ in range(2)] == ["change", "change"]
    message = {"type": "subscribe", "model": "testapp.product", "where": LOW, "since": since}
    assert (await ask(viewer_ws, message))["type"] == "subscribed"
    reset = await frame(viewer_ws)
    assert (reset["type"], reset["reason"], reset["where"]) == ("reset", "incomplete", LOW)
    assert await ask(viewer_ws, {"type": "ping"}) == {"type": "pong"}

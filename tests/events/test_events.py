"""events.py: value normalization, the event's timestamp, reading a frame's head."""

from __future__ import annotations

import json
import random
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from uuid import UUID

import pytest
from django.utils.translation import gettext_lazy

from broadcast_app.capture.registry import get_config
from broadcast_app.events.change import Change, normalize
from broadcast_app.events.wire import (
    event_body,
    following_ids,
    frame_from_body,
    frame_head,
    iso_time,
)
from tests.testapp.models import Product


def test_iso_time_matches_datetime_formatting_to_the_microsecond() -> None:
    rng = random.Random(7)
    moments = [rng.uniform(0, 4_102_444_800) for _ in range(5000)]
    moments += [1_767_225_599.999_999_4, 1_767_225_600.0, 0.5]  # around a new year
    for moment in moments:
        ours = iso_time(moment)
        expected = datetime.fromtimestamp(moment, UTC)
        parsed = datetime.strptime(ours, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        # Truncated where datetime rounds: at most a microsecond apart, never later.
        assert 0 <= (expected - parsed).total_seconds() <= 1e-6, (moment, ours)


def test_normalize_keeps_loaded_decimals_and_quantizes_the_rest() -> None:
    price = Product._meta.get_field("price")
    loaded = Decimal("12.50")
    assert normalize(price, loaded) is loaded
    assert str(normalize(price, Decimal("12.5"))) == "12.50"
    assert str(normalize(price, "12.5")) == "12.50"
    assert str(normalize(price, 3)) == "3.00"
    assert normalize(price, Decimal("NaN")).is_nan()


def _frame(pk: str, **extra: object) -> str:
    config = get_config(Product)
    values = {"id": 1, "name": 'a "quoted" name', "price": Decimal("1.00")}
    change = Change(config, pk, "updated", dict(values), values, {}, _changed=["name"])
    for name, value in extra.items():
        setattr(change, name, value)
    return frame_from_body("1700000000000-0:ab12cd34", event_body(change, "ts", "o:1"))


def test_frame_head_reads_what_routing_needs_and_agrees_with_the_frame() -> None:
    for pk in ["12", "a-b_c.d", "550e8400-e29b-41d4-a716-446655440000", ""]:
        frame = _frame(pk)
        head = frame_head(frame)
        assert head is not None
        parsed = json.loads(frame)
        assert head == {key: parsed[key] for key in ("id", "model", "pk")}


def test_frame_head_leaves_what_it_cannot_read_plainly_to_the_parser() -> None:
    for pk in ['a"b', "a\\b", "é"]:  # escaped in the JSON (frames are ASCII)
        assert frame_head(_frame(pk)) is None
        assert json.loads(_frame(pk))["pk"] == pk
    # An event from a websocket: consumers check socket_id/to_others, in the full event.
    assert frame_head(_frame("12", socket_id="s1", to_others=True)) is None
    assert frame_head('{"type":"reset","model":"testapp.product"}') is None
    assert (
        frame_head('{"id":"1","type":"change","op":"updated","model":"testapp.product",') is None
    )


def test_the_reused_encoder_encodes_as_djangojsonencoder_does() -> None:
    from broadcast_app.events.wire import _ENCODER, _encode

    values: list[object] = [
        {"price": Decimal("12.50"), "big": Decimal("1E+3"), "nan": float("nan")},
        [datetime(2026, 11, 24, 10, 0, 0, 123456, UTC), datetime(2026, 1, 1), date(2026, 2, 3)],
        [time(10, 0, 0, 5000), timedelta(days=1, seconds=5), UUID(int=5)],
        {"é": "ünï\u2028", 1: True, "n": None, "f": 1.5, "l": gettext_lazy("Name")},
        "plain",
    ]
    for value in values:
        assert _encode(value) == _ENCODER.encode(value)


def test_following_ids_are_the_next_sequence_numbers_of_the_first_ids_millisecond() -> None:
    assert following_ids("1700000000000-9:ep", 3) == [
        "1700000000000-9:ep",
        "1700000000000-10:ep",
        "1700000000000-11:ep",
    ]
    for malformed in ("", "1700000000000:ep", "a-1:ep", "1-b:ep", "1-2"):
        with pytest.raises(ValueError, match="not an event id"):
            following_ids(malformed, 2)

"""events.py: value normalization and the event's timestamp."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal

from broadcast_app.events import iso_time, normalize
from project.demo.models import Product


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

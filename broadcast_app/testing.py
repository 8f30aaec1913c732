"""Helpers for your tests: capture the events a block of code publishes, without Redis.

Events are captured when they would be published, i.e. after the transaction commits,
exactly as in production (use ``transaction=True`` tests, or pytest-django's
``django_capture_on_commit_callbacks(execute=True)``)::

    from broadcast_app.testing import capture_events

    def test_price_change_is_broadcast(db):
        with capture_events() as events:
            product.price = "9.99"
            product.save()
        events.assert_one(op="updated", model="demo.product", changed=["price"])

Captured events have ``id`` None: ids are assigned by Redis, which is not involved.
In ``outbox`` delivery mode each commit relays its outbox rows at once while a capture
is active, so the events appear at commit in both modes.

A capture is an in-memory transport (:mod:`broadcast_app.transport.memory`) installed on
the publisher for the block: it takes each event in the thread that publishes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .publish import publisher as _publisher_module
from .transport.memory import MemoryTransport

__all__ = ["CapturedEvents", "capture_events"]


class CapturedEvents(list[dict[str, Any]]):
    """The event dicts published inside a :func:`capture_events` block, in order."""

    def matching(self, **fields: Any) -> list[dict[str, Any]]:
        """Events whose keys equal every given value (``pk`` compared as a string)."""
        if "pk" in fields:
            fields["pk"] = str(fields["pk"])
        return [e for e in self if all(e.get(k) == v for k, v in fields.items())]

    def assert_one(self, **fields: Any) -> dict[str, Any]:
        """Assert exactly one event matches, and return it."""
        found = self.matching(**fields)
        assert len(found) == 1, (
            f"expected one event matching {fields}, got {len(found)}: {list(self)}"
        )
        return found[0]

    def assert_none(self, **fields: Any) -> None:
        """Assert no event matches (no arguments: no event at all)."""
        found = self.matching(**fields)
        assert not found, f"expected no event matching {fields}, got: {found}"


@contextmanager
def capture_events(*, forward: bool = False) -> Iterator[CapturedEvents]:
    """Record the events published in the block; with ``forward`` also send them to Redis."""
    publisher = _publisher_module._publisher
    events = CapturedEvents()
    transport = MemoryTransport(events.append)
    previous = publisher.forward
    publisher.inline.append(transport)
    publisher.forward = forward
    try:
        yield events
    finally:
        publisher.inline.remove(transport)
        publisher.forward = previous


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is only needed for the fixture
    pass
else:

    @pytest.fixture
    def broadcast_events() -> Iterator[CapturedEvents]:
        """pytest fixture: the events published during the test (no Redis involved).

        Enable it with ``pytest_plugins = ["broadcast_app.testing"]`` in your
        ``conftest.py``; events are captured at commit, so use
        ``@pytest.mark.django_db(transaction=True)``.
        """
        with capture_events() as events:
            yield events

"""Fixtures of the instance tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broadcast_app.instance.hub import hub
from tests.instance.recording import LABEL, Recorder


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """A :class:`Recorder` subscribed to every product event for the test."""
    subscriber = Recorder()
    hub.add(subscriber, LABEL, None)
    yield subscriber
    hub.remove(subscriber, LABEL, None)

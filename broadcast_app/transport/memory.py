"""The in-memory transport: events kept in this process, as the dicts clients receive.

It serves :mod:`broadcast_app.testing`: ``capture_events()`` installs one on the
publisher as an inline transport, which takes each event in the thread that publishes
it, at commit, without the publisher thread, its queue or Redis (see
:attr:`broadcast_app.publish.publisher.Publisher.inline`). It implements the
publishing side of the interface (:class:`.interface.PublishingTransport`); there is no
log to read back, since only Redis assigns event ids (a captured event's ``id`` is
None).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from typing import Any

from ..events.wire import split_hidden
from .interface import Item, Once

__all__ = ["MemoryTransport", "decode"]


def decode(body: str) -> dict[str, Any]:
    """An event body as the ``change`` frame's dict, without an id (Redis assigns ids)
    and without what only instances read behind the JSON."""
    loaded: dict[str, Any] = json.loads('{"type":"change","id":null,' + split_hidden(body)[0])
    return loaded


class MemoryTransport:
    """A :class:`.interface.PublishingTransport` that hands each event, decoded, to
    ``receive`` (``list.append`` of the events a test captures), in publish order."""

    def __init__(self, receive: Callable[[dict[str, Any]], object]) -> None:
        self._receive = receive
        # Saving threads and the publisher thread (rate-limited events it releases)
        # publish into the same transport.
        self._lock = threading.Lock()
        #: where outbox events were recorded as published (the ``once`` of a batch)
        self._published: set[Once] = set()
        #: the resets sent: (models, why)
        self.resets: list[tuple[set[str], str]] = []

    @property
    def lost(self) -> set[str]:
        """Nothing published here is lost (no failover): always empty."""
        return set()

    def publish_batch(
        self,
        batch: list[Item],
        once: list[Once] | None = None,
        pause: Callable[[], None] | None = None,
    ) -> tuple[int, int]:
        """Hand every event of ``batch`` to ``receive``, in order, but those recorded in
        ``once`` already; never fails."""
        skipped = 0
        with self._lock:
            for i, (_label, body) in enumerate(batch):
                if once is not None:
                    if once[i] in self._published:
                        skipped += 1
                        continue
                    self._published.add(once[i])
                self._receive(decode(body))
        if pause is not None:
            pause()
        return len(batch), skipped

    def send_resets(self, labels: set[str], why: str) -> set[str]:
        """Record the reset; every model is told."""
        with self._lock:
            self.resets.append((set(labels), why))
        return set(labels)

    def forget(self, keys: Iterable[tuple[str, str]]) -> None:
        """Drop the "already published" records of the named hashes (the ``once`` keys,
        given with their model label)."""
        names = {key for _label, key in keys}
        with self._lock:
            self._published = {entry for entry in self._published if entry[0] not in names}

    def reset(self) -> None:
        """No connection to forget."""

    def close(self) -> None:
        """No connection to close."""

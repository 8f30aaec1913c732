"""The transport's narrow interface: what publishing and receiving need of it.

A transport carries events between processes. Publishing hands it batches of encoded
events (and resets); receiving reads a model's log after an id, for resumes and gap
repair. :mod:`.redis_transport` and :mod:`.log_reader` implement them on Redis, and on
a Redis Cluster with its client (:mod:`.cluster_publish`, the sharded scripts).
Listening (one subscription per instance) goes through the channel layer the listener
uses (:mod:`broadcast_app.instance.listener`), or on a cluster through sharded pub/sub
behind the same few layer methods (:mod:`.cluster_layer`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .log_reader import Replay

#: an event for the transport: model label and body (see events.change.event_body)
Item = tuple[str, str]
#: where an outbox event is recorded as published: (hash key, field)
Once = tuple[str, str]


@runtime_checkable
class PublishingTransport(Protocol):
    """What the publisher thread and the outbox relay need: send, in order."""

    @property
    def lost(self) -> set[str]:
        """Models whose published events the transport lost (a failover), not reset yet:
        the set itself, which the caller empties as it sends their resets."""
        ...

    def publish_batch(
        self,
        batch: list[Item],
        once: list[Once] | None = None,
        pause: Callable[[], None] | None = None,
    ) -> tuple[int, int]:
        """Publish ``batch`` in order; never raises. Returns how many of the first
        events were dealt with (published, or skipped as recorded in ``once`` already)
        and how many of those were skipped. ``pause`` runs between writing a batch and
        reading its replies."""
        ...

    def send_resets(self, labels: set[str], why: str) -> set[str]:
        """Tell every instance that events of ``labels`` were lost; return those told."""
        ...

    def forget(self, keys: Iterable[tuple[str, str]]) -> None:
        """Drop outbox "already published" records, as (model label, key) pairs."""
        ...

    def reset(self) -> None:
        """Forget connections (settings changed, or a forked child); reconnect lazily."""
        ...

    def close(self) -> None:
        """Close every connection."""
        ...


@runtime_checkable
class ReadingTransport(Protocol):
    """What resumes and gap repair need: a model's log, read after an id."""

    async def last_id(self, label: str) -> str | None:
        """The id of the model's last event, if any."""
        ...

    async def read_after(self, label: str, since: object, limit: int | None = None) -> Replay:
        """The model's events after ``since``: all of them, or none and why."""
        ...

    async def read_from_start(self, label: str) -> Replay:
        """The model's whole log."""
        ...

    async def close(self) -> None:
        """Close this event loop's connections."""
        ...

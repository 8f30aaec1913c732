"""The events a published message carries: one (``broadcast.event``, its frame) or
several of one model (``broadcast.events``, what one publish script call with several
events sends).

A batch message saves Redis a ``PUBLISH`` per event (and each instance a message read)
and the script the building of each event's frame: it carries the id before the first
event, the first event's id and the bodies. The ids of one call follow each other
(:func:`~broadcast_app.events.wire.following_ids`), so each event's frame and ``prev``
are rebuilt here exactly as a message of its own would carry them. Readers walk both
kinds through :func:`events_of`, which also reads an earlier build's
``broadcast.events`` (its frames whole), so instances can be upgraded first.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..events.wire import following_ids, frame_from_body, frame_id
from .routes import BATCH_TYPE, MESSAGE_TYPE


def is_event_message(message: dict[str, Any]) -> bool:
    """Whether ``message`` carries events (one or several)."""
    kind = message.get("type")
    return kind in (MESSAGE_TYPE, BATCH_TYPE)


def events_of(message: dict[str, Any]) -> Iterator[tuple[str, str | None]]:
    """``(frame, prev)`` of each event ``message`` carries, in order."""
    if message.get("type") == MESSAGE_TYPE:
        yield message["frame"], message.get("prev")
        return
    prev: str | None = message.get("prev")
    if "frames" in message:  # an earlier build's publisher: each frame whole
        for frame in message["frames"]:
            yield frame, prev
            prev = frame_id(frame)
        return
    bodies: list[str] = message["bodies"]
    for event_id, body in zip(following_ids(message["id"], len(bodies)), bodies, strict=True):
        yield frame_from_body(event_id, body), prev
        prev = event_id

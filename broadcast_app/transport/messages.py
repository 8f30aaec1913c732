"""The events a published message carries: one (``broadcast.event``) or several of one
model (``broadcast.events``, what one publish script call with several events sends).

A batch message saves Redis a ``PUBLISH`` per event (and each instance a message read)
but carries each event's frame as it would travel alone; only ``prev`` is written once,
for the first event: each next event's ``prev`` is the id of the frame before it, read
from the frame's start as the script writes it. Readers walk both kinds through
:func:`events_of`, so an instance understands messages from publishers of either
version.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..events.wire import frame_id
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
    for frame in message["frames"]:
        yield frame, prev
        # (None if the frame does not start as the scripts write it: the next event is
        # then processed without a gap check, as a first one)
        prev = frame_id(frame)

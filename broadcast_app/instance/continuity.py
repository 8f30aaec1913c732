"""An instance notices what its listener missed, and repairs it from the log.

channels-redis' pub/sub layer reconnects by itself and says nothing, so events
published while it was reconnecting simply never arrive. Every published message
carries the id of the event before it (``prev``); the listener remembers the last id it
processed per model. A message whose ``prev`` is not that id reveals a gap, and a
periodic check of each log's last id reveals a gap that no later event exposed. Either
way the missed events are read from the log and processed in order — cache, signal,
clients — before anything newer. When the log cannot fill the gap (trimmed, or a new
epoch after Redis lost its data), the model's cache entries are dropped and its
subscribers get ``reset``.
"""

from __future__ import annotations

import logging

from ..events.wire import id_key
from ..stats import stats
from ..transport.log_reader import Replay, event_log
from . import cache
from .hub import hub

logger = logging.getLogger(__name__)


def _epoch(event_id: str) -> str:
    return event_id.partition(":")[2]


def not_after(event_id: str, last: str) -> bool:
    """True if ``event_id`` is ``last`` or older (same epoch): already processed."""
    return _epoch(event_id) == _epoch(last) and id_key(event_id) <= id_key(last)


#: ``Continuity.last`` of a model whose log held no event when this instance began to
#: follow it: its first event has no previous id, and any other reveals a gap
EMPTY = ""


class Continuity:
    """The last event id processed per model, and gap repair."""

    def __init__(self) -> None:
        self.last: dict[str, str] = {}
        #: each log's last id at the previous watchdog check
        self._seen_in_log: dict[str, str] = {}
        #: the last id processed at the previous watchdog check
        self._processed_at_check: dict[str, str] = {}

    async def prime(self, labels: list[str]) -> None:
        """Start from the logs' current ends (call before subscribing, so no event
        published in between goes unnoticed: it shows up as a gap; a model whose log
        is empty starts from ``EMPTY``). A model already followed keeps its last id:
        what was published since is a gap to repair."""
        for label in labels:
            if label in self.last:
                continue
            try:
                last = await event_log.last_id(label)
            except Exception:  # Redis unreachable: the first event will set it
                continue
            self.last[label] = last or EMPTY

    async def missed(self, label: str, upto: str | None = None) -> list[tuple[str, str]] | None:
        """Frames after the last processed one (before ``upto``), or None after a reset."""
        last = self.last.get(label)
        if last is None:
            return []
        try:
            if last == EMPTY:
                replay = await event_log.read_from_start(label)
            else:
                replay = await event_log.read_after(label, last)
        except Exception:
            replay = Replay(False, "unavailable")
        if not replay.complete:
            self.reset(label, replay.reason)
            if replay.last_id:
                # Go on from the log's end, so the watchdog keeps watching this model.
                self.last[label] = replay.last_id
            return None
        frames = [
            (event_id, frame)
            for event_id, frame in replay.frames
            if upto is None or (event_id != upto and not not_after(upto, event_id))
        ]
        if frames:
            stats.incr("recovered", len(frames))
            logger.warning(
                "broadcast_app listener recovered %d missed %s event(s)", len(frames), label
            )
        return frames

    def reset(self, label: str, reason: str) -> None:
        """Forget what this instance holds of ``label``; tell its subscribers."""
        stats.incr("instance_resets")
        logger.warning(
            "broadcast_app listener missed %s events it cannot replay (%s)", label, reason
        )
        self.last.pop(label, None)
        cache.clear_model(label)
        hub.reset(label, reason)

    async def stale_labels(self) -> list[str]:
        """Models with an event the log held at the previous check that this instance
        has still not processed, and with none processed since (for the watchdog).

        Comparing with the previous check, not the current one, leaves events still in
        flight alone; and a listener that processed events of the model since is behind
        (under a load it cannot follow, events queue up before it), not deaf.
        """
        stale = []
        for label, last in list(self.last.items()):
            try:
                current = await event_log.last_id(label)
            except Exception:
                continue
            earlier = self._seen_in_log.get(label)
            progressed = self._processed_at_check.get(label) != last
            self._processed_at_check[label] = last
            if current:
                self._seen_in_log[label] = current
            if earlier and earlier != last and not not_after(earlier, last) and not progressed:
                stale.append(label)
        return stale

"""What this instance received lately, for the dashboard: a bounded feed and a rate.

The listener records each event it receives. Only metadata is kept — id, model, pk,
op, the names of the changed fields, the opaque origin and times — never ``data``: nothing here
holds a field value, so nothing here can leak an excluded one. Memory is bounded by
``BROADCAST_FEED_SIZE`` receipts plus one counter per second of the rate window.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..conf import conf

#: seconds of per-second receipt counts kept for the dashboard's rate chart
RATE_WINDOW = 300


@dataclass(frozen=True, slots=True)
class Receipt:
    """One received event, without its data."""

    id: str
    model: str
    pk: str
    op: str
    changed: tuple[str, ...]
    origin: str
    ts: str
    received_at: float
    #: commit → receipt, in milliseconds (None if ``ts`` could not be read)
    lag_ms: float | None

    def as_dict(self) -> dict[str, Any]:
        """The receipt as JSON-ready values (``received_at`` in ISO 8601)."""
        return {
            "id": self.id,
            "model": self.model,
            "pk": self.pk,
            "op": self.op,
            "changed": list(self.changed),
            "origin": self.origin,
            "ts": self.ts,
            "received_at": iso(self.received_at),
            "lag_ms": self.lag_ms,
        }


def iso(timestamp: float) -> str:
    """A Unix timestamp as UTC ISO 8601 with milliseconds."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def lag_ms(ts: str, received_at: float) -> float | None:
    """Milliseconds from the commit time ``ts`` to ``received_at`` (clocks of two hosts)."""
    try:
        committed = datetime.fromisoformat(ts).timestamp()
    except (TypeError, ValueError):
        return None
    return round((received_at - committed) * 1000, 2)


def _size() -> int:
    # An invalid size must not raise here (at import, or in a settings change): the
    # system checks report it (E006), and meanwhile the feed keeps nothing.
    try:
        return max(0, conf.BROADCAST_FEED_SIZE)
    except (TypeError, ValueError, OverflowError):
        return 0


class Feed:
    """The latest receipts and per-second counts; fed from the event loop, read anywhere."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything and re-read ``BROADCAST_FEED_SIZE`` (settings changed, tests)."""
        self._receipts: deque[Receipt] = deque(maxlen=_size())
        # [second, count] pairs, oldest first, only for seconds that saw an event.
        self._per_second: deque[list[int]] = deque()

    def record(self, event: dict[str, Any], now: float | None = None) -> Receipt:
        """Remember one received event (called by the listener for each event)."""
        received_at = time.time() if now is None else now
        ts = str(event.get("ts", ""))
        receipt = Receipt(
            id=str(event.get("id")),
            model=str(event.get("model")),
            pk=str(event.get("pk")),
            op=str(event.get("op")),
            changed=tuple(str(name) for name in event.get("changed") or ()),
            origin=str(event.get("origin")),
            ts=ts,
            received_at=received_at,
            lag_ms=lag_ms(ts, received_at),
        )
        self._receipts.append(receipt)
        second = int(received_at)
        if self._per_second and self._per_second[-1][0] == second:
            self._per_second[-1][1] += 1
        else:
            self._per_second.append([second, 1])
            while self._per_second[0][0] <= second - RATE_WINDOW:
                self._per_second.popleft()
        return receipt

    @property
    def last(self) -> Receipt | None:
        """The latest receipt, if any."""
        try:
            return self._receipts[-1]
        except IndexError:
            return None

    def latest(self, limit: int | None = None) -> list[Receipt]:
        """The latest receipts, newest first."""
        # list() copies the deque in one step, so a concurrent append cannot break it.
        receipts = list(self._receipts)
        receipts.reverse()
        return receipts if limit is None else receipts[:limit]

    def rate(
        self, step: int = 5, window: int = RATE_WINDOW, now: float | None = None
    ) -> list[float]:
        """Events per second in each ``step``-second slice of the last ``window`` seconds.

        Oldest first; the last slice ends with the current second.
        """
        end = int(time.time() if now is None else now) + 1
        start = end - window
        slices = [0] * (window // step)
        for second, count in list(self._per_second):
            if start <= second < end:
                slices[min((second - start) // step, len(slices) - 1)] += count
        return [round(count / step, 2) for count in slices]


feed = Feed()

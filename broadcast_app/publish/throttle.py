"""Hot rows: at most ``max_rate`` events per second for one object, latest state wins.

The first change of an object goes out at once; further changes within ``1 / max_rate``
seconds are held and merged (the latest data, the union of ``changed``, the earliest
``previous``) and published when the interval ends. So a counter saved 1,000 times per
second costs its subscribers ``max_rate`` events per second, and its last change is
published at most ``1 / max_rate`` seconds after it committed. The limit applies per
publishing process.
"""

from __future__ import annotations

import threading
import time

from ..events.change import Change, merge

Key = tuple[str, str]


class Throttle:
    """Per-object rate limits of one process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[Key, float] = {}
        self._held: dict[Key, tuple[float, Change, float]] = {}  # due time, change, ts

    def admit(self, change: Change, ts: float) -> bool:
        """True if ``change`` may be published now; otherwise it is held."""
        rate = change.config.max_rate
        if not rate:
            return True
        key, now = (change.label, change.pk), time.monotonic()
        with self._lock:
            held = self._held.get(key)
            if held is not None:
                merged = merge(held[1], change)
                if merged is None:
                    del self._held[key]  # created and deleted within the interval
                else:
                    self._held[key] = (held[0], merged, ts)
                return False
            last = self._last.get(key)
            if last is None or now - last >= 1 / rate:
                self._last[key] = now
                return True
            self._held[key] = (last + 1 / rate, change, ts)
            return False

    @property
    def active(self) -> bool:
        """Whether a change is held or an object was limited lately (read without the
        lock: a change held meanwhile wakes the publisher thread again)."""
        return bool(self._held or self._last)

    def next_due(self) -> float | None:
        """Seconds until the next held change is due (None if none is held)."""
        with self._lock:
            if not self._held:
                return None
            return max(0.0, min(due for due, _, _ in self._held.values()) - time.monotonic())

    def release(self, everything: bool = False) -> list[tuple[Change, float]]:
        """Take the held changes that are due (or all of them), oldest first."""
        now = time.monotonic()
        with self._lock:
            due = [k for k, (at, _, _) in self._held.items() if everything or at <= now]
            released = []
            for key in due:
                _, change, ts = self._held.pop(key)
                self._last[key] = now
                released.append((change, ts))
            # Rows quiet for a while need no memory of their last event.
            horizon = now - 60
            for key in [k for k, at in self._last.items() if at < horizon]:
                del self._last[key]
        return released

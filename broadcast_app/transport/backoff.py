"""The restart policy of background work: how long to wait before running a failed job
again. Shared by the instance runtime's tasks and the outbox relay thread."""

from __future__ import annotations

FIRST_DELAY = 0.5  # seconds before the first restart of a failed task
MAX_DELAY = 30.0  # seconds between two restarts at most while a task keeps failing
HEALTHY = 60.0  # seconds a run must last for the next failure to restart promptly again


class Backoff:
    """Delays between restarts: doubling while runs keep failing, reset by a long run."""

    def __init__(self, first: float = FIRST_DELAY, most: float = MAX_DELAY) -> None:
        self.first, self.most = first, most
        self._next = first

    def after(self, lasted: float) -> float:
        """The delay before the next run, after one that failed having lasted ``lasted`` s."""
        if lasted >= HEALTHY:
            self._next = self.first
        delay, self._next = self._next, min(self._next * 2, self.most)
        return delay

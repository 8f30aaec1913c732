"""Live events that a subscription's replay, reset or snapshot already covered.

A subscription with ``since`` reads the model's log up to its last id; one with a
snapshot reads the log's last id, then the rows. Events up to that id can still be on
their way to this instance's listener (published, not yet received) when the read
ends; arriving live afterwards they would be duplicates of the replay, or older than
the rows of the snapshot or the state a ``reset`` makes the client reload. The position
read is the subscription's floor until the listener passes it: live events at or
before it are dropped.
"""

from __future__ import annotations

from collections.abc import Container, Iterable

from ..transport.log_reader import covers, position

Key = tuple[str, str | None]


class Floors(dict[Key, tuple[str, int, int]]):
    """Per subscription of one connection, the log position its last read covered.

    A dict itself, not an object holding one: every connection has one, and every event
    tests it (an empty one is false without a call into Python).
    """

    __slots__ = ()  # one per connection: no instance dict

    def set(self, key: Key, read_up_to: str, received: str | None) -> None:
        """The subscription's read covered the log up to ``read_up_to``; this
        instance's listener has received up to ``received``."""
        floor = position(read_up_to)
        if floor is None:
            return
        at = position(received) if received is not None else None
        if at is not None and covers(at, read_up_to):
            self.pop(key, None)  # nothing up to the floor is still on its way
        else:
            self[key] = floor

    def discard(self, key: Key) -> None:
        self.pop(key, None)

    def covered(self, keys: Iterable[Key], subscriptions: Container[Key], event_id: str) -> bool:
        """Whether every subscription among ``keys`` (those the event may be for) that
        this connection holds already covered it. A floor that a later event passed is
        dropped: events arrive in log order."""
        covered = False
        for key in keys:
            if key not in subscriptions:
                continue
            floor = self.get(key)
            if floor is not None and covers(floor, event_id):
                covered = True
                continue
            self.pop(key, None)
            return False
        return covered

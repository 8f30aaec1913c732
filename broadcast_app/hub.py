"""This instance's websocket subscribers, indexed for fan-out.

One listener per instance receives each event once and hands its frame, already
encoded, to every local subscriber of that model or of that object.
"""

from __future__ import annotations

from typing import Any, Protocol


class Subscriber(Protocol):
    """What the hub needs from a websocket connection."""

    def deliver(self, frame: str, event: dict[str, Any]) -> None:
        """Queue one event frame for this client (must not block).

        ``event`` holds at least the event's ``id``, ``model`` and ``pk``, and every key
        when its model has an ``object_check`` or the event names the websocket it came
        from (``socket_id``); ``frame`` is the whole event.
        """

    def reset(self, label: str, pk: str | None, reason: str) -> None:
        """Tell this client its subscription missed events it cannot get back."""


class Hub:
    """Subscriptions of local clients: ``{label: {pk or None: {subscriber, ...}}}``."""

    def __init__(self) -> None:
        self._subs: dict[str, dict[str | None, set[Subscriber]]] = {}
        #: the last event id this instance received, per model label
        self.last_ids: dict[str, str] = {}

    def add(self, subscriber: Subscriber, label: str, pk: str | None) -> None:
        self._subs.setdefault(label, {}).setdefault(pk, set()).add(subscriber)

    def remove(self, subscriber: Subscriber, label: str, pk: str | None) -> None:
        by_pk = self._subs.get(label)
        if by_pk is None:
            return
        members = by_pk.get(pk)
        if members is None:
            return
        members.discard(subscriber)
        if not members:
            del by_pk[pk]
            if not by_pk:
                del self._subs[label]

    def count(self) -> int:
        """Number of (subscriber, subscription) pairs, for stats."""
        return sum(len(s) for by_pk in self._subs.values() for s in by_pk.values())

    def reset(self, label: str, reason: str) -> int:
        """Send ``reset`` to every subscription to ``label``. Returns how many."""
        count = 0
        for pk, members in list(self._subs.get(label, {}).items()):
            for subscriber in tuple(members):
                subscriber.reset(label, pk, reason)
                count += 1
        return count

    def deliver(self, frame: str, event: dict[str, Any]) -> int:
        """Hand ``frame`` to each subscriber of its model or object, once. Returns how many."""
        by_pk = self._subs.get(event["model"])
        if not by_pk:
            return 0
        model_wide = by_pk.get(None)
        one_object = by_pk.get(event["pk"])
        if model_wide and one_object:
            targets: set[Subscriber] = model_wide | one_object
        else:
            targets = model_wide or one_object or set()
        for subscriber in tuple(targets):
            subscriber.deliver(frame, event)
        return len(targets)


hub = Hub()

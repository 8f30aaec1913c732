"""This instance's websocket subscribers, indexed for fan-out.

One listener per instance receives each event once and hands its frame, already
encoded, to every local subscriber of that model or of that object.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..events.filters import Where, fan_out


class Subscriber(Protocol):
    """What the hub needs from a websocket connection."""

    def deliver(self, frame: str, event: dict[str, Any]) -> None:
        """Queue one event frame for this client (must not block).

        ``event`` holds at least the event's ``id``, ``model`` and ``pk``, and every key
        when its model has an ``object_check`` or the event names the websocket it came
        from (``socket_id``); ``frame`` is the whole event. For a filtered subscription
        (see events/filters.py), ``frame`` has its ``match`` and ``where``, and ``event`` every
        key, those two, and ``sub`` (the subscription's key).
        """

    def reset(self, label: str, pk: str | None, reason: str) -> None:
        """Tell this client its subscription missed events it cannot get back."""


class Hub:
    """Subscriptions of local clients: ``{label: {pk or None: {subscriber, ...}}}``, and
    the filtered ones apart (``{label: {where: {subscriber, ...}}}``, see events/filters.py)."""

    def __init__(self) -> None:
        self._subs: dict[str, dict[str | None, set[Subscriber]]] = {}
        self._filtered: dict[str, dict[Where, set[Subscriber]]] = {}
        #: the last event id this instance received, per model label
        self.last_ids: dict[str, str] = {}

    def add(self, subscriber: Subscriber, label: str, pk: str | None) -> None:
        """Deliver ``label``'s events (of object ``pk``, or matching a ``Where``)."""
        subs: dict[str, dict[Any, set[Subscriber]]] = (
            self._filtered if isinstance(pk, Where) else self._subs
        )
        subs.setdefault(label, {}).setdefault(pk, set()).add(subscriber)

    def remove(self, subscriber: Subscriber, label: str, pk: str | None) -> None:
        subs: dict[str, dict[Any, set[Subscriber]]] = (
            self._filtered if isinstance(pk, Where) else self._subs
        )
        by_pk = subs.get(label)
        if by_pk is None:
            return
        members = by_pk.get(pk)
        if members is None:
            return
        members.discard(subscriber)
        if not members:
            del by_pk[pk]
            if not by_pk:
                del subs[label]

    def count(self) -> int:
        """Number of (subscriber, subscription) pairs, for stats."""
        plain = sum(len(s) for by_pk in self._subs.values() for s in by_pk.values())
        return plain + sum(
            len(s) for by_where in self._filtered.values() for s in by_where.values()
        )

    def reset(self, label: str, reason: str) -> int:
        """Send ``reset`` to every subscription to ``label``. Returns how many."""
        count = 0
        subs: dict[Any, set[Subscriber]] = {
            **self._subs.get(label, {}),
            **self._filtered.get(label, {}),
        }
        for pk, members in list(subs.items()):
            for subscriber in tuple(members):
                subscriber.reset(label, pk, reason)
                count += 1
        return count

    def deliver(self, frame: str, event: dict[str, Any], hidden: str | None = None) -> int:
        """Hand ``frame`` to each subscriber of its model or object, once, and its variant
        to each filtered subscriber it concerns (``hidden``: the old values the frame
        carried for them, see events/filters.py). Returns how many."""
        count = 0
        if self._filtered:
            filtered = self._filtered.get(event["model"])
            if filtered:
                count = fan_out(filtered, frame, event, hidden)
        by_pk = self._subs.get(event["model"])
        if not by_pk:
            return count
        model_wide = by_pk.get(None)
        one_object = by_pk.get(event["pk"])
        if model_wide and one_object:
            targets: set[Subscriber] = model_wide | one_object
        else:
            targets = model_wide or one_object or set()
        for subscriber in tuple(targets):
            subscriber.deliver(frame, event)
        return count + len(targets)


hub = Hub()

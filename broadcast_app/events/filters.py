"""Filtered subscriptions: a ``where`` read, checked and compiled once, and which of a
model's events match it (``enter``, ``stay``, ``leave``).

A ``where`` is an object of conditions, ANDed, each ``field`` or ``field__lookup`` over
the model's broadcast fields (see docs/protocol.md). Values are compared as the ORM
compares them for the field's type: both sides go through the field's ``to_python()``
(``"12.50"`` and ``12.5`` are one ``Decimal``, an ISO string a datetime), ``None``
never equals, orders or contains anything (SQL's NULL).

"Before" is known without a query: an ``updated`` event carries the old values of its
changed fields, in ``previous`` where the model opts in, else after the frame's JSON,
behind :data:`~.events.HIDDEN`, where only instances read it
(:func:`~.events.split_hidden` cuts it off before any client sees the frame). An event
read back from the log (a resume, a gap repair) has no such tail, nor has an update by
pk (bulk.py reads no old values for it): when an old value is unknown, the event is
sent as ``enter`` or ``leave`` by the new values alone, never dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import models
from django.utils import timezone

from ..conf import conf
from .frames import ProtocolError, valid_text
from .model_configs import ModelConfig

#: the lookups a condition may name (a bare field is ``exact``)
LOOKUPS = frozenset(
    {"exact", "in", "lt", "lte", "gt", "gte", "isnull"}
    | {"contains", "icontains", "startswith", "istartswith"}
)
_TEXT_LOOKUPS = frozenset({"contains", "icontains", "startswith", "istartswith"})
_TEXT_TYPES = frozenset({"CharField", "TextField", "SlugField", "EmailField", "URLField"})
#: field types whose values compare as the ORM compares them once through to_python()
_FILTERABLE = _TEXT_TYPES | {
    "IntegerField",
    "BigIntegerField",
    "SmallIntegerField",
    "PositiveIntegerField",
    "PositiveSmallIntegerField",
    "PositiveBigIntegerField",
    "AutoField",
    "BigAutoField",
    "SmallAutoField",
    "DecimalField",
    "FloatField",
    "BooleanField",
    "DateField",
    "DateTimeField",
    "TimeField",
    "UUIDField",
    "ForeignKey",
    "OneToOneField",
}
#: a value that could not be read (an old value the event does not carry)
_UNKNOWN: Any = object()
#: what an event's row is missing: it does not match (for a deleted row: unknown)
_MISSING: Any = object()
#: the start of the marker that sets a filtered subscription's key apart from any pk (a
#: lone surrogate: no pk can hold one, see frames.valid_text)
_MARK = "\ud800"

Match = str  # "enter", "stay" or "leave", or UNDECIDED
#: neither: the event lacks (``unknown``: deferred when saved) a field the filter reads,
#: so whether the row matches is not known; the subscription gets a ``reset`` with this
#: reason instead (a client that does not hold the row must not get it, one that holds
#: it must not miss the change)
UNDECIDED = "incomplete"


class Where(str):
    """A filtered subscription's key: stands where a pk stands in ``(label, pk)``, and
    never equals one. ``where`` is the object clients see (its keys sorted)."""

    where: dict[str, Any]
    compiled: Filter


def naming(pk: str | None) -> dict[str, Any]:
    """How a frame names a subscription: its ``pk``, and its ``where`` when filtered."""
    if isinstance(pk, Where):
        return {"pk": None, "where": pk.where}
    return {"pk": pk}


def held_keys(event: dict[str, Any]) -> tuple[tuple[str, str | None], ...]:
    """The subscriptions an event handed to a connection may be held back for (while
    they resume): a filtered subscription's own, or the model's and the object's."""
    sub = event.get("sub")  # (set by fan_out)
    if sub is not None:
        return ((event["model"], sub),)
    return (event["model"], None), (event["model"], event["pk"])


@dataclass(frozen=True, slots=True)
class Condition:
    """One ``field__lookup: value``."""

    name: str
    lookup: str
    #: the value as the field reads it (a frozenset for ``in``, lower case for ``i...``)
    value: Any
    #: turns a row's JSON value into what ``value`` compares with
    read: Callable[[Any], Any]
    #: the database answers it as this module does (not text: case folding and LIKE
    #: differ between databases; not datetimes: events carry milliseconds)
    in_db: bool = True

    def test(self, row: Any) -> bool:
        if row is None:  # SQL's NULL: only isnull and exact None match it
            return (self.lookup == "isnull" and self.value) or (
                self.lookup == "exact" and self.value is None
            )
        lookup, value = self.lookup, self.value
        if lookup == "isnull":
            return not value
        if value is None:
            return False  # (exact None on a row that holds a value)
        try:
            if lookup == "exact":
                return bool(row == value)
            if lookup == "in":
                return row in value
            if lookup == "lt":
                return bool(row < value)
            if lookup == "lte":
                return bool(row <= value)
            if lookup == "gt":
                return bool(row > value)
            if lookup == "gte":
                return bool(row >= value)
        except TypeError:  # (a naive datetime against an aware one)
            return False
        text = str(row)
        if lookup in ("icontains", "istartswith"):
            text = text.lower()
        if lookup.endswith("contains"):
            return value in text
        return text.startswith(value)


@dataclass(frozen=True, slots=True)
class Filter:
    """A compiled ``where``: its conditions, tested against an event's data."""

    conditions: tuple[Condition, ...]
    #: the fields its conditions read
    names: frozenset[str]

    def prefilter(self) -> dict[str, Any]:
        """``filter()`` arguments selecting every matching row (and maybe more: the
        conditions the database may answer otherwise are left to :meth:`test`)."""
        arguments: dict[str, Any] = {}
        for c in self.conditions:
            if not c.in_db:
                continue
            if c.lookup == "exact" and c.value is None:
                arguments[f"{c.name}__isnull"] = True
            else:
                value = sorted(c.value) if c.lookup == "in" else c.value
                arguments[f"{c.name}__{c.lookup}"] = value
        return arguments

    def test(self, data: Mapping[str, Any], cache: dict[str, Any], unknown: bool) -> bool | None:
        """Whether ``data`` matches; None if it depends on a value not known. A field
        missing from ``data`` does not match, or is not known if ``unknown``."""
        result: bool | None = True
        for condition in self.conditions:
            row = cache.get(condition.name, cache)
            if row is cache:
                row = cache[condition.name] = _read(condition, data)
            if row is _UNKNOWN or (row is _MISSING and unknown):
                result = None
            elif row is _MISSING or not condition.test(row):
                return False
        return result

    def match(self, state: _State) -> Match | None:
        """``enter``, ``stay``, ``leave``, or None (matched neither before nor after)."""
        op = state.op
        if state.unknown and not self.names.isdisjoint(state.unknown):
            return UNDECIDED
        if op == "deleted":
            gone = self.test(state.data, state.after, True)
            return None if gone is False else "leave"
        after = self.test(state.data, state.after, False)
        before: bool | None = False
        if op == "updated":
            # (Most updates change no field a given filter reads: then nothing moved.)
            unmoved = self.names.isdisjoint(state.changed)
            before = after if unmoved else self.test(state.old, state.before, False)
        if after:
            return "stay" if before else "enter"
        return None if before is False else "leave"


class _State:
    """One event as filters read it: the row after and (updated) before, and the
    values read from each so far (shared by every filter of the model)."""

    __slots__ = ("after", "before", "changed", "data", "known", "old", "op", "unknown")

    def __init__(self, event: dict[str, Any], hidden: dict[str, Any] | None) -> None:
        self.op: str = event["op"]
        self.data: dict[str, Any] = event["data"]
        self.after: dict[str, Any] = {}
        self.before: dict[str, Any] = {}
        self.old = self.known = self.data
        self.changed = frozenset(event.get("changed", ()))
        self.unknown = frozenset(event.get("unknown", ()))
        if self.op == "updated":
            # The changed fields' old values; one the event does not carry is unknown.
            self.old = dict(self.data)
            known = event.get("previous") or hidden or {}
            for name in event.get("changed", ()):
                self.old[name] = known.get(name, _UNKNOWN)
            # What an object_check reads of the row before (as for ``previous``).
            self.known = {**self.data, **known}


def _read(condition: Condition, data: Mapping[str, Any]) -> Any:
    value = data.get(condition.name, _MISSING)
    if value is _MISSING or value is _UNKNOWN or value is None:
        return value
    try:
        return condition.read(value)
    except (ValidationError, TypeError, ValueError):
        return _MISSING  # (what a serializer hook wrote, unreadable as the field)


# -- reading a client's ``where`` ------------------------------------------------------


def compile_where(config: ModelConfig, where: object) -> Where:
    """A client's ``where`` as a subscription key, or a :class:`ProtocolError`:
    ``forbidden`` for a field that is not broadcast (filtering on it would tell its
    values), ``bad_request`` for anything else that cannot be read."""
    if not isinstance(where, dict) or not where:
        raise ProtocolError("bad_request", "'where' must be an object of conditions.")
    most = conf.BROADCAST_FILTER_MAX_CONDITIONS
    if len(where) > most:
        raise ProtocolError("bad_request", f"'where' holds at most {most} conditions.")
    conditions = tuple(_condition(config, key, value) for key, value in sorted(where.items()))
    text = json.dumps(where, sort_keys=True, separators=(",", ":"))
    key = Where(_MARK + text)
    key.where = json.loads(text)
    key.compiled = Filter(conditions, frozenset(c.name for c in conditions))
    return key


def _condition(config: ModelConfig, key: str, value: Any) -> Condition:
    valid_text(key, "where")
    name, _, lookup = key.partition("__")
    lookup = lookup or "exact"
    field = field_of(config, name)
    if lookup not in LOOKUPS:
        raise ProtocolError("bad_request", f"Unknown lookup in {key[:100]!r}.")
    kind = field.get_internal_type()
    if lookup in _TEXT_LOOKUPS and kind not in _TEXT_TYPES:
        raise ProtocolError("bad_request", f"{lookup!r} applies to text fields only.")
    read = _reader(field)
    in_db = kind not in _TEXT_TYPES and kind not in ("DateTimeField", "TimeField")
    condition = _checked(field, read, key, lookup, value)
    return Condition(field.name, lookup, condition, read, in_db)


def _checked(
    field: models.Field[Any, Any], read: Callable[[Any], Any], key: str, lookup: str, value: Any
) -> Any:
    """A condition's value as :class:`Condition` holds it, or a ``bad_request``."""
    if lookup == "isnull":
        if not isinstance(value, bool):
            raise ProtocolError("bad_request", f"{key[:100]!r} takes true or false.")
        return value
    if lookup == "in":
        most = conf.BROADCAST_FILTER_MAX_VALUES
        if not isinstance(value, list) or len(value) > most:
            raise ProtocolError("bad_request", f"{key[:100]!r} takes a list of at most {most}.")
        return frozenset(_value(field, read, key, item) for item in value if item is not None)
    if value is None and lookup != "exact":
        raise ProtocolError("bad_request", f"{key[:100]!r} cannot compare with null.")
    if lookup in _TEXT_LOOKUPS:
        if not isinstance(value, str):
            raise ProtocolError("bad_request", f"{key[:100]!r} takes a string.")
        _text(key, value)
        return value.lower() if lookup[0] == "i" else value
    return None if value is None else _value(field, read, key, value)


def field_of(config: ModelConfig, name: str) -> models.Field[Any, Any]:
    """The broadcast field a client names (``forbidden`` if it is not broadcast)."""
    opts = config.model._meta
    if name == "pk":
        name = opts.pk.name
    for field in config.broadcast_fields:
        if name in (field.name, field.attname):
            if field.get_internal_type() not in _FILTERABLE:
                raise ProtocolError("bad_request", f"Cannot filter on {name!r}.")
            return field
    if name in config.private_names:
        raise ProtocolError("forbidden", f"{name[:100]!r} is not broadcast.")
    try:
        opts.get_field(name)
    except FieldDoesNotExist:
        raise ProtocolError("bad_request", f"No field {name[:100]!r}.") from None
    raise ProtocolError("bad_request", f"Cannot filter on {name[:100]!r}.")  # (m2m, reverse)


def _reader(field: models.Field[Any, Any]) -> Callable[[Any], Any]:
    read = field.to_python
    if field.get_internal_type() == "DateTimeField" and settings.USE_TZ:

        def aware(value: Any) -> Any:
            moment = read(value)
            if isinstance(moment, datetime) and timezone.is_naive(moment):
                # As the ORM does with a naive value (it warns): the default time zone.
                return timezone.make_aware(moment, timezone.get_default_timezone())
            return moment

        return aware
    return read


def _value(field: models.Field[Any, Any], read: Callable[[Any], Any], key: str, value: Any) -> Any:
    kind = field.get_internal_type()
    if isinstance(value, bool) != (kind == "BooleanField") or not isinstance(
        value, str | int | float
    ):
        raise ProtocolError("bad_request", f"{key[:100]!r}: not a value for this field.")
    if isinstance(value, str):
        _text(key, value)
    if isinstance(value, float) and "Integer" in kind and not value.is_integer():
        raise ProtocolError("bad_request", f"{key[:100]!r} takes an integer.")
    try:
        result = read(value)
    except (ValidationError, TypeError, ValueError, OverflowError):
        raise ProtocolError("bad_request", f"{key[:100]!r}: not a value for this field.") from None
    if result is None:
        raise ProtocolError("bad_request", f"{key[:100]!r}: not a value for this field.")
    return result


def _text(key: str, value: str) -> None:
    valid_text(value, "where")
    if len(value) > conf.BROADCAST_FILTER_MAX_TEXT:
        raise ProtocolError(
            "bad_request",
            f"{key[:100]!r}: strings are limited to {conf.BROADCAST_FILTER_MAX_TEXT} characters.",
        )


# -- fan-out ---------------------------------------------------------------------------


def fan_out(
    groups: Mapping[Where, set[Any]], frame: str, event: dict[str, Any], hidden: str | None
) -> int:
    """Hand each filtered subscriber of a model its variant of ``frame`` (with ``match``
    and ``where``): each distinct ``where`` is tested once per event, each field's value
    read once. Returns how many subscribers got it."""
    full = event if "data" in event else json.loads(frame)
    state = _State(full, json.loads(hidden) if hidden else None)
    count = 0
    for key, members in list(groups.items()):
        found = key.compiled.match(state)
        if found is None or not members:
            continue
        if found == UNDECIDED:
            for subscriber in tuple(members):
                subscriber.reset(full["model"], key, UNDECIDED)
            count += len(members)
            continue
        text = variant(key, frame, found)
        variant_event = {**full, "match": found, "where": key.where, "sub": key}
        if found != "enter" and state.op == "updated":
            variant_event["old"] = state.known  # (see access.visible_frame)
        for subscriber in tuple(members):
            subscriber.deliver(text, variant_event)
        count += len(members)
    return count


def variant(key: Where, frame: str, found: Match) -> str:
    """``frame`` as ``key``'s subscription receives it: with ``match`` and ``where``."""
    return f'{frame[:-1]},"match":"{found}","where":{key[len(_MARK) :]}}}'


def replay_frames(key: Where, frames: list[tuple[str, str]]) -> list[tuple[str, str]] | None:
    """The frames of a resume as ``key``'s subscription receives them (old values are
    not in the log: see the module docstring); None if one of them is :data:`UNDECIDED`
    (the replay is then a ``reset``)."""
    result = []
    for event_id, frame in frames:
        found = key.compiled.match(_State(json.loads(frame), None))
        if found == UNDECIDED:
            return None
        if found is not None:
            result.append((event_id, variant(key, frame, found)))
    return result

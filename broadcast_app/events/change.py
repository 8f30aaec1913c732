"""The change event: values of broadcast fields, and the event's JSON.

On the wire an event is the ``change`` frame of ``docs/protocol.md``. A publishing
process builds every key but ``type`` and ``id``; Redis assigns the id and prepends
both, so the frame text is built once and sent as-is to every websocket client.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils.crypto import salted_hmac

from ..django_compat import loaded_values, prefetched

if TYPE_CHECKING:
    from .model_configs import ModelConfig

Op = Literal["created", "updated", "deleted"]

_MISSING: Any = object()


# Field classes whose ``to_python()`` returns a value of this type unchanged. Exact
# classes only: a subclass may convert differently.
NORMAL_TYPES: dict[type, type] = {
    **dict.fromkeys(
        (models.CharField, models.TextField, models.SlugField, models.EmailField),
        str,
    ),
    **dict.fromkeys(
        (
            models.IntegerField,
            models.BigIntegerField,
            models.SmallIntegerField,
            models.PositiveIntegerField,
            models.PositiveSmallIntegerField,
            models.PositiveBigIntegerField,
            models.AutoField,
            models.BigAutoField,
            models.SmallAutoField,
        ),
        int,
    ),
    models.BooleanField: bool,
    models.FloatField: float,
    models.DateTimeField: datetime,
    models.DateField: date,
    models.UUIDField: UUID,
}


def normalize(field: models.Field[Any, Any], value: Any) -> Any:
    """Bring a raw attribute value to the form it has after a database round trip.

    ``price = "12.5"`` and ``Decimal("12.50")`` must compare equal and serialize alike,
    or an event would differ from what a cache miss loads from the database.
    """
    if value is None:
        return None
    if type(value) is NORMAL_TYPES.get(type(field)):
        return value  # already what a database round trip gives (the common case)
    if (
        type(value) is Decimal
        and type(field) is models.DecimalField
        and value.is_finite()
        and value.same_quantum(_quantum(field.decimal_places))
    ):
        return value  # as loaded: to_python() and quantize() would give it back
    if isinstance(field, models.FileField):
        return getattr(value, "name", value) or None
    if field.is_relation:
        return value
    try:
        value = field.to_python(value)
    except (ValidationError, TypeError, ValueError):
        return value
    if isinstance(field, models.DecimalField) and isinstance(value, Decimal):
        with contextlib.suppress(InvalidOperation):  # too many digits: keep as is
            value = value.quantize(_quantum(field.decimal_places))
    return value


@functools.cache
def _quantum(places: int) -> Decimal:
    """``Decimal("0.01")`` for 2 places: what a decimal field's values are quantized to."""
    return Decimal(1).scaleb(-places)


# Values of these types cannot change in place, so a snapshot may share them.
_IMMUTABLE = frozenset(
    {type(None), str, int, float, bool, Decimal, datetime, date, time, timedelta, UUID, bytes}
)


def kept(field: models.Field[Any, Any], value: Any) -> Any:
    """``value`` as a snapshot keeps it: a copy if it could be changed in place.

    ``product.tags.append("x")`` on a ``JSONField`` list changes the very object a shared
    snapshot would hold, and the next save would see nothing changed.
    """
    if type(value) in _IMMUTABLE or value is _MISSING:
        return value
    if isinstance(field, models.FileField):
        return getattr(value, "name", value)  # a FieldFile's name can be reassigned
    try:
        return copy.deepcopy(value)
    except Exception:
        return value  # not copyable: compared as it is (loading must never fail here)


def raw_values(config: ModelConfig, instance: models.Model) -> dict[str, Any]:
    """Attribute values of the broadcast fields as loaded, without touching deferred ones
    (the snapshot the next save compares with; see :func:`kept`)."""
    loaded = loaded_values(instance)
    values: dict[str, Any] = {}
    for f in config.captured_fields:
        raw = loaded.get(f.attname, _MISSING)
        values[f.attname] = raw if raw is None or type(raw) is f.normal else kept(f.field, raw)
    return values


def field_values(config: ModelConfig, instance: models.Model) -> dict[str, Any]:
    """Normalized values of the broadcast fields, keyed by field name."""
    return {f.name: normalize(f, f.value_from_object(instance)) for f in config.broadcast_fields}


def m2m_values(config: ModelConfig, instance: models.Model) -> dict[str, list[Any]]:
    """The broadcast many-to-many fields as sorted lists of related pks (a query each)."""
    cache = prefetched(instance)
    result = {}
    for f in config.m2m_fields:
        if f.name in cache:
            pks = [obj.pk for obj in cache[f.name]]
        else:
            pks = list(getattr(instance, f.name).values_list("pk", flat=True))
        result[f.name] = sorted(pks)
    return result


def serialize(
    config: ModelConfig,
    instance: models.Model,
    values: dict[str, Any],
    m2m: dict[str, list[Any]] | None = None,
) -> dict[str, Any]:
    """The ``data`` of an event: the serializer hook's output, or the field values.

    Whatever a custom serializer returns, keys naming non-broadcast fields are dropped
    here, so an excluded field cannot reach a payload or a cache entry by mistake.
    """
    if config.serializer is None:
        data = dict(values)
        if config.m2m_fields:
            data.update(m2m_values(config, instance) if m2m is None else m2m)
        return data
    data = dict(config.serializer(instance))
    for name in config.private_names.intersection(data):
        del data[name]
    return data


def changed_fields(
    config: ModelConfig, before: dict[str, Any], after: dict[str, Any], partial: bool = False
) -> list[str]:
    """Broadcast fields whose normalized values differ, ``auto_now`` ones left out.

    A field missing from ``before`` counts as changed, unless ``before`` is ``partial``
    (a bulk update knows the old values of the fields it set, and only those).
    """
    return [
        f.name
        for f in config.broadcast_fields
        if f.name not in config.volatile_names
        and not f.primary_key
        and not (partial and f.name not in before)
        and before.get(f.name, _MISSING) != after.get(f.name, _MISSING)
    ]


def to_json_data(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` as it reads after a JSON round trip (what the cache and clients hold)."""
    result: dict[str, Any] = json.loads(json.dumps(data, cls=DjangoJSONEncoder))
    return result


def iso_time(moment: float) -> str:
    """A ``time.time()`` in UTC ISO 8601 with microseconds (the ``ts`` of events)."""
    global _iso_second
    second = int(moment)
    known, prefix = _iso_second
    if second != known:
        # Formatting a datetime is most of an event's encoding when the publisher
        # thread runs cold; its date and time to the second rarely change.
        prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _iso_second = (second, prefix)
    # Truncated, not rounded, to the microsecond: never the next second's text.
    return f"{prefix}{int((moment - second) * 1_000_000):06d}Z"


_iso_second: tuple[int | None, str] = (None, "")


@dataclass(slots=True)
class Change:
    """One captured change of one row, before coalescing and publication."""

    config: ModelConfig
    pk: str
    op: Op
    data: dict[str, Any]
    values: dict[str, Any]
    before: dict[str, Any] | None = None
    confirmed: bool = False
    #: ``before`` holds only the fields a bulk update set
    partial: bool = False
    #: fields known to have changed without a value comparison (many-to-many, bulk)
    forced: frozenset[str] = frozenset()
    #: the websocket whose page made the change (``X-Socket-ID``), and whether to skip it
    socket_id: str | None = None
    to_others: bool = False
    #: broadcast fields ``data`` leaves out, unchanged by this change (see incomplete.py)
    unknown: tuple[str, ...] = ()
    #: ``changed()``, once computed (a change is not modified after it is made)
    _changed: list[str] | None = None

    def confirm(self) -> None:
        """Commit hook: the savepoint this change was made in was not rolled back."""
        self.confirmed = True

    @property
    def label(self) -> str:
        return self.config.label

    def changed(self) -> list[str]:
        """The ``changed`` list of an ``updated`` event built from this change."""
        if self.op != "updated":
            return []
        if self._changed is None:
            names = set(self.forced)
            if self.before is not None:
                names.update(changed_fields(self.config, self.before, self.values, self.partial))
            names -= self.config.volatile_names
            order = self.config.field_order
            self._changed = sorted(names, key=lambda name: order.get(name, len(order)))
        return self._changed

    def worth_publishing(self) -> bool:
        """False for an update that changed no broadcast field (it publishes nothing)."""
        return self.op != "updated" or bool(self.changed())

    def previous(self, changed: list[str]) -> dict[str, Any]:
        """Old values of the changed fields that are known (not many-to-many), only of
        fields ``data`` carries: what a serializer hook leaves out, ``previous`` does too."""
        before = self.before or {}
        data, private = self.data, self.config.private_names
        return {
            name: before[name]
            for name in changed
            if name in before and name in data and name not in private
        }


@dataclass(slots=True)
class Saved:
    """One save as read in ``save()``: the attribute values, not compared yet.

    ``save()`` only copies attribute values; :meth:`change` works out the values, the
    old values and ``changed``. For an autocommit save of a model whose data needs no
    instance (no serializer hook, no many-to-many), the publisher thread does that
    part, off the saving thread.
    """

    config: ModelConfig
    pk: str
    created: bool
    #: attribute values now, by attname: the instance's next snapshot (see :func:`kept`)
    current: dict[str, Any]
    #: the snapshot this save compares with ({} for a created row)
    snapshot: dict[str, Any]
    #: attnames that were deferred at save time (loaded by the save, not changed by it)
    deferred: frozenset[str] | set[str]
    socket_id: str | None = None
    to_others: bool = False

    @property
    def label(self) -> str:
        return self.config.label

    def change(
        self, instance: models.Model | None = None, m2m: dict[str, list[Any]] | None = None
    ) -> Change:
        """The change this save made (``instance``: for a serializer hook, many-to-many
        data and fields read through ``value_from_object()``; ``m2m``: the many-to-many
        data, where known without the instance's relations)."""
        config, current, snapshot, created = self.config, self.current, self.snapshot, self.created
        values: dict[str, Any] = {}
        before: dict[str, Any] = {}
        changed: list[str] = []
        for f in config.captured_fields:
            raw = current[f.attname]
            if raw is None or type(raw) is f.normal:
                value = raw
            elif f.direct or instance is None:
                value = normalize(f.field, raw)
            else:
                value = normalize(f.field, f.field.value_from_object(instance))
            values[f.name] = value
            if created:
                continue
            old = snapshot.get(f.attname, _MISSING)
            if old is _MISSING:
                if f.attname in self.deferred:
                    # Still deferred at save time: this save did not touch it.
                    before[f.name] = value
                elif f.tracked:
                    # Deferred at load time and assigned since: changed.
                    changed.append(f.name)
            elif old is raw or old == raw:
                before[f.name] = value  # (the usual case: the very object loaded)
            else:
                old_value = before[f.name] = normalize(f.field, old)
                if f.tracked and old_value != value:
                    changed.append(f.name)
        data = dict(values) if instance is None else serialize(config, instance, values, m2m)
        op: Op = "created" if created else "updated"
        return Change(
            config,
            self.pk,
            op,
            data,
            values,
            None if created else before,
            socket_id=self.socket_id,
            to_others=self.to_others,
            _changed=None if created else changed,
        )


def resolved(item: Change | Saved) -> Change:
    """``item`` as a :class:`Change` (a :class:`Saved` of a model that needs no instance)."""
    return item.change() if isinstance(item, Saved) else item


def merge(first: Change, later: Change) -> Change | None:
    """One change equivalent to ``first`` then ``later`` on the same row (None: no-op)."""
    if first.op == "created":
        if later.op == "deleted":
            return None  # never visible outside the transaction
        return _combined(first, later, "created", None)
    if later.op == "deleted":
        return _combined(first, later, "deleted", None)
    # first updated or deleted, later created or updated: the row existed before the
    # transaction and exists after it, so it is an update against its original values.
    if first.before is None:
        return _combined(first, later, "updated", first.values)
    if first.partial and later.before is not None:
        # The bulk update knew only the fields it set; the later change knows the rest.
        before = {**later.before, **first.before}
        return _combined(first, later, "updated", before, later.partial)
    return _combined(first, later, "updated", first.before, first.partial)


def _combined(
    first: Change,
    later: Change,
    op: str,
    before: dict[str, object] | None,
    partial: bool = False,
) -> Change:
    data, values, unknown = later.data, later.values, later.unknown
    if unknown and op != "deleted":
        # What ``later`` leaves out it did not change: ``first`` may know it.
        data, values = {**first.data, **data}, {**first.values, **values}
        unknown = tuple(n for n in unknown if n not in data)
    return Change(
        config=first.config,
        pk=first.pk,
        op=op,  # type: ignore[arg-type]
        data=data,
        values=values,
        before=before,
        confirmed=True,
        partial=partial,
        forced=first.forced | later.forced,
        socket_id=later.socket_id or first.socket_id,
        to_others=later.to_others or first.to_others,
        unknown=unknown,
    )


def origin_id(instance_id: str, secret: str | None = None) -> str:
    """The ``origin`` of the events of the process ``instance_id``: opaque to clients.

    Every subscriber reads ``origin``; the instance id (by default ``host:pid``) is for
    staff, whose dashboard maps one to the other. Keyed with ``SECRET_KEY`` (or
    ``secret``), so that it cannot be worked back by trying hosts and pids.
    """
    key = (secret if secret is not None else settings.SECRET_KEY, instance_id)
    try:
        return _origins[key]
    except KeyError:
        pass
    digest = salted_hmac("broadcast_app.origin", instance_id, secret=key[0], algorithm="sha256")
    if len(_origins) > 1000:
        _origins.clear()  # (relayed events name other processes: keep this bounded)
    value = _origins[key] = digest.hexdigest()[:16]
    return value


# Read for every published event.
_origins: dict[tuple[str, str], str] = {}


def event_body(change: Change, ts: str, instance_id: str) -> str:
    """The event JSON without its opening ``{`` and without ``type`` and ``id``
    (``instance_id``: the saving process's, given as ``origin_id()``).

    Redis prepends ``{"type":"change","id":"<id>",`` when it assigns the id.
    """
    changed = change.changed()
    event: dict[str, Any] = {
        "op": change.op,
        "model": change.label,
        "pk": change.pk,
        "data": change.data,
        "changed": changed,
        "ts": ts,
        "origin": origin_id(instance_id),
    }
    if change.config.previous and change.op == "updated":
        event["previous"] = change.previous(changed)
    if change.socket_id is not None:
        event["socket_id"] = change.socket_id
        event["to_others"] = change.to_others
    if change.unknown:
        event["unknown"] = list(change.unknown)
    body: str = _encode(event)[1:]
    if change.op == "updated" and not change.config.previous:
        # The old values filtered subscriptions compare with (see filters.py): behind
        # the JSON, cut off by instances before a client sees the frame.
        old = change.previous(changed)
        if old:
            body += HIDDEN + _encode(old)
    return body


_ENCODER = DjangoJSONEncoder(separators=(",", ":"))
#: between an event body's JSON and what only instances read (never in JSON text: the
#: encoder escapes control characters)
HIDDEN = "\x1e"


def split_hidden(frame: str) -> tuple[str, str | None]:
    """A frame (or event body) without its hidden tail, and the tail (None without one)."""
    cut = frame.find(HIDDEN)
    if cut < 0:
        return frame, None
    return frame[:cut], frame[cut + 1 :]


# The public encoder: one C encoder made once (json.encoder.c_make_encoder, which is
# undocumented) saved too little for the benchmark to tell apart (see "Private APIs we
# use" in docs/architecture.md).
_encode = _ENCODER.encode


def frame_from_body(event_id: str, body: str) -> str:
    """Rebuild a full ``change`` frame from a stored body (mirrors the Lua script)."""
    return '{"type":"change","id":"' + event_id + '",' + body


# The start of every change frame, as event_body() and the publish script write it.
# Labels are lower-case identifiers; an id or a pk with a quote or a backslash in it does
# not match (the whole frame is parsed then).
_HEAD = re.compile(
    r'\{"type":"change","id":"([^"\\]*)","op":"[a-z]+","model":"([a-z0-9_]+\.[a-z0-9_]+)",'
    r'"pk":"([^"\\]*)",'
)


def frame_head(frame: str) -> dict[str, str] | None:
    """``id``, ``model`` and ``pk`` of a change frame, read without parsing the rest: what
    routing the frame to subscribers needs. None when that is not enough: the event names
    the websocket it came from (``socket_id``), or its start is not as we write it."""
    if '"socket_id":' in frame:
        return None
    match = _HEAD.match(frame)
    if match is None:
        return None
    return {"id": match[1], "model": match[2], "pk": match[3]}


def id_key(event_id: str) -> tuple[int, int]:
    """Sort key of an event id within one epoch; ids are otherwise opaque.

    An id is ``<stream id>:<epoch>``, the stream id being Redis's ``<ms>-<seq>``.
    """
    ms, _, seq = event_id.partition(":")[0].partition("-")
    return int(ms), int(seq or 0)

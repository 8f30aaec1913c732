"""The change event: values of broadcast fields, their diff, two changes of a row
merged. Its wire form (JSON body, frame, ids) is :mod:`.wire`'s.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID

from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

from ..django_compat import loaded_values, prefetched

# Their old home: importable from here as before the split.
from .wire import (  # noqa: F401
    HIDDEN,
    event_body,
    frame_from_body,
    frame_head,
    id_key,
    iso_time,
    origin_id,
    split_hidden,
)

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
    #: broadcast fields ``data`` leaves out, unchanged by this change (see capture/incomplete.py)
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

"""A queryset's filter as a ``where`` (docs/protocol.md), so that a page showing a
filtered queryset subscribes to the rows it shows: ``live_table`` and the live admin
changelist.

Only what a filtered subscription can evaluate is translated: lookups ANDed together
(``filter(a=1, b__lt=2)``, chained ``filter()`` calls), each on one of the model's own
fields with a plain value and a lookup of :data:`~.filters.LOOKUPS`. Anything else —
``exclude()``, ``Q(...) | Q(...)``, a lookup across a relation (``category__name``), an
expression (``F("stock")``), a subquery, ``iexact`` or any other lookup — raises
:class:`UntranslatableFilter` naming it: a live view of such a queryset would show rows
that do not belong, or miss rows that do. ``.none()`` becomes ``{"pk__in": []}`` (nothing
matches). Django's query tree is read in :func:`~.django_compat.filter_lookups`.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from django.db import models

from ..django_compat import NotAnded, filter_lookups
from ..events.filters import LOOKUPS

__all__ = ["UntranslatableFilter", "where_of"]


class UntranslatableFilter(ValueError):
    """A queryset's filter has no ``where`` equivalent; the message says which part."""


def where_of(queryset: models.QuerySet[Any]) -> dict[str, Any] | None:
    """The ``where`` selecting the rows ``queryset`` filters, or None if it filters
    nothing. Raises :class:`UntranslatableFilter`."""
    try:
        lookups = filter_lookups(queryset)
    except NotAnded as exc:
        raise UntranslatableFilter(str(exc)) from None
    if lookups is None:
        return {"pk__in": []}
    where: dict[str, Any] = {}
    for field, lookup_name, rhs in lookups:
        if field is None:
            raise UntranslatableFilter(
                f"a {lookup_name!r} lookup is not on one of the model's own fields "
                "(across a relation, or on an expression)"
            )
        if lookup_name not in LOOKUPS:
            raise UntranslatableFilter(
                f"{field.name}__{lookup_name}: live filters have no {lookup_name!r}"
            )
        key = field.name if lookup_name == "exact" else f"{field.name}__{lookup_name}"
        value = _value(rhs, field.name)
        if key in where and where[key] != value:
            raise UntranslatableFilter(f"it filters {key!r} twice with different values")
        where[key] = value
    return where or None


def _value(value: Any, name: str) -> Any:
    """A lookup's right-hand side as JSON (as an event's data would carry it)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, list | tuple | set | frozenset):
        items = [_value(item, name) for item in value]
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    if isinstance(value, models.Model):
        return _value(value.pk, name)
    raise UntranslatableFilter(
        f"{name} is compared with a {type(value).__name__} (an expression or a subquery), "
        "not a value"
    )

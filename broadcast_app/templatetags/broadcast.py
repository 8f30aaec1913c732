"""Live templates without writing JavaScript: ``{% load broadcast %}``.

``{% broadcast_client %}``
    The stylesheet and the script that keep every tag below current (once per page,
    anywhere in it; the script is a deferred ES module).
``{% broadcast_status %}``
    A badge showing the connection's state: connecting, open, reconnecting, closed.
``{% live_field product "price" %}``
    The field's value in an element the script updates when the object changes
    (options: ``element="td"``, ``css_class="num"``).
``{% live_table products "name" "sku" "price" %}``
    A table of the rows given (a queryset or model instances; dicts with ``model=``)
    whose rows are updated, inserted and removed as changes arrive, changed cells
    highlighted (options: ``order="pk"|"-pk"|"top"|"bottom"``, ``empty="…"``,
    ``table_id="…"``, ``css_class="…"``). A filtered queryset
    (``Product.objects.filter(stock__lt=5)``) stays true: its filter becomes the
    subscription's ``where``, rows that enter it appear and rows that leave it go. A
    filter a ``where`` cannot express (``exclude()``, ``|``, a lookup across a relation,
    an ``F()``, a lookup such as ``iexact``) is refused with
    :class:`UntranslatableQueryset`, naming the part.

Values are rendered from the object's *broadcast data* — what an event would carry —
so a page shows exactly what its updates will show. A field that is not broadcast
(excluded in ``broadcast_app.register``) is refused with :class:`NotBroadcastField`:
these tags never render it, and it would never update anyway.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Any

from django import template
from django.core.exceptions import FieldDoesNotExist
from django.db import models
from django.templatetags.static import static
from django.utils import formats, timezone
from django.utils.dateparse import parse_date, parse_datetime
from django.utils.html import conditional_escape, format_html
from django.utils.safestring import SafeString
from django.utils.text import capfirst

from ..events.change import field_values, serialize, to_json_data
from ..events.filters import compile_where
from ..events.frames import ProtocolError
from ..events.model_configs import ModelConfig, NotRegistered, get_config
from ..web.positions import render_since
from ..web.querysets import UntranslatableFilter, where_of

register = template.Library()

_ELEMENT = re.compile(r"^[a-z][a-z0-9]{0,15}$")
_ORDERS = ("bottom", "top", "pk", "-pk")


class NotBroadcastField(template.TemplateSyntaxError):
    """A live tag was given a field (or model) that does not broadcast."""


class UntranslatableQueryset(template.TemplateSyntaxError):
    """``live_table`` was given a queryset whose filter no ``where`` can express."""


# -- building blocks ------------------------------------------------------------------


def _config(model: type[models.Model] | str) -> ModelConfig:
    try:
        return get_config(model)
    except NotRegistered as exc:
        raise NotBroadcastField(
            f"{exc.args[0]} is not registered with broadcast_app.register(): "
            "live tags only work for models that broadcast."
        ) from None


def _field_name(config: ModelConfig, name: str) -> str:
    """Check that ``name`` broadcasts for this model; return its key in the data."""
    if name == "pk":
        return config.model._meta.pk.name
    if name in config.private_names:
        raise NotBroadcastField(
            f"{config.label}.{name} is not broadcast (it is excluded in "
            "broadcast_app.register), so live tags refuse to render it."
        )
    broadcast = [f.name for f in config.broadcast_fields]
    # A custom serializer may add keys of its own; without one, only fields exist.
    if config.serializer is None and name not in broadcast:
        raise NotBroadcastField(
            f"{config.label} has no broadcast field {name!r}; "
            f"live tags can show: {', '.join(broadcast)}."
        )
    return name


def _kind(config: ModelConfig, name: str) -> str:
    """How a value is shown: ``datetime``, ``date``, ``bool``, ``number`` or ``text``."""
    try:
        field = config.model._meta.get_field(name)
    except FieldDoesNotExist:
        return "text"
    if isinstance(field, models.DateTimeField):
        return "datetime"
    if isinstance(field, models.DateField):
        return "date"
    if isinstance(field, models.BooleanField):
        return "bool"
    if isinstance(field, models.IntegerField | models.DecimalField | models.FloatField):
        return "number"
    return "text"


def _label(config: ModelConfig, name: str) -> str:
    try:
        field = config.model._meta.get_field(name)
    except FieldDoesNotExist:
        return capfirst(name.replace("_", " "))
    return capfirst(str(getattr(field, "verbose_name", name)))


def _data(config: ModelConfig, obj: Any) -> dict[str, Any]:
    """The broadcast data of a model instance, or of a dict of field values."""
    if isinstance(obj, models.Model):
        return to_json_data(serialize(config, obj, field_values(config, obj)))
    if isinstance(obj, Mapping):
        pk_name = config.model._meta.pk.name
        allowed = {f.name for f in config.broadcast_fields}
        data = {key: value for key, value in obj.items() if key in allowed}
        if pk_name not in data and "pk" in obj:
            data[pk_name] = obj["pk"]
        return to_json_data(data)
    raise template.TemplateSyntaxError(
        f"live tags need model instances or dicts of {config.label} fields, got {obj!r}."
    )


def render_value(value: Any, kind: str) -> SafeString:
    """A broadcast value as HTML; ``broadcast_app/js/live.js`` renders updates alike."""
    if value is None:
        return SafeString("")
    if kind == "bool":
        return SafeString("Yes" if value else "No")
    if kind == "datetime" and isinstance(value, str):
        moment = parse_datetime(value)
        if moment is not None:
            shown = formats.date_format(timezone.localtime(moment), "DATETIME_FORMAT")
            return format_html('<time datetime="{}">{}</time>', value, shown)
    if kind == "date" and isinstance(value, str):
        day = parse_date(value)
        if day is not None:
            return format_html('<time datetime="{}">{}</time>', value, formats.date_format(day))
    if isinstance(value, datetime | date):  # a serializer's own output, not JSON-normalized
        value = value.isoformat()
    return conditional_escape(str(value))


def _where(config: ModelConfig, rows: Iterable[Any]) -> str:
    """The ``where`` (as JSON) keeping a filtered queryset's rows true; "" for others."""
    if not isinstance(rows, models.QuerySet):
        return ""
    try:
        where = where_of(rows)
    except UntranslatableFilter as exc:
        raise UntranslatableQueryset(
            f"live_table cannot keep this {config.label} queryset true: {exc}. Filter "
            "with ANDed lookups on broadcast fields (see docs/protocol.md, 'where'), or "
            "pass its rows as a list with model= (the table then follows every row of "
            "the model, not the filter)."
        ) from None
    if where is None:
        return ""
    try:
        compile_where(config, where)
    except ProtocolError as exc:
        error = NotBroadcastField if exc.code == "forbidden" else UntranslatableQueryset
        raise error(f"live_table cannot follow this {config.label} queryset: {exc}") from None
    return json.dumps(where, sort_keys=True)


def _since(config: ModelConfig) -> str:
    # An event the page's state includes: a resuming server can replay whatever happens
    # between this render and the subscription (see broadcast_app.web.positions).
    return render_since(config.label) or ""


# -- tags -----------------------------------------------------------------------------


@register.simple_tag
def broadcast_client() -> SafeString:
    """The stylesheet and the ES module that keep the page's live tags current."""
    return format_html(
        '<link rel="stylesheet" href="{}">\n<script type="module" src="{}"></script>',
        static("broadcast_app/css/live.css"),
        static("broadcast_app/js/page.js"),
    )


@register.simple_tag
def broadcast_status() -> SafeString:
    """A badge showing the websocket's state (``data-status`` is styled by live.css)."""
    return format_html(
        '<span class="broadcast-status" data-broadcast-status data-status="connecting" '
        'role="status" aria-live="polite">{}</span>',
        "connecting…",
    )


@register.simple_tag
def live_field(
    obj: models.Model, field: str, element: str = "span", css_class: str = ""
) -> SafeString:
    """One field of one object, kept current; a field that is not broadcast is refused."""
    if not isinstance(obj, models.Model):
        raise template.TemplateSyntaxError(
            f"live_field needs a model instance, got {obj!r} (for {field!r})."
        )
    if not _ELEMENT.match(element):
        raise template.TemplateSyntaxError(f"live_field: {element!r} is not an element name.")
    config = _config(type(obj))
    name = _field_name(config, field)
    kind = _kind(config, name)
    data = _data(config, obj)
    return format_html(
        '<{} class="broadcast-field{}" data-broadcast-model="{}" data-broadcast-pk="{}" '
        'data-broadcast-field="{}" data-broadcast-kind="{}" data-broadcast-since="{}">{}</{}>',
        SafeString(element),
        f" {css_class}" if css_class else "",
        config.label,
        str(obj.pk),
        name,
        kind,
        _since(config),
        render_value(data.get(name), kind),
        SafeString(element),
    )


@register.inclusion_tag("broadcast_app/live_table.html")
def live_table(
    rows: Iterable[Any],
    *fields: str,
    model: type[models.Model] | str | None = None,
    order: str = "bottom",
    empty: str = "Nothing here yet.",
    table_id: str = "",
    css_class: str = "",
) -> dict[str, Any]:
    """A table of ``rows`` showing ``fields``, kept current: rows updated, added, removed."""
    if model is None:
        model = getattr(rows, "model", None)
    if model is None:
        raise template.TemplateSyntaxError(
            "live_table needs a queryset, or model='app_label.model' with other rows."
        )
    if order not in _ORDERS:
        raise template.TemplateSyntaxError(
            f"live_table: order must be one of {', '.join(_ORDERS)}, not {order!r}."
        )
    config = _config(model)
    # Read before the rows are (a queryset is evaluated below): an event published
    # after this id and before the rows were read is replayed, never skipped.
    since = _since(config)
    where = _where(config, rows)
    pk_name = config.model._meta.pk.name
    names = [_field_name(config, name) for name in fields] or [
        f.name for f in config.broadcast_fields if not f.primary_key
    ]
    columns = [
        {
            "name": name,
            "label": _label(config, name),
            "kind": _kind(config, name),
        }
        for name in names
    ]
    table_rows = []
    for row in rows:
        data = _data(config, row)
        cells = [
            {**column, "html": render_value(data.get(column["name"]), column["kind"])}
            for column in columns
        ]
        table_rows.append({"pk": str(data.get(pk_name)), "cells": cells})
    return {
        "model": config.label,
        "columns": columns,
        "rows": table_rows,
        "order": order,
        "empty": empty,
        "table_id": table_id,
        "css_class": css_class,
        "since": since,
        "where": where,
    }

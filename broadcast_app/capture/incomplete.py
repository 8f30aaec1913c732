"""The change of a save whose instance lacks part of its event data, made without a query.

An instance loaded with ``only()``/``defer()`` lacks its deferred fields, and one whose
many-to-many fields were not prefetched lacks their values. Reading them would cost the
user's save a query (in autocommit, inside ``save()``), so the event carries what the
instance has, and its ``unknown`` key names the broadcast fields it leaves out. Those
are unchanged by the save: Django saves the loaded fields only, and ``save()`` does not
touch many-to-many relations (their changes are events of their own).

Only where nothing else needs the whole row at capture time: no ``serializer`` hook
(it may read any field), no ``object_check`` (it decides on the data), ``best_effort``
delivery (the outbox reads such rows back at relay time, off the save path anyway), and
not for a created row. Elsewhere the row is read back at commit (:mod:`.rows`).
"""

from __future__ import annotations

from typing import Any

from django.db import models

from ..conf import conf
from ..django_compat import prefetched
from ..events.change import _MISSING, Change, normalize
from ..events.model_configs import ModelConfig


def applies(config: ModelConfig, created: bool) -> bool:
    """Whether a save of an incomplete instance of ``config`` is published as it is."""
    return (
        not created
        and config.serializer is None
        and config.object_check is None
        and conf.BROADCAST_DELIVERY != "outbox"
    )


def change(
    config: ModelConfig,
    instance: models.Model,
    current: dict[str, Any],
    snapshot: dict[str, Any],
) -> Change:
    """The ``updated`` change of this save: the loaded fields' values, compared with the
    ``snapshot`` taken when they were loaded (``current``: the attribute values now, as
    :func:`.events.raw_values` reads them)."""
    values: dict[str, Any] = {}
    before: dict[str, Any] = {}
    assigned: set[str] = set()
    unknown: list[str] = []
    for f in config.captured_fields:
        raw = current[f.attname]
        if raw is _MISSING:
            unknown.append(f.name)
            continue
        if raw is None or type(raw) is f.normal:
            value = raw
        elif f.direct:
            value = normalize(f.field, raw)
        else:
            value = normalize(f.field, f.field.value_from_object(instance))
        values[f.name] = value
        old = snapshot.get(f.attname, _MISSING)
        if old is not _MISSING:
            before[f.name] = normalize(f.field, old)
        elif f.tracked:
            assigned.add(f.name)  # deferred when loaded, assigned since
    data = dict(values)
    loaded = prefetched(instance)
    for m2m in config.m2m_fields:
        if m2m.name in loaded:
            data[m2m.name] = sorted(obj.pk for obj in loaded[m2m.name])
        else:
            unknown.append(m2m.name)
    return Change(
        config,
        str(instance.pk),
        "updated",
        data,
        values,
        before,
        forced=frozenset(assigned),
        unknown=tuple(unknown),
    )

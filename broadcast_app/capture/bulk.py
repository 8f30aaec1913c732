"""Bulk writes: ``QuerySet.update()``, ``bulk_create()``, ``bulk_update()``, and
:func:`publish_changes` for writes outside the ORM.

These fire no save signals, so broadcast_app wraps the three ``QuerySet`` methods once,
when the first model is registered, and ``QuerySet.delete()`` too (see below); for
models that are not registered the wrappers only add a dictionary lookup. A write
through a proxy publishes as its concrete model, one through a multi-table child for
the child and each registered parent (:func:`~.model_configs.configs_for`).

``update()`` first selects the matching pks (``SELECT ... FOR UPDATE`` where the database
supports it) and the old values of the fields it sets, then updates exactly those rows
by pk in chunks, inside one transaction: the rows broadcast are exactly the rows
updated, with no race against concurrent writers. Where the filter names the rows by pk
(``filter(pk=...)``, ``filter(pk__in=[...])``: :func:`~.django_compat.known_pks`) and no
model asks for ``previous``, nothing is selected first: Django's own ``update()`` runs
as it is, and every field it sets is reported changed, with no old value.

``bulk_create()`` publishes the rows from the objects themselves where the database
returned their pks (:func:`~.capture.inserted_change`); only an object that does not
hold its row as written (a value the database computed and did not return), a model
with a ``serializer`` hook, an upsert and ``ignore_conflicts`` are read back at commit.

``delete()`` is Django's own, its ``post_delete`` captures gathered into one compact
:class:`~.rows.DeletedRows` (Django's collector, with our receiver, loads every matching
row at once, as with any receiver: the queries are Django's). With
``BROADCAST_DELETE_CHUNK_SIZE`` set, memory is bounded instead: the rows are locked and
selected, then handed to Django's deletion collector a chunk at a time (so cascades,
``on_delete`` handlers, other receivers and many-to-many cleanup work as ever): up to a
chunk, the collector gets the instances read; beyond, the pks are selected and the rows
deleted a chunk at a time. Where that chunked path cannot run on the installed Django
(its internals, all in :mod:`.django_compat`, are not as known), Django's own
``delete()`` runs, and its rows are captured the same way.

Every Django internal this module relies on is read through :mod:`.django_compat`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from functools import wraps
from typing import Any

from django.db import NotSupportedError, connections, router, transaction
from django.db.models import Model, QuerySet

from .. import django_compat
from ..conf import conf
from ..events.change import _MISSING, Change, Op, normalize, raw_values
from ..events.model_configs import ModelConfig, configs_for, get_config
from ..events.row_sets import DeletedRows, RowSet
from ..stats import stats
from .receivers import collect_deleted, inserted_change, record_item, snapshot_key, snapshots

logger = logging.getLogger(__name__)

__all__ = ["publish_changes"]

_CHUNK = 1000
# Set while a wrapped method runs: bulk_update() calls update() internally.
_inside: ContextVar[bool] = ContextVar("broadcast_bulk", default=False)
_original: dict[str, Any] = {}


def publish_changes(
    model: type[Model] | str,
    pks: Iterable[Any],
    *,
    op: Op = "updated",
    changed: Sequence[str] | None = None,
    using: str | None = None,
) -> None:
    """Broadcast rows changed outside the ORM (raw SQL, another program).

    After the current transaction on ``using`` commits (at once outside one), the rows
    are read back and one event per row is published. ``changed`` names the fields an
    update changed (default: every broadcast field). For ``deleted`` the rows are gone:
    the event's data holds only the primary key.
    """
    config = get_config(model)
    if op not in ("created", "updated", "deleted"):
        raise ValueError(f"op must be 'created', 'updated' or 'deleted', not {op!r}")
    forced: frozenset[str] = frozenset()
    if op == "updated":
        names = changed if changed is not None else list(config.field_order)
        forced = frozenset(names) - {config.model._meta.pk.name} - config.volatile_names
    rows = RowSet(config, op, [str(pk) for pk in pks], forced=forced)
    if rows.pks:
        record_item(rows, using or router.db_for_write(config.model))


def install() -> None:
    """Wrap the bulk ``QuerySet`` methods (once per process), unless
    ``BROADCAST_WRAP_QUERYSETS`` is False."""
    if _original or not conf.BROADCAST_WRAP_QUERYSETS:
        return
    for name, wrapper in (
        ("update", _update),
        ("bulk_create", _bulk_create),
        ("bulk_update", _bulk_update),
        ("delete", _delete),
    ):
        _original[name] = original = getattr(QuerySet, name)
        # wraps() also copies alters_data (templates must never call these) and
        # queryset_only (managers built later must not grow a delete()).
        setattr(QuerySet, name, wraps(original)(wrapper))


def _configs(qs: QuerySet[Any]) -> tuple[ModelConfig, ...]:
    """The registered models whose rows a write through ``qs`` changes (none: not ours)."""
    if _inside.get() or not conf.BROADCAST_ENABLED or not conf.BROADCAST_WRAP_QUERYSETS:
        return ()
    return configs_for(qs.model)


def _chunks(qs: QuerySet[Any], pks: list[str], size: int) -> Iterator[QuerySet[Any]]:
    """``qs``'s rows by pk, ``size`` at a time, each a queryset of ``qs``'s own class (a
    custom QuerySet's overrides stay in the path), without its filters or ordering."""
    base = type(qs)(model=qs.model, using=qs.db)
    for start in range(0, len(pks), size):
        yield base.filter(pk__in=pks[start : start + size])


def _update(self: QuerySet[Any], **kwargs: Any) -> int:
    configs = _configs(self)
    chosen = [(c, _broadcast_fields(c, kwargs)) for c in configs]
    chosen = [(c, fields) for c, fields in chosen if fields]
    if not chosen or not _narrowable(self):
        # Nothing broadcast is set (or Django will refuse the update itself).
        return int(_original["update"](self, **kwargs))
    # A model that sends ``previous`` asked for the old values: they are read first.
    known = None if any(c.previous for c, _ in chosen) else django_compat.known_pks(self)
    if known is not None:
        return _update_by_pk(self, kwargs, chosen, known)
    # One read for every config: a child's fields include its parents'.
    read = list({f.attname: f for _, fields in chosen for f in fields}.values())
    using = django_compat.write_db(self)
    qs = self.using(using)  # read where update() writes (a replica may lag)
    token = _inside.set(True)
    try:
        with _transaction(using):
            pks, before = _lock_and_read(qs, read)
            count = 0
            # At least once: with no row, Django must still accept or refuse the update.
            for start in range(0, max(len(pks), 1), _CHUNK):
                # The user's queryset itself, narrowed to the rows read: its annotations,
                # ordering and class stay, so Django accepts or refuses the update (with
                # its own message) and builds its SQL exactly as without us.
                chunk = qs.filter(pk__in=pks[start : start + _CHUNK])
                count += _original["update"](chunk, **kwargs)
            if pks:
                for config, fields in chosen:
                    names = [f.name for f in fields]
                    mine = {pk: {n: values[n] for n in names} for pk, values in before.items()}
                    record_item(RowSet(config, "updated", pks, before=mine), using)
    finally:
        _inside.reset(token)
    return count


def _update_by_pk(
    qs: QuerySet[Any],
    kwargs: dict[str, Any],
    chosen: list[tuple[ModelConfig, list[Any]]],
    pks: list[str],
) -> int:
    """An update whose rows its filter names by pk: Django's own ``update()``, nothing
    selected before it (its queries are Django's, in number and SQL). The old values are
    not read, so every field it sets is reported changed, with no previous value (a
    filtered subscription then decides by the new values: see filters.py); the rows are
    read back at commit, as after any update, and a pk no row has publishes nothing."""
    using = django_compat.write_db(qs)
    token = _inside.set(True)
    try:
        count = int(_original["update"](qs, **kwargs))
    finally:
        _inside.reset(token)
    if count and pks:
        for config, fields in chosen:
            forced = frozenset(f.name for f in fields)
            # before={}: old values known for no field (bulk semantics: see Change.partial).
            record_item(RowSet(config, "updated", pks, before={}, forced=forced), using)
    return count


def _narrowable(qs: QuerySet[Any]) -> bool:
    """Whether ``qs`` can be narrowed with ``filter()``: Django refuses that of a sliced or
    combined (``union()`` …) queryset, as it refuses their ``update()``: such an update
    goes to Django unchanged, to be refused with Django's own message."""
    try:
        qs.filter(pk__in=())
    except (TypeError, NotSupportedError):
        return False
    return True


def _transaction(using: str, *, savepoint: bool = False) -> AbstractContextManager[Any]:
    """A transaction for a read and the writes it guards; inside the caller's, none (or
    a savepoint if asked): an ``atomic(savepoint=False)`` there would doom the caller's
    transaction on any error, even one Django raises before writing (an update it
    refuses, a ProtectedError), where Django leaves the transaction usable."""
    if connections[using].in_atomic_block and not savepoint:
        return nullcontext()
    return transaction.atomic(using=using)


def _broadcast_fields(config: ModelConfig, kwargs: dict[str, Any]) -> list[Any]:
    return [
        f
        for f in config.broadcast_fields
        if (f.name in kwargs or f.attname in kwargs) and f.name not in config.volatile_names
    ]


def _locked(qs: QuerySet[Any]) -> QuerySet[Any]:
    """``qs`` unordered, its rows locked until commit where the database can."""
    features = connections[qs.db].features
    if not features.has_select_for_update:
        return qs.order_by()
    lockable = django_compat.may_lock(qs)
    if lockable is False:
        return qs.order_by()  # FOR UPDATE is refused with GROUP BY: read without a lock
    if lockable is None:
        # Unknown: lock the rows by pk, selected by a subquery (valid with GROUP BY too).
        qs = type(qs)(model=qs.model, using=qs.db).filter(pk__in=qs.order_by().values("pk"))
    return qs.select_for_update(
        of=("self",) if features.has_select_for_update_of else ()
    ).order_by()


def _lock_and_read(qs: QuerySet[Any], fields: list[Any]) -> tuple[list[str], dict[str, Any]]:
    """The pks the update will touch, locked, and the old values of the fields it sets."""
    pks: list[str] = []
    before: dict[str, dict[str, Any]] = {}
    rows = _locked(qs).values_list("pk", *[f.attname for f in fields])
    for pk, *values in rows.iterator(chunk_size=2000):
        key = str(pk)
        pks.append(key)
        before[key] = {f.name: normalize(f, v) for f, v in zip(fields, values, strict=True)}
    return pks, before


def _delete(self: QuerySet[Any]) -> tuple[int, dict[str, int]]:
    configs = _configs(self)
    if not configs:
        return _original["delete"](self)  # type: ignore[no-any-return]
    size = conf.BROADCAST_DELETE_CHUNK_SIZE
    if size is None or size < 1 or not django_compat.deletes_in_chunks(self):
        # Django's delete() (its queries, every row loaded at once), a delete Django
        # refuses (it says so), or the public path.
        return _django_delete(self, configs)
    # As Django's delete(): no select_related(), on the database that deletes the rows.
    qs = self.select_related(None).using(django_compat.write_db(self))
    per_model: Counter[str] = Counter()
    # The rows themselves, locked: up to a chunk, the collector takes these instances
    # and selects nothing again; more, and they are deleted a chunk of pks at a time.
    with _transaction(qs.db):
        first = list(_locked(qs)[: size + 1])
        batches: Iterable[Any] = [first] if first else []
        if len(first) > size:
            pks = list(_locked(qs).values_list("pk", flat=True).iterator(chunk_size=2000))
            batches = _chunks(qs, pks, size)
        # Several chunks: a savepoint, so that a ProtectedError in a later chunk leaves
        # nothing deleted, as with Django (which collects everything before deleting).
        with _transaction(qs.db, savepoint=len(first) > size):
            _delete_batches(self, qs, configs, batches, per_model)
    django_compat.forget_results(self)  # as Django's delete(): evaluated afresh if reused
    return sum(per_model.values()), dict(per_model)


def _django_delete(
    qs: QuerySet[Any], configs: tuple[ModelConfig, ...]
) -> tuple[int, dict[str, int]]:
    """Django's own ``delete()`` of ``qs``, its deleted rows of ``configs`` captured as
    in a chunk (the collector loads every matching row at once)."""
    with collect_deleted(configs) as deleted:
        result: tuple[int, dict[str, int]] = _original["delete"](qs)
    using = django_compat.write_db(qs)
    for config, changes in deleted.items():
        if changes:
            record_item(DeletedRows.pack(config, changes), using)
    return result


def _delete_batches(
    origin: QuerySet[Any],
    qs: QuerySet[Any],
    configs: tuple[ModelConfig, ...],
    batches: Iterable[Any],
    per_model: Counter[str],
) -> None:
    """Delete each batch (instances or a queryset) with Django's collector."""
    for batch in batches:
        # Not batch.delete(): its origin would be the batch, not the user's queryset.
        collector = django_compat.deletion_collector(qs.db, origin)
        collector.collect(batch)
        # _inside stays unset: receivers run in there, and their bulk writes (or the
        # collector's own update() for on_delete=SET_NULL) must broadcast.
        with collect_deleted(configs) as deleted:
            _count, counts = collector.delete()
        per_model.update(counts)
        for config, changes in deleted.items():
            if changes:
                record_item(DeletedRows.pack(config, changes), qs.db)


def _bulk_create(self: QuerySet[Any], objs: Iterable[Model], *args: Any, **kwargs: Any) -> Any:
    configs = _configs(self)
    if not configs:
        created = _original["bulk_create"](self, objs, *args, **kwargs)
        _refresh_snapshots(self, created)
        return created
    using = django_compat.write_db(self)
    token = _inside.set(True)
    try:
        # No transaction of ours around it: Django opens one where the write needs it
        # (from 6.1, not for a single query), and the rows are recorded only once it
        # returned: at the caller's commit, or at once in autocommit. On the write
        # database from the start (Django checks the options against the read one's
        # features before it switches).
        created = _original["bulk_create"](self.using(using), objs, *args, **kwargs)
        pks = _pk_texts(configs[0], created)
        if len(pks) < len(created):
            # ignore_conflicts, or a database that returns no ids (MySQL).
            stats.incr("uncaptured", len(created) - len(pks))
            logger.warning(
                "broadcast_app: bulk_create() of %s gave no usable pk for %d row(s); "
                "broadcast them with publish_changes()",
                configs[0].label,
                len(created) - len(pks),
            )
        upsert = bool(kwargs.get("update_conflicts"))
        forced = frozenset(kwargs.get("update_fields") or ()) if upsert else frozenset()
        # Rows known inserted as the objects hold them: not an upsert (the row may have
        # been there), nor conflicts ignored (the object may not have been written).
        inserted = not (upsert or kwargs.get("ignore_conflicts") or len(args) > 1)
        if pks:
            op: Op = "updated" if upsert else "created"
            for config in configs:
                later = _record_inserted(config, created, using) if inserted else pks
                if later:
                    record_item(RowSet(config, op, later, forced=forced), using)
    finally:
        _inside.reset(token)
    _refresh_snapshots(self, created)
    return created


def _record_inserted(config: ModelConfig, objs: list[Model], using: str) -> list[str]:
    """Record the ``created`` changes of the rows ``bulk_create()`` inserted, made from
    the objects (the database returned their pks: nothing is read back on the write
    path). Returns the pks whose objects do not hold the row as written (a value the
    database computed and did not return), to be read back at commit."""
    changes: list[Change] = []
    later: list[str] = []
    for obj in objs:
        if obj.pk is None:
            continue  # counted as uncaptured by the caller
        try:
            change = inserted_change(config, obj)
            if change is None:
                later.append(str(obj.pk))
            else:
                changes.append(change)
        except Exception:
            # A broken serializer hook or pk type: never a failure of the user's write.
            stats.incr("capture_errors")
            logger.exception("broadcast_app could not capture a bulk_create of %s", config.label)
    if changes:
        record_item(DeletedRows.pack(config, changes, "created"), using)
    return later


def _pk_texts(config: ModelConfig, objs: list[Model]) -> list[str]:
    """The pks of ``objs`` as events carry them; a pk whose ``str()`` fails (a broken
    custom type) is logged and counted, never a failure of the user's write."""
    pks: list[str] = []
    for obj in objs:
        if obj.pk is None:
            continue
        try:
            pks.append(str(obj.pk))
        except Exception:
            stats.incr("capture_errors")
            logger.exception("broadcast_app could not capture a bulk_create of %s", config.label)
    return pks


def _refresh_snapshots(qs: QuerySet[Any], objs: Iterable[Model]) -> None:
    """The saved values are the "before" of these instances' next save."""
    configs = configs_for(qs.model)
    if not configs:
        return
    for obj in objs:
        for config in configs:
            snapshots.set(obj, snapshot_key(config, type(obj)), raw_values(config, obj))


def _bulk_update(
    self: QuerySet[Any], objs: Iterable[Model], fields: Sequence[str], *args: Any, **kwargs: Any
) -> Any:
    configs = _configs(self)
    chosen = [(c, _broadcast_fields(c, dict.fromkeys(fields))) for c in configs]
    chosen = [(c, names) for c, names in chosen if names]
    if not chosen:
        return _original["bulk_update"](self, objs, fields, *args, **kwargs)
    objs = list(objs)
    befores = [(config, _before(config, fields, objs)) for config, fields in chosen]
    using = django_compat.write_db(self)
    token = _inside.set(True)
    try:
        with transaction.atomic(using=using, savepoint=False):
            count = _original["bulk_update"](self, objs, fields, *args, **kwargs)
            for config, before in befores:
                if before:
                    pks = list(before)
                    record_item(RowSet(config, "updated", pks, before=before), using)
    finally:
        _inside.reset(token)
    _refresh_snapshots(self, objs)
    return count


def _before(
    config: ModelConfig, fields: list[Any], objs: list[Model]
) -> dict[str, dict[str, Any]]:
    """The old values of ``fields`` of each object, as its snapshot knows them."""
    before: dict[str, dict[str, Any]] = {}
    for obj in objs:
        snapshot = snapshots.get(obj, snapshot_key(config, type(obj))) or {}
        old = {f: snapshot.get(f.attname, _MISSING) for f in fields}
        try:
            key = str(obj.pk)
        except Exception:  # a broken custom pk type: never fail the user's write
            stats.incr("capture_errors")
            logger.exception("broadcast_app could not capture a bulk_update of %s", config.label)
            continue
        before[key] = {f.name: normalize(f, v) for f, v in old.items() if v is not _MISSING}
    return before

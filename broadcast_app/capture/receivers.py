"""Capture saves, deletes and many-to-many changes of registered models.

Each change becomes a :class:`~.events.Change` recorded in the transaction buffer
(:mod:`.buffer`), which publishes it after commit. Previous values come from a snapshot
taken when the instance was loaded (``post_init``), so ``changed`` costs no query. The
snapshot is kept beside the instance (:data:`snapshots`), never in it: users pickle
their instances into caches.

A save never queries: when the instance lacks what the event needs (deferred fields,
many-to-many fields not prefetched), its event carries what is loaded and names the
rest (:mod:`.incomplete`), or, where the whole row is needed (a serializer hook, an
object check, outbox delivery), the row is recorded by pk and read back at commit
(:class:`~.rows.RowSet`); a created row's many-to-many fields are known empty. A
delete's event carries only what was loaded.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from typing import Any

from django.db import models
from django.db.models.signals import (
    class_prepared,
    m2m_changed,
    post_delete,
    post_init,
    post_save,
)

from ..conf import conf
from ..django_compat import loaded_values, prefetched
from ..events import socket_ids as echo
from ..events.change import _MISSING, Change, Saved, normalize, raw_values, serialize
from ..events.model_configs import ModelConfig, all_configs
from ..events.row_sets import RowSet
from ..stats import stats
from . import incomplete, outbox
from .transaction_buffer import record

logger = logging.getLogger(__name__)

SNAPSHOT = "_broadcast_snapshot"

# Set while a chunked QuerySet.delete() runs (see bulk.py): the deleted rows of its
# models are handed over in one list per model and chunk, to be packed, not buffered
# one by one.
_deleting: ContextVar[dict[ModelConfig, list[Change]] | None] = ContextVar(
    "broadcast_deleting", default=None
)
# The classes each registered model's receivers are connected for, by label.
_senders: dict[str, list[type[models.Model]]] = {}


def connect(config: ModelConfig) -> None:
    """Connect the capture receivers for one registered model, its proxies and its
    multi-table descendants (Django sends a write's signals for the class written
    through only: a proxy's save, or a child's save of its parent's row, would go
    unseen)."""
    model = config.model
    _connect_sender(config, model)
    pending = list(model.__subclasses__())
    while pending:
        subclass = pending.pop()
        pending.extend(subclass.__subclasses__())
        if not subclass._meta.abstract:
            _connect_sender(config, subclass)
    # Subclasses defined later (after register()) connect when Django prepares them.
    class_prepared.connect(_on_class_prepared, weak=False, dispatch_uid="broadcast_app")


def _on_class_prepared(sender: type[models.Model], **kwargs: Any) -> None:
    for config in all_configs():
        if sender is not config.model and issubclass(sender, config.model):
            _connect_sender(config, sender)


def _connect_sender(config: ModelConfig, sender: type[models.Model]) -> None:
    uid = f"broadcast_app:{config.label}"
    key = snapshot_key(config, sender)
    senders = _senders.setdefault(config.label, [])
    if sender not in senders:
        senders.append(sender)
    post_init.connect(
        partial(_on_post_init, config, key), sender=sender, weak=False, dispatch_uid=uid
    )
    post_save.connect(
        partial(_on_post_save, config, key), sender=sender, weak=False, dispatch_uid=uid
    )
    if sender._meta.concrete_model is config.model:
        # A descendant's delete deletes its parents' rows with their own signals.
        post_delete.connect(
            partial(_on_post_delete, config), sender=sender, weak=False, dispatch_uid=uid
        )
    if sender is config.model:
        for f in config.m2m_fields:
            m2m_changed.connect(
                partial(_on_m2m_changed, config, f.name),
                sender=f.remote_field.through,
                weak=False,
                dispatch_uid=f"{uid}:{f.name}",
            )


def disconnect(config: ModelConfig) -> None:
    """Undo :func:`connect`."""
    uid = f"broadcast_app:{config.label}"
    for sender in _senders.pop(config.label, [config.model]):
        for signal in (post_init, post_save, post_delete):
            signal.disconnect(sender=sender, dispatch_uid=uid)
    for f in config.m2m_fields:
        m2m_changed.disconnect(sender=f.remote_field.through, dispatch_uid=f"{uid}:{f.name}")


class Snapshots:
    """Each live instance's snapshots, by key, held outside the instance.

    Keyed by identity (model instances hash by pk, and two loads of one row are two
    snapshots); an entry goes when its instance is garbage-collected. Nothing is added
    to the instance, so nothing of ours is pickled or copied with it: an instance loaded
    from a pickle (or copied) has no snapshot, and its first save reports every loaded
    field as changed.
    """

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[weakref.ref[models.Model], dict[str, Any]]] = {}

    def get(self, instance: models.Model, key: str) -> dict[str, Any] | None:
        entry = self._by_id.get(id(instance))
        if entry is None or entry[0]() is not instance:
            return None
        found: dict[str, Any] | None = entry[1].get(key)
        return found

    def set(self, instance: models.Model, key: str, values: Any) -> None:
        number = id(instance)
        entry = self._by_id.get(number)
        if entry is None or entry[0]() is not instance:
            # (An id reused after its instance died: the callback below may not have run.)
            entry = self._by_id[number] = (weakref.ref(instance, partial(self._drop, number)), {})
        entry[1][key] = values

    def _drop(self, number: int, ref: weakref.ref[models.Model]) -> None:
        entry = self._by_id.get(number)
        if entry is not None and entry[0] is ref:
            del self._by_id[number]

    def pop(self, instance: models.Model, key: str) -> Any:
        entry = self._by_id.get(id(instance))
        if entry is None or entry[0]() is not instance:
            return None
        return entry[1].pop(key, None)

    def __len__(self) -> int:
        return len(self._by_id)


snapshots = Snapshots()


def snapshot_key(config: ModelConfig, model: type[models.Model]) -> str:
    """Where an instance of ``model`` keeps its snapshot of ``config``'s fields: one key
    for its own model's (or a proxy's concrete model's) config, another per registered
    multi-table ancestor, whose config may choose other fields."""
    if model._meta.concrete_model is config.model:
        return SNAPSHOT
    return f"{SNAPSHOT}:{config.label}"


def _on_post_init(config: ModelConfig, key: str, instance: models.Model, **kwargs: Any) -> None:
    # The values as loaded are the "before" of the next save: no query needed later.
    snapshots.set(instance, key, raw_values(config, instance))


def _on_post_save(
    config: ModelConfig,
    key: str,
    instance: models.Model,
    created: bool,
    using: str,
    **kwargs: Any,
) -> None:
    if not conf.BROADCAST_ENABLED:
        return
    try:
        item: Change | Saved | RowSet
        if _complete(config, instance):
            saved = _read(config, key, instance, created)
            # Compared later (by the publisher thread after an autocommit save) when no
            # instance is needed for it.
            item = saved if config.needs_no_instance else saved.change(instance)
        elif created and _inserted_whole(config, instance):
            # The row was inserted by this save: no many-to-many row can point to it yet.
            empty: dict[str, list[Any]] = {f.name: [] for f in config.m2m_fields}
            item = _read(config, key, instance, created).change(instance, empty)
        else:
            item = _read_later(config, key, instance, created)
    except Exception:
        # A broken serializer hook must not break the user's save.
        stats.incr("capture_errors")
        logger.exception("broadcast_app could not capture a save of %s", config.label)
        return
    record_item(item, using)


def _complete(config: ModelConfig, instance: models.Model) -> bool:
    """Whether the instance holds everything its event needs (no deferred field, every
    many-to-many field prefetched)."""
    if not loaded_values(instance).keys() >= config.attnames:
        return False
    if config.m2m_fields:
        cache = prefetched(instance)
        return all(f.name in cache for f in config.m2m_fields)
    return True


def _inserted_whole(config: ModelConfig, instance: models.Model) -> bool:
    """Whether a created instance holds everything its event needs but its many-to-many
    relations, which are empty: its fields all loaded, no serializer hook (which may read
    relations itself), its row is ``config``'s own and so are its many-to-many fields (a
    multi-table child created for an existing parent row inserts no parent row, whose
    relations may exist)."""
    return (
        config.serializer is None
        and type(instance)._meta.concrete_model is config.model
        and all(f.model is config.model for f in config.m2m_fields)
        and loaded_values(instance).keys() >= config.attnames
    )


def inserted_change(config: ModelConfig, instance: models.Model) -> Change | None:
    """The ``created`` change of the row ``bulk_create()`` inserted from ``instance``,
    made from the instance as a save's is (no query); None where the instance does not
    hold the row as written (a field not loaded, a value the database computes: an
    expression, a ``db_default`` it did not return), and for a model with a
    ``serializer`` hook (it may read relations: as before, at commit, not per object
    inside ``bulk_create()``)."""
    if not _inserted_whole(config, instance):
        return None
    loaded = loaded_values(instance)
    if any(hasattr(loaded[name], "resolve_expression") for name in config.attnames):
        return None
    m2m: dict[str, list[Any]] | None = (
        {f.name: [] for f in config.m2m_fields} if config.m2m_fields else None
    )
    current = raw_values(config, instance)
    return Saved(config, str(instance.pk), True, current, {}, frozenset()).change(instance, m2m)


def _read(config: ModelConfig, key: str, instance: models.Model, created: bool) -> Saved:
    """What ``save()`` must read of the instance now: its attribute values, copied where
    they could change in place, which become its snapshot."""
    current = raw_values(config, instance)
    snapshot: dict[str, Any] = {} if created else snapshots.get(instance, key) or {}
    snapshots.set(instance, key, current)
    return Saved(config, str(instance.pk), created, current, snapshot, frozenset())


def _read_later(
    config: ModelConfig, key: str, instance: models.Model, created: bool
) -> RowSet | Change:
    """A save of an instance lacking part of its event: published as it is, naming what
    it leaves out (:mod:`.incomplete`), or else the row, read back at commit, with the old
    values of the fields the instance has loaded. A field still deferred was not saved
    (Django saves only loaded fields), so it cannot have changed."""
    current = raw_values(config, instance)
    snapshot = snapshots.get(instance, key) or {}
    snapshots.set(instance, key, current)
    if incomplete.applies(config, created):
        return incomplete.change(config, instance, current, snapshot)
    pk = str(instance.pk)
    if created:
        return RowSet(config, "created", [pk])
    before: dict[str, Any] = {}
    assigned: set[str] = set()
    for f in config.captured_fields:
        if current[f.attname] is _MISSING:
            continue
        old = snapshot.get(f.attname, _MISSING)
        if old is _MISSING:
            if f.tracked:
                assigned.add(f.name)  # deferred when loaded, assigned since
        else:
            before[f.name] = normalize(f.field, old)
    return RowSet(config, "updated", [pk], before={pk: before}, forced=frozenset(assigned))


def _on_post_delete(
    config: ModelConfig, instance: models.Model, using: str, **kwargs: Any
) -> None:
    if not conf.BROADCAST_ENABLED:
        return
    try:
        # Only what is loaded: a deferred field cannot be fetched from a deleted row.
        loaded = loaded_values(instance)
        values = {
            f.name: normalize(f, loaded[f.attname])
            for f in config.broadcast_fields
            if f.attname in loaded
        }
        try:
            data = _loaded_data(config, instance, values)
        except Exception:
            data = dict(values)
        change = Change(config=config, pk=str(instance.pk), op="deleted", data=data, values=values)
    except Exception:
        stats.incr("capture_errors")
        logger.exception("broadcast_app could not capture a delete of %s", config.label)
        return
    deleting = _deleting.get()
    if deleting is not None and config in deleting:
        deleting[config].append(change)
        return
    record_item(change, using)


def _loaded_data(
    config: ModelConfig, instance: models.Model, values: dict[str, Any]
) -> dict[str, Any]:
    """A deleted row's data: its many-to-many fields only if prefetched (their rows are
    gone; reading them would cost the delete a query each and find nothing)."""
    if config.serializer is not None or not config.m2m_fields:
        return serialize(config, instance, values)
    data = dict(values)
    cache = prefetched(instance)
    for f in config.m2m_fields:
        if f.name in cache:
            data[f.name] = sorted(obj.pk for obj in cache[f.name])
    return data


@contextmanager
def collect_deleted(
    configs: Iterable[ModelConfig],
) -> Iterator[dict[ModelConfig, list[Change]]]:
    """Gather the ``deleted`` changes of these models' rows in the block, unbuffered.

    The caller records them itself; deletes of other models (cascades) are captured as
    usual.
    """
    changes: dict[ModelConfig, list[Change]] = {config: [] for config in configs}
    token = _deleting.set(changes)
    try:
        yield changes
    finally:
        _deleting.reset(token)


def record_item(item: Change | Saved | RowSet, using: str) -> None:
    """Attribute ``item`` to the current websocket, if any, and buffer it until commit
    (``best_effort``) or write it to the outbox in the transaction (``outbox``)."""
    socket = echo.current()
    if socket is not None:
        item.socket_id, item.to_others = socket
    item.to_others = item.to_others or item.config.to_others
    if isinstance(item, RowSet) and item.using is None:
        item.using = using
    if conf.BROADCAST_DELIVERY == "outbox":
        outbox.record(item.change() if isinstance(item, Saved) else item, using)
    else:
        record(item, using)


def _on_m2m_changed(
    config: ModelConfig,
    field_name: str,
    instance: models.Model,
    action: str,
    reverse: bool,
    pk_set: set[Any] | None,
    using: str,
    **kwargs: Any,
) -> None:
    if not conf.BROADCAST_ENABLED:
        return
    forced = frozenset({field_name})
    if not reverse:
        # Not ours when the field is inherited and the instance is of the parent model.
        if isinstance(instance, config.model) and action in {
            "post_add",
            "post_remove",
            "post_clear",
        }:
            # Read back at commit, with every m2m field prefetched: no query here.
            record_item(RowSet(config, "updated", [str(instance.pk)], forced=forced), using)
        return
    # The other side changed (e.g. tag.article_set.add(article)): pk_set holds our rows.
    stash = f"clear:{config.label}:{field_name}"
    if action == "pre_clear":
        manager = config.model._base_manager.using(using)
        snapshots.set(
            instance,
            stash,
            set(manager.filter(**{field_name: instance.pk}).values_list("pk", flat=True)),
        )
        return
    if action == "post_clear":
        pk_set = snapshots.pop(instance, stash) or set()
    elif action not in {"post_add", "post_remove"}:
        return
    if pk_set:
        record_item(RowSet(config, "updated", [str(pk) for pk in pk_set], forced=forced), using)

"""Capture saves and deletes of registered models, buffered per transaction.

Changes made inside ``transaction.atomic`` are held until the outermost block commits,
then coalesced per row and handed to the publisher. Savepoint rollbacks are honoured
with Django's own mechanism: every change registers an ``on_commit`` hook that merely
confirms it, and Django discards the hooks of a rolled-back savepoint. One extra hook
per transaction, kept last in the connection's hook list, then coalesces the confirmed
changes: it must run after every confirmation, and Django offers no "after all commit
hooks" point, so we keep it at the end ourselves (see ``_TxnState.keep_last``).
"""

from __future__ import annotations

import logging
import weakref
from functools import partial
from typing import Any

from django.db import connections, models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.signals import post_delete, post_init, post_save

from . import publisher
from .conf import conf
from .events import _MISSING, Change, field_values, normalize, raw_values, serialize
from .registry import ModelConfig
from .stats import stats

logger = logging.getLogger(__name__)

_SNAPSHOT = "_broadcast_snapshot"


def connect(config: ModelConfig) -> None:
    """Connect the capture receivers for one registered model."""
    uid = f"broadcast_app:{config.label}"
    model = config.model
    post_init.connect(partial(_on_post_init, config), sender=model, weak=False, dispatch_uid=uid)
    post_save.connect(partial(_on_post_save, config), sender=model, weak=False, dispatch_uid=uid)
    post_delete.connect(
        partial(_on_post_delete, config), sender=model, weak=False, dispatch_uid=uid
    )


def disconnect(config: ModelConfig) -> None:
    """Undo :func:`connect`."""
    uid = f"broadcast_app:{config.label}"
    for signal in (post_init, post_save, post_delete):
        signal.disconnect(sender=config.model, dispatch_uid=uid)


def _on_post_init(config: ModelConfig, instance: models.Model, **kwargs: Any) -> None:
    # The values as loaded are the "before" of the next save: no query needed later.
    instance.__dict__[_SNAPSHOT] = raw_values(config, instance)


def _before_values(
    config: ModelConfig,
    snapshot: dict[str, Any],
    current_raw: dict[str, Any],
    after: dict[str, Any],
    deferred: set[str],
) -> dict[str, Any]:
    before: dict[str, Any] = {}
    for f in config.broadcast_fields:
        old = snapshot.get(f.attname, _MISSING)
        if old is _MISSING:
            if f.attname in deferred:
                # Still deferred at save time: this save did not touch it.
                before[f.name] = after[f.name]
            # Otherwise it was deferred at load time and assigned since: changed.
            continue
        # Unchanged attributes (the common case) reuse the value already normalized.
        before[f.name] = after[f.name] if old == current_raw[f.attname] else normalize(f, old)
    return before


def _on_post_save(
    config: ModelConfig,
    instance: models.Model,
    created: bool,
    using: str,
    **kwargs: Any,
) -> None:
    if not conf.BROADCAST_ENABLED:
        return
    try:
        deferred = {f.attname for f in config.broadcast_fields} - instance.__dict__.keys()
        if deferred:
            # One query for all of them, rather than one per field on first access.
            instance.refresh_from_db(fields=list(deferred))
        values = field_values(config, instance)
        current_raw = raw_values(config, instance)
        before = None
        if not created:
            snapshot = instance.__dict__.get(_SNAPSHOT) or {}
            before = _before_values(config, snapshot, current_raw, values, deferred)
        instance.__dict__[_SNAPSHOT] = current_raw
        change = Change(
            config=config,
            pk=str(instance.pk),
            op="created" if created else "updated",
            data=serialize(config, instance, values),
            values=values,
            before=before,
        )
    except Exception:
        # A broken serializer hook must not break the user's save.
        stats.incr("capture_errors")
        logger.exception("broadcast_app could not capture a save of %s", config.label)
        return
    _record(change, using)


def _on_post_delete(
    config: ModelConfig, instance: models.Model, using: str, **kwargs: Any
) -> None:
    if not conf.BROADCAST_ENABLED:
        return
    try:
        # Only what is loaded: a deferred field cannot be fetched from a deleted row.
        values = {
            f.name: normalize(f, instance.__dict__[f.attname])
            for f in config.broadcast_fields
            if f.attname in instance.__dict__
        }
        try:
            data = serialize(config, instance, values)
        except Exception:
            data = dict(values)
        change = Change(config=config, pk=str(instance.pk), op="deleted", data=data, values=values)
    except Exception:
        stats.incr("capture_errors")
        logger.exception("broadcast_app could not capture a delete of %s", config.label)
        return
    _record(change, using)


class _TxnState:
    """The changes captured in one transaction of one connection."""

    def __init__(self) -> None:
        self.changes: list[Change] = []

    def flush(self) -> None:
        changes, self.changes = self.changes, []
        publisher.publish(coalesce(changes))

    def registered_in(self, conn: BaseDatabaseWrapper) -> bool:
        # Django rebuilds the hook tuples on savepoint rollback, so match on the function.
        return any(entry[1] == self.flush for entry in reversed(conn.run_on_commit))

    def keep_last(self, conn: BaseDatabaseWrapper) -> None:
        hooks = conn.run_on_commit
        if len(hooks) >= 2 and hooks[-2][1] == self.flush:
            hooks[-2], hooks[-1] = hooks[-1], hooks[-2]
            return
        for index in range(len(hooks) - 1, -1, -1):
            if hooks[index][1] == self.flush:
                hooks.append(hooks.pop(index))
                return
        # Empty sids: no savepoint rollback may discard it; only a full rollback does.
        hooks.append((set(), self.flush, True))  # type: ignore[arg-type]  # stubs lag Django


_states: weakref.WeakKeyDictionary[BaseDatabaseWrapper, _TxnState] = weakref.WeakKeyDictionary()


def _record(change: Change, using: str) -> None:
    conn = connections[using]
    if not conn.in_atomic_block:
        # Autocommit: the write is committed already (on_commit would run at once too).
        change.confirmed = True
        publisher.publish(coalesce([change]))
        return
    state = _states.get(conn)
    if state is None or not state.registered_in(conn):
        # First change of this transaction, or the last one was rolled back whole.
        state = _states[conn] = _TxnState()
    state.changes.append(change)
    conn.on_commit(change.confirm, robust=True)
    state.keep_last(conn)


def coalesce(changes: list[Change]) -> list[Change]:
    """Fold the confirmed changes of one transaction into at most one per row."""
    merged: dict[tuple[str, str], Change | None] = {}
    for change in changes:
        if not change.confirmed:
            continue
        key = (change.label, change.pk)
        previous = merged.get(key)
        merged[key] = change if previous is None else _merge(previous, change)
    return [
        kept
        for kept in merged.values()
        if kept is not None and not (kept.op == "updated" and not kept.changed())
    ]


def _merge(first: Change, later: Change) -> Change | None:
    if first.op == "created":
        if later.op == "deleted":
            return None  # never visible outside the transaction
        return Change(first.config, first.pk, "created", later.data, later.values, confirmed=True)
    if later.op == "deleted":
        return later
    # first updated or deleted, later created or updated: the row existed before the
    # transaction and exists after it, so it is an update against its original values.
    before = first.before if first.before is not None else first.values
    return Change(
        first.config, first.pk, "updated", later.data, later.values, before, confirmed=True
    )

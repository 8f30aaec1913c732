"""The per-transaction buffer: changes wait for the commit, then coalesce per row.

Changes made inside ``transaction.atomic`` are held until the outermost block commits.
Savepoint rollbacks are honoured with Django's own mechanism: every change registers an
``on_commit`` hook that merely confirms it, and Django discards the hooks of a
rolled-back savepoint. One extra hook per transaction, kept last in the connection's
hook list, then coalesces the confirmed changes: it must run after every confirmation,
and Django offers no "after all commit hooks" point, so we keep it at the end ourselves
(:func:`.django_compat.keep_last`: it relies on ``run_on_commit`` holding
``(savepoint ids, callable, robust)`` tuples, as it has since Django 4.2). Where that
does not hold, each change publishes from its own hook: correct, but a row saved twice
in one transaction gives two events.
"""

from __future__ import annotations

import weakref
from functools import partial

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from .. import django_compat
from ..events.change import Change, Saved
from ..events.coalesce import Item, coalesce  # coalesce: its old home, kept importable
from ..publish import publisher


class _TxnState:
    """The changes captured in one transaction of one connection."""

    def __init__(self) -> None:
        self.items: list[Item] = []

    def flush(self) -> None:
        items, self.items = self.items, []
        publish_committed([item for item in items if item.confirmed])

    def registered_in(self, conn: BaseDatabaseWrapper) -> bool:
        return django_compat.hook_pending(conn, self.flush)


_states: weakref.WeakKeyDictionary[BaseDatabaseWrapper, _TxnState] = weakref.WeakKeyDictionary()


def record(item: Item | Saved, using: str) -> None:
    """Hold ``item`` until the transaction on ``using`` commits (publish now if none)."""
    conn = connections[using]
    if not conn.in_atomic_block:
        # Autocommit: the write is committed already (on_commit would run at once too).
        if isinstance(item, Saved):
            # Compared by the publisher thread, which drops it if nothing changed.
            publisher.publish([item])
            return
        item.confirmed = True
        if isinstance(item, Change):
            # What coalescing one change comes to, without its bookkeeping.
            if item.worth_publishing():
                publisher.publish([item])
        else:
            publish_committed([item])
        return
    if isinstance(item, Saved):
        item = item.change()  # coalescing needs its values
    if django_compat.commit_hooks(conn) is None:
        # No hook can be kept last: publish each change on its own at commit.
        conn.on_commit(partial(_publish_alone, item), robust=True)
        return
    state = _states.get(conn)
    if state is None or not state.registered_in(conn):
        # First change of this transaction, or the last one was rolled back whole.
        state = _states[conn] = _TxnState()
    state.items.append(item)
    conn.on_commit(item.confirm, robust=True)
    django_compat.keep_last(conn, state.flush)


def _publish_alone(item: Item) -> None:
    item.confirmed = True
    publish_committed([item])


def publish_committed(items: list[Item]) -> None:
    """Coalesce one transaction's confirmed items per row and publish them."""
    for number, changes in enumerate(coalesce(items)):
        # Bulk chunks wait for room in the queue: their transaction committed already.
        publisher.publish(changes, wait=number > 0)

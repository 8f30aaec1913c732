"""``outbox`` delivery: captured changes become rows written in the saving transaction.

Django has no pre-commit hook, so each change is written when it is captured, inside
the transaction (and savepoint) that made it: the database then commits or rolls back
the row with the change, savepoints included, with no bookkeeping of ours. The rows of
one transaction share a token; the relay (:mod:`.relay`) folds them per object exactly
as the in-memory buffer does at commit (create + update: one ``created``; create +
delete: nothing; an update that changed nothing: nothing), publishes them and deletes
them.

What a row holds, and reading it back, is :mod:`.outbox_rows` (which also writes what a
``best_effort`` process could not publish before it exited).

Outside ``transaction.atomic`` (autocommit) Django sends ``post_save`` after the row
is committed, so the outbox row is a second statement: a process dying between the two
loses that event. Atomic blocks (``ATOMIC_REQUESTS``, the admin, bulk operations) have
no such window.
"""

from __future__ import annotations

import logging
import uuid
import weakref

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from .. import django_compat
from ..events.row_sets import DeletedRows
from ..publish import publisher
from ..publish.outbox_rows import (  # the row format; re-exported, as before it moved
    Item,
    LostEvents,
    StoredRows,
    from_payload,
    spill_events,
    to_payload,
)
from ..stats import stats

logger = logging.getLogger(__name__)

__all__ = [
    "Item",
    "LostEvents",
    "StoredRows",
    "from_payload",
    "record",
    "spill_events",
    "to_payload",
]


class _Transaction:
    """The token of one transaction of one connection, and its commit hook."""

    def __init__(self, using: str) -> None:
        self.using = using
        self.token = uuid.uuid4().hex

    def committed(self) -> None:
        from ..publish.relay import Relay, in_process

        if publisher.capturing():
            # capture_events() is active: relay now, in this thread, so the test sees
            # the events at commit as in best_effort mode.
            relay = Relay(self.using)
            relay.drain()
            relay.publisher.close()
        in_process.wake()

    def registered_in(self, conn: BaseDatabaseWrapper) -> bool:
        # Gone from the hooks: that transaction ended (or the savepoint that registered
        # the hook was rolled back, taking its rows along): a new token is right.
        return django_compat.hook_pending(conn, self.committed)


_transactions: weakref.WeakKeyDictionary[BaseDatabaseWrapper, _Transaction] = (
    weakref.WeakKeyDictionary()
)


def record(item: Item, using: str) -> None:
    """Write ``item`` to the outbox on ``using``, in the current transaction if any.

    A database error propagates, failing the save: in outbox mode a change is never
    committed without its event.
    """
    from ..models import OutboxEvent

    try:
        payloads = [to_payload(change) for change in _stored(item)]
    except (TypeError, ValueError):
        # Not JSON-encodable (a custom field type): best_effort would fail to encode it
        # too. Counted and logged; the user's save goes on.
        stats.incr("capture_errors")
        logger.exception("broadcast_app could not encode an outbox row of %s", item.label)
        return
    conn = connections[using]
    if conn.in_atomic_block:
        txn = _transactions.get(conn)
        if txn is None or not txn.registered_in(conn):
            txn = _transactions[conn] = _Transaction(using)
            conn.on_commit(txn.committed, robust=True)
        token = txn.token
    else:
        txn = _Transaction(using)
        token = txn.token
    OutboxEvent.objects.using(using).bulk_create(
        [OutboxEvent(token=token, label=item.label, payload=payload) for payload in payloads]
    )
    stats.incr("outbox_written", len(payloads))
    if not conn.in_atomic_block:
        txn.committed()


def _stored(item: Item) -> list[Item]:
    """What the outbox keeps of ``item``: a chunk of ``QuerySet.delete()`` carries each
    row's data (the rows are gone, nothing could be read back), so one row each."""
    if isinstance(item, DeletedRows):
        return [change for chunk in item.changes(item.pks) for change in chunk]
    return [item]

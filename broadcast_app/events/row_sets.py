"""Rows changed in bulk, whose event data is read from the database at commit.

``QuerySet.update()``, ``bulk_create()``, ``bulk_update()`` and
:func:`broadcast_app.publish_changes` record a :class:`RowSet` — the pks, plus the old
values of the fields an update set — rather than one :class:`~.events.Change` with data
per row, so a transaction touching 100k rows keeps pks in memory, not rows. At commit
the rows are read back in chunks, each chunk turned into changes and published before
the next is read.

Deleted rows cannot be read back: a chunked ``QuerySet.delete()`` records one
:class:`DeletedRows` per chunk, holding the chunk's event data pickled into one
``bytes`` (pickle shares the field names and classes across the chunk's rows). Rows
``bulk_create()`` inserted are held the same way, made from the objects, where the
database returned their pks (no read-back query on the write path).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import router

from .change import Change, Op, field_values, serialize
from .model_configs import ModelConfig

CHUNK = 500


@dataclass(eq=False)
class RowSet:
    """One bulk operation's rows of one model."""

    config: ModelConfig
    op: Op
    pks: list[str]
    #: old normalized values of the fields the operation set, per pk (updates only)
    before: dict[str, dict[str, Any]] | None = None
    #: fields reported as changed whatever the values say (e.g. publish_changes(changed=))
    forced: frozenset[str] = frozenset()
    socket_id: str | None = None
    to_others: bool = False
    confirmed: bool = False
    #: the database the rows were written to, and are read back from (a replica that
    #: lags would give old rows; None: the router's choice for writes)
    using: str | None = None

    def confirm(self) -> None:
        """Commit hook: the savepoint this operation ran in was not rolled back."""
        self.confirmed = True

    @property
    def label(self) -> str:
        return self.config.label

    def changes(self, pks: list[str], *, gone: bool = False) -> Iterator[list[Change]]:
        """Read these rows back in chunks and yield their changes, one chunk at a time.

        A row no longer there is skipped, or with ``gone`` given a pk-only change, for
        folding with the delete that the same transaction recorded for it.
        """
        for start in range(0, len(pks), CHUNK):
            yield self._chunk(pks[start : start + CHUNK], gone)

    def _chunk(self, pks: list[str], gone: bool) -> list[Change]:
        if self.op == "deleted":
            # The rows are gone: all that is known is their pk.
            return [self._pk_only(pk) for pk in pks]
        model = self.config.model
        manager = model._base_manager.db_manager(self.using or router.db_for_write(model))
        rows = manager.filter(pk__in=pks)
        if self.config.m2m_fields:
            # One query per field for the whole chunk, not one per row.
            rows = rows.prefetch_related(*(f.name for f in self.config.m2m_fields))
        by_pk = {str(obj.pk): obj for obj in rows}
        result = []
        for pk in pks:
            instance = by_pk.get(pk)
            if instance is None:
                if gone:
                    result.append(self._pk_only(pk))
                continue
            values = field_values(self.config, instance)
            result.append(self._change(pk, serialize(self.config, instance, values), values))
        return result

    def _pk_only(self, pk: str) -> Change:
        data = {self.config.model._meta.pk.name: pk}
        return self._change(pk, data, dict(data))

    def _change(self, pk: str, data: dict[str, Any], values: dict[str, Any]) -> Change:
        before = None if self.before is None else self.before.get(pk, {})
        return Change(
            config=self.config,
            pk=pk,
            op=self.op,
            data=data,
            values=values,
            before=before,
            confirmed=True,
            partial=self.before is not None,
            forced=self.forced,
            socket_id=self.socket_id,
            to_others=self.to_others,
        )


#: One deleted row: pk, event data, and the field values when they differ from the data.
_Row = tuple[str, dict[str, Any], dict[str, Any] | None]


@dataclass(eq=False)
class DeletedRows(RowSet):
    """Rows of one model deleted by one chunk of ``QuerySet.delete()`` (or created by one
    ``bulk_create()``), with their data: nothing is read back."""

    packed: bytes | list[_Row] = b""

    @classmethod
    def pack(
        cls, config: ModelConfig, changes: Sequence[Change], op: Op = "deleted"
    ) -> DeletedRows:
        """The changes of one chunk (all ``op``, with no old values: ``deleted``, or
        ``created`` by ``bulk_create()``), kept compact until commit."""
        rows: list[_Row] = [
            (c.pk, c.data, None if c.values == c.data else c.values) for c in changes
        ]
        packed: bytes | list[_Row]
        try:
            packed = pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            # A value pickle cannot copy (some custom field types): keep the objects.
            packed = rows
        return cls(config, op, [c.pk for c in changes], packed=packed)

    def changes(self, pks: list[str], *, gone: bool = False) -> Iterator[list[Change]]:
        """This chunk's changes for these pks (all of them, or those seen twice)."""
        wanted = set(pks)
        # Only ever bytes this process pickled itself, in pack().
        rows: list[_Row] = (
            pickle.loads(self.packed) if isinstance(self.packed, bytes) else self.packed
        )
        found = [
            self._change(pk, data, data if values is None else values)
            for pk, data, values in rows
            if pk in wanted
        ]
        for start in range(0, len(found), CHUNK):
            yield found[start : start + CHUNK]

"""Rows changed in bulk, whose event data is read from the database at commit.

``QuerySet.update()``, ``bulk_create()``, ``bulk_update()`` and
:func:`broadcast_app.publish_changes` record a :class:`RowSet` — the pks, plus the old
values of the fields an update set — rather than one :class:`~.events.Change` with data
per row, so a transaction touching 100k rows keeps pks in memory, not rows. At commit
the rows are read back in chunks, each chunk turned into changes and published before
the next is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .events import Change, Op, field_values, serialize
from .registry import ModelConfig

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

    def confirm(self) -> None:
        """Commit hook: the savepoint this operation ran in was not rolled back."""
        self.confirmed = True

    @property
    def label(self) -> str:
        return self.config.label

    def changes(self, pks: list[str]) -> Iterator[list[Change]]:
        """Read these rows back in chunks and yield their changes, one chunk at a time."""
        for start in range(0, len(pks), CHUNK):
            yield self._chunk(pks[start : start + CHUNK])

    def _chunk(self, pks: list[str]) -> list[Change]:
        if self.op == "deleted":
            # The rows are gone: all that is known is their pk.
            name = self.config.model._meta.pk.name
            return [self._change(pk, {name: pk}, {name: pk}) for pk in pks]
        manager = self.config.model._base_manager
        by_pk = {str(obj.pk): obj for obj in manager.filter(pk__in=pks)}
        result = []
        for pk in pks:
            instance = by_pk.get(pk)
            if instance is None:
                continue  # deleted again since, by means we did not see
            values = field_values(self.config, instance)
            result.append(self._change(pk, serialize(self.config, instance, values), values))
        return result

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

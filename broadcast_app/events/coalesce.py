"""One transaction's changes coalesced per row: what the per-transaction buffer
(:mod:`broadcast_app.capture.transaction_buffer`) and the outbox relay
(:mod:`broadcast_app.publish.relay`) publish."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

from .change import Change, merge
from .row_sets import RowSet

Item = Change | RowSet


def coalesce(items: list[Item]) -> Iterator[list[Change]]:
    """One transaction's items as the changes worth publishing, one row once, in lists.

    The first list holds the single changes and the rows touched more than once (read
    back and folded with their other changes); then rows touched once, by one bulk
    operation, follow chunk by chunk, each read only when the previous was consumed.
    """
    seen: Counter[tuple[str, str]] = Counter()
    for item in items:
        if isinstance(item, Change):
            seen[(item.label, item.pk)] += 1
        else:
            seen.update((item.label, pk) for pk in item.pks)
    merged: dict[tuple[str, str], Change | None] = {}
    streams: list[tuple[RowSet, list[str]]] = []
    for item in items:
        if isinstance(item, Change):
            _fold(merged, item)
            continue
        shared = [pk for pk in item.pks if seen[(item.label, pk)] > 1]
        # A row created or updated, then deleted, is gone: it must still fold with its
        # delete (created + deleted publish nothing).
        for chunk in item.changes(shared, gone=True):
            for change in chunk:
                _fold(merged, change)
        if len(shared) < len(item.pks):
            single = [pk for pk in item.pks if seen[(item.label, pk)] == 1]
            streams.append((item, single))
    yield _worth_publishing(merged.values())
    for rowset, pks in streams:
        for chunk in rowset.changes(pks):
            yield _worth_publishing(chunk)


def _worth_publishing(changes: Iterable[Change | None]) -> list[Change]:
    return [kept for kept in changes if kept is not None and kept.worth_publishing()]


def _fold(merged: dict[tuple[str, str], Change | None], change: Change) -> None:
    key = (change.label, change.pk)
    previous = merged.get(key)
    merged[key] = change if previous is None else merge(previous, change)

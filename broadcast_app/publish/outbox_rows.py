"""The outbox table's rows: what a row keeps of a change or a bulk operation, and
reading it back; and the rows a ``best_effort`` process writes at exit.

In ``best_effort`` mode the table also takes what a process could not publish before
it exited (Redis down, hung or cut off): :func:`spill_events`. Such an event is read
back at relay time like a bulk operation, so that a late event carries the row as it is
then, never an older state over a newer one.

Writing a change's row in its transaction is :mod:`.outbox`; publishing the rows is
:mod:`.relay`. Both, and the publisher (which spills here at exit), import this module;
it imports none of them.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections, router, transaction
from django.utils import timezone

from ..conf import conf
from ..events.change import Change, to_json_data
from ..events.model_configs import get_config
from ..events.row_sets import RowSet
from ..events.wire import split_hidden
from ..stats import stats

logger = logging.getLogger(__name__)

Item = Change | RowSet


def to_payload(item: Item) -> str:
    """The JSON an outbox row keeps of a change or a bulk operation."""
    common: dict[str, Any] = {
        "op": item.op,
        "before": item.before,
        "forced": sorted(item.forced),
        "socket_id": item.socket_id,
        "to_others": item.to_others,
        # The saving process, not the relay, is the event's origin.
        "origin": conf.BROADCAST_INSTANCE_ID,
    }
    if isinstance(item, RowSet):
        common["pks"] = item.pks
    else:
        common.update(pk=item.pk, data=item.data, values=item.values, partial=item.partial)
        if item.unknown:
            common["unknown"] = list(item.unknown)
    return json.dumps(common, cls=DjangoJSONEncoder, separators=(",", ":"))


def from_payload(label: str, payload: str) -> Item | LostEvents:
    """Rebuild what :func:`to_payload` (or :func:`spill_events`) stored (values in their
    JSON form)."""
    config = get_config(label)
    state = json.loads(payload)
    if "lost" in state:
        return LostEvents(config.label)
    shared: dict[str, Any] = {
        "config": config,
        "op": state["op"],
        "before": state["before"],
        "forced": frozenset(state["forced"]),
        "socket_id": state["socket_id"],
        "to_others": state["to_others"],
        "confirmed": True,
    }
    if "pks" in state:
        return StoredRows(pks=state["pks"], **shared)
    return Change(
        pk=state["pk"],
        data=state["data"],
        values=state["values"],
        partial=state["partial"],
        unknown=tuple(state.get("unknown", ())),
        **shared,
    )


class StoredRows(RowSet):
    """A bulk operation from the outbox, read back at relay time.

    Stored values went through JSON (a datetime keeps milliseconds, a Decimal becomes a
    string); the rows read back are brought to that form too, so that comparing them —
    which fields ``changed`` — compares like with like.
    """

    def _change(self, pk: str, data: dict[str, Any], values: dict[str, Any]) -> Change:
        return super()._change(pk, data, to_json_data(values))


@dataclass
class LostEvents:
    """Events of a model that a process dropped (its outage buffer overflowed, or a
    failover lost them) and exited before it could say so: the relay sends ``reset``."""

    label: str


def spill_events(events: Iterable[tuple[str, str]], lost: Iterable[str]) -> int:
    """Write events a process could not publish before it exits (``best_effort``) to the
    outbox table; a relay publishes them once Redis answers. Returns the rows written.

    ``events`` are (model label, event body) pairs, in order; ``lost`` the labels whose
    subscribers are owed a ``reset``. Each event is a transaction of its own: two events
    of one row must not fold into one, since the first may have reached Redis already
    (sent, and the process left before the reply). Rows go to the database the model's
    rows are written to, beside them, where the relay reads them back.
    """
    rows: dict[str, list[Any]] = {}
    for label, body in events:
        config = get_config(label)
        event = json.loads("{" + split_hidden(body)[0])
        using = router.db_for_write(config.model)
        rows.setdefault(using, []).append(_spilled_row(config.label, event))
    for label in lost:
        config = get_config(label)
        rows.setdefault(router.db_for_write(config.model), []).append(
            _row(config.label, {"lost": True}, timezone.now())
        )
    from ..models import OutboxEvent

    written = 0
    for using, batch in rows.items():
        try:
            with transaction.atomic(using=using):
                OutboxEvent.objects.using(using).bulk_create(batch)
            written += len(batch)
        except Exception:
            logger.exception(
                "broadcast_app could not write %d unpublished event(s) to the outbox on %r",
                len(batch),
                using,
            )
        finally:
            connections[using].close()  # this thread's, at exit
    if written:
        stats.incr("spilled", written)
        logger.warning(
            "broadcast_app exited before Redis took %d event(s): written to the outbox "
            "table, a relay publishes them once Redis answers",
            written,
        )
    return written


def _spilled_row(label: str, event: dict[str, Any]) -> Any:
    common = {
        "op": event["op"],
        "forced": event.get("changed", []),
        "socket_id": event.get("socket_id"),
        "to_others": event.get("to_others", False),
        "origin": event.get("origin"),
    }
    ts = datetime.fromisoformat(event["ts"])
    if event["op"] == "deleted":
        # The row is gone: its last known state is all there is, as published.
        data = event["data"]
        state = {**common, "before": None, "pk": event["pk"], "data": data, "values": data}
        return _row(label, {**state, "forced": [], "partial": False}, ts)
    # Read back at relay time; ``previous`` (if the model sends it) stays the old values.
    before = {event["pk"]: event.get("previous", {})} if event["op"] == "updated" else None
    return _row(label, {**common, "before": before, "pks": [event["pk"]]}, ts)


def _row(label: str, state: dict[str, Any], created: datetime) -> Any:
    from ..models import OutboxEvent

    payload = json.dumps(state, cls=DjangoJSONEncoder, separators=(",", ":"))
    return OutboxEvent(token=uuid.uuid4().hex, label=label, payload=payload, created=created)

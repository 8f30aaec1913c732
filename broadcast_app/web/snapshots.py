"""Snapshots on subscribe (``"snapshot": true``): the rows a subscription covers, read
from the database, consistent with the ``last_id`` they are sent with.

The subscription is in the hub before anything is read, and its live events are held
while the log's position is read and then the database queried. Every change the query
can miss was committed after it began, so it is published after the position was read:
it is held, and sent after the snapshot. Held events up to the position were published,
so committed, before the query began: the rows reflect them, and they are dropped. A
change committed before the query but published after the position was read is both in
the rows and sent after them: events carry the row's whole state, so applying it again
changes nothing. No event after ``last_id`` is missed, none up to it is sent.

A snapshot costs a query: it is budgeted like a resume (``BROADCAST_RESUME_RATE`` per
``BROADCAST_RESUME_WINDOW`` per connection; beyond, a ``reset`` ``rate_limited``), and
bounded: at most ``BROADCAST_SNAPSHOT_MAX_ROWS`` rows sent, ``BROADCAST_SNAPSHOT_MAX_SCAN``
rows read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError

from ..conf import conf
from ..events.change import field_values, serialize, to_json_data
from ..events.filters import Where, field_of, naming
from ..events.frames import ProtocolError
from ..events.model_configs import ModelConfig
from ..stats import stats
from ..transport.log_reader import Replay
from . import access
from .contexts import in_worker
from .limits import ResumeBucket

if TYPE_CHECKING:
    from .consumers import BroadcastConsumer

logger = logging.getLogger(__name__)

#: most fields a snapshot's ``order`` may name
MAX_ORDER = 4
#: why a resume was refused without work: a snapshot would be refused alike
_REFUSED = frozenset({"rate_limited", "busy"})


@dataclass(frozen=True, slots=True)
class Request:
    """What a ``subscribe`` asked of its snapshot."""

    limit: int
    #: ``order_by()`` arguments, the primary key last (an order with no ties)
    order: tuple[str, ...]


def requested(config: ModelConfig, message: dict[str, Any]) -> Request | None:
    """The snapshot a ``subscribe`` frame asks for (None: none), or a ``bad_request``."""
    wanted = message.get("snapshot")
    if wanted is None or wanted is False:
        return None
    if wanted is not True:
        raise ProtocolError("bad_request", "'snapshot' must be true or false.")
    most = conf.BROADCAST_SNAPSHOT_MAX_ROWS
    limit = message.get("limit", most)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= most:
        raise ProtocolError("bad_request", f"'limit' must be a number from 1 to {most}.")
    order = message.get("order", [])
    if isinstance(order, str):
        order = [order]
    if not isinstance(order, list) or len(order) > MAX_ORDER:
        raise ProtocolError("bad_request", f"'order' names at most {MAX_ORDER} fields.")
    names = []
    for item in order:
        if not isinstance(item, str):
            raise ProtocolError("bad_request", "'order' names fields, as strings.")
        descending = item.startswith("-")
        field = field_of(config, item.removeprefix("-"))
        names.append(("-" if descending else "") + field.name)
    return Request(limit, (*names, "pk"))


def plan(request: Request | None, replay: Replay | None) -> bool | None:
    """Whether a snapshot answers the subscription (None: none was asked): not when
    the replay after ``since`` is complete (it is the cheaper answer), nor when the
    resume was refused for load."""
    if request is None:
        return None
    if replay is None:
        return True
    return not replay.complete and replay.reason not in _REFUSED


async def send(
    consumer: BroadcastConsumer,
    config: ModelConfig,
    pk: str | None,
    request: Request,
    last_id: str | None,
) -> None:
    """Query and send the snapshot of ``consumer``'s subscription ``(config, pk)``; its
    the consumer drops its live events up to ``last_id`` from then on (see floors.py)."""
    if consumer.resumes is None:
        consumer.resumes = ResumeBucket()
    if not consumer.resumes.take():
        stats.incr("resumes_refused")
        consumer.reset(config.label, pk, "rate_limited")
        return
    try:
        rows, complete = await _read(config, consumer.user, pk, request)
    except DatabaseError:
        stats.incr("snapshot_errors")
        logger.warning("broadcast_app could not read a snapshot of %s", config.label)
        consumer.reset(config.label, pk, "unavailable")
        return
    stats.incr("snapshots")
    consumer.reply(
        {
            "type": "snapshot",
            "model": config.label,
            **naming(pk),
            "rows": rows,
            "last_id": last_id,
            "complete": complete,
        }
    )


def rows(
    config: ModelConfig, user: Any, pk: str | None, request: Request
) -> tuple[list[dict[str, Any]], bool]:
    """The rows of the subscription ``(config, pk)`` that ``user`` may see, in order, as
    events carry them; and whether that is all of them (not cut by a bound)."""
    where = pk if isinstance(pk, Where) else None
    query = config.model._default_manager.all()
    if where is not None:
        query = query.filter(**where.compiled.prefilter())
    elif pk is not None:
        query = query.filter(pk=pk)
    if config.m2m_fields:
        query = query.prefetch_related(*(f.name for f in config.m2m_fields))
    found: list[dict[str, Any]] = []
    scan = conf.BROADCAST_SNAPSHOT_MAX_SCAN
    for number, instance in enumerate(query.order_by(*request.order).iterator(500), 1):
        if number > scan:
            return found, False
        data = to_json_data(serialize(config, instance, field_values(config, instance)))
        if where is not None and not where.compiled.test(data, {}, False):
            continue
        if config.object_check is not None and not access.allows(config, user, data):
            continue
        if len(found) == request.limit:
            return found, False
        found.append({"pk": str(instance.pk), "data": data})
    return found, True


_read = in_worker(rows, thread_sensitive=False)

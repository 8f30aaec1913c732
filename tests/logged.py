"""What a model's log holds, event by event, as the instances read it back (a log entry
holds the events of one publish script call)."""

from __future__ import annotations

from typing import Any

from broadcast_app.transport.log_reader import entry_events
from broadcast_app.transport.routes import Route


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def logged_events(client: Any, r: Route, **bounds: Any) -> list[tuple[str, str, str]]:
    """``(id, prev, body)`` of each event in ``r``'s log (``bounds``: XRANGE's ``min``
    and ``max``, stream ids of entries), read with any redis-py client."""
    epoch = _text(client.hget(r.meta, "epoch"))
    return [
        event
        for entry_id, fields in client.xrange(r.stream, **bounds)
        for event in entry_events(
            _text(entry_id), {_text(k): _text(v) for k, v in fields.items()}, epoch
        )
    ]

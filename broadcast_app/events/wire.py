"""An event on the wire: its JSON body and frame, what only instances read behind it,
its id's order, its ``origin`` and its time stamp.

On the wire an event is the ``change`` frame of ``docs/protocol.md``. A publishing
process builds every key but ``type`` and ``id``; Redis assigns the id and prepends
both, so the frame text is built once and sent as-is to every websocket client.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.utils.crypto import salted_hmac

if TYPE_CHECKING:
    from .change import Change


def iso_time(moment: float) -> str:
    """A ``time.time()`` in UTC ISO 8601 with microseconds (the ``ts`` of events)."""
    global _iso_second
    second = int(moment)
    known, prefix = _iso_second
    if second != known:
        # Formatting a datetime is most of an event's encoding when the publisher
        # thread runs cold; its date and time to the second rarely change.
        prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _iso_second = (second, prefix)
    # Truncated, not rounded, to the microsecond: never the next second's text.
    return f"{prefix}{int((moment - second) * 1_000_000):06d}Z"


_iso_second: tuple[int | None, str] = (None, "")


def origin_id(instance_id: str, secret: str | None = None) -> str:
    """The ``origin`` of the events of the process ``instance_id``: opaque to clients.

    Every subscriber reads ``origin``; the instance id (by default ``host:pid``) is for
    staff, whose dashboard maps one to the other. Keyed with ``SECRET_KEY`` (or
    ``secret``), so that it cannot be worked back by trying hosts and pids.
    """
    key = (secret if secret is not None else settings.SECRET_KEY, instance_id)
    try:
        return _origins[key]
    except KeyError:
        pass
    digest = salted_hmac("broadcast_app.origin", instance_id, secret=key[0], algorithm="sha256")
    if len(_origins) > 1000:
        _origins.clear()  # (relayed events name other processes: keep this bounded)
    value = _origins[key] = digest.hexdigest()[:16]
    return value


# Read for every published event.
_origins: dict[tuple[str, str], str] = {}


def event_body(change: Change, ts: str, instance_id: str) -> str:
    """The event JSON without its opening ``{`` and without ``type`` and ``id``
    (``instance_id``: the saving process's, given as ``origin_id()``).

    Redis prepends ``{"type":"change","id":"<id>",`` when it assigns the id.
    """
    changed = change.changed()
    event: dict[str, Any] = {
        "op": change.op,
        "model": change.label,
        "pk": change.pk,
        "data": change.data,
        "changed": changed,
        "ts": ts,
        "origin": origin_id(instance_id),
    }
    if change.config.previous and change.op == "updated":
        event["previous"] = change.previous(changed)
    if change.socket_id is not None:
        event["socket_id"] = change.socket_id
        event["to_others"] = change.to_others
    if change.unknown:
        event["unknown"] = list(change.unknown)
    body: str = _encode(event)[1:]
    if change.op == "updated" and not change.config.previous:
        # The old values filtered subscriptions compare with (see filters.py): behind
        # the JSON, cut off by instances before a client sees the frame.
        old = change.previous(changed)
        if old:
            body += HIDDEN + _encode(old)
    return body


_ENCODER = DjangoJSONEncoder(separators=(",", ":"))
#: between an event body's JSON and what only instances read (never in JSON text: the
#: encoder escapes control characters)
HIDDEN = "\x1e"


def split_hidden(frame: str) -> tuple[str, str | None]:
    """A frame (or event body) without its hidden tail, and the tail (None without one)."""
    cut = frame.find(HIDDEN)
    if cut < 0:
        return frame, None
    return frame[:cut], frame[cut + 1 :]


# The public encoder: one C encoder made once (json.encoder.c_make_encoder, which is
# undocumented) saved too little for the benchmark to tell apart (see "Private APIs we
# use" in docs/architecture.md).
_encode = _ENCODER.encode


#: how every change frame starts, its id next (the publish scripts write it the same)
FRAME_START = '{"type":"change","id":"'


def frame_from_body(event_id: str, body: str) -> str:
    """Rebuild a full ``change`` frame from a stored body (mirrors the Lua script)."""
    return FRAME_START + event_id + '",' + body


def frame_id(frame: str) -> str | None:
    """The id at the start of a change frame as the scripts write it (None otherwise)."""
    if not frame.startswith(FRAME_START):
        return None
    start = len(FRAME_START)
    end = frame.find('"', start)
    return frame[start:end] if end > start else None


# The start of every change frame, as event_body() and the publish script write it.
# Labels are lower-case identifiers; an id or a pk with a quote or a backslash in it does
# not match (the whole frame is parsed then).
_HEAD = re.compile(
    r'\{"type":"change","id":"([^"\\]*)","op":"[a-z]+","model":"([a-z0-9_]+\.[a-z0-9_]+)",'
    r'"pk":"([^"\\]*)",'
)


def frame_head(frame: str) -> dict[str, str] | None:
    """``id``, ``model`` and ``pk`` of a change frame, read without parsing the rest: what
    routing the frame to subscribers needs. None when that is not enough: the event names
    the websocket it came from (``socket_id``), or its start is not as we write it."""
    if '"socket_id":' in frame:
        return None
    match = _HEAD.match(frame)
    if match is None:
        return None
    return {"id": match[1], "model": match[2], "pk": match[3]}


def following_ids(first_id: str, count: int) -> list[str]:
    """The ids of ``count`` events logged by one publish script call, ``first_id`` the
    first: the script gives the next events the next sequence numbers of its
    millisecond (see transport/scripts.py). ValueError if ``first_id`` is not such an id."""
    stream_id, colon, epoch = first_id.partition(":")
    ms, dash, seq = stream_id.partition("-")
    if not (colon and dash and ms.isdigit() and seq.isdigit()):
        raise ValueError(f"not an event id: {first_id!r}")
    first = int(seq)
    return [f"{ms}-{first + n}:{epoch}" for n in range(count)]


def id_key(event_id: str) -> tuple[int, int]:
    """Sort key of an event id within one epoch; ids are otherwise opaque.

    An id is ``<stream id>:<epoch>``, the stream id being Redis's ``<ms>-<seq>``.
    """
    ms, _, seq = event_id.partition(":")[0].partition("-")
    return int(ms), int(seq or 0)

"""What a subscription gets before its live events: ``subscribed``, then the events
after its ``since`` read from the log (or a ``reset`` saying why not) or the snapshot it
asked for (:mod:`.snapshots`), then the live events held meanwhile.

A subscription is in the hub before the log is read: its live events are held while
the read runs (:attr:`.consumers.BroadcastConsumer.resuming`), and those the replay or
the snapshot carried are not sent twice (:mod:`.floors`). Replays are bounded per
connection and per instance (:mod:`.limits`) and by the room left in the connection's
send queue; they go out a few frames at a time, letting other connections' frames
through in between.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from ..events.filters import UNDECIDED, Where, naming, replay_frames
from ..events.model_configs import ModelConfig
from ..events.wire import frame_head
from ..instance.hub import hub
from ..instance.listener import listener
from ..instance.probe import DISCONNECTED
from ..transport.log_reader import Replay, covers, event_log, position
from . import snapshots
from .limits import ResumeBucket, resume_turn

if TYPE_CHECKING:
    from .consumers import BroadcastConsumer

#: replayed frames sent between two turns given to the event loop's other work
REPLAY_CHUNK = 10


async def follow(
    consumer: BroadcastConsumer,
    config: ModelConfig,
    pk: str | None,
    since: object,
    ref: Any,
    request: snapshots.Request | None = None,
) -> None:
    """``subscribed``, then the replay after ``since`` (or a ``reset``), then the live
    events held meanwhile (those the replay carried are not sent twice)."""
    key = (config.label, pk)
    consumer.hold(key)
    sent: set[str] = set()
    try:
        if since is not None and consumer.resumes is None:
            consumer.resumes = ResumeBucket()
        async with resume_turn(consumer.resumes, since) as refused:
            replay, last_id = await _read_log(consumer, config.label, since, refused)
            if consumer.closing:
                return
            subscribed = {"type": "subscribed", "model": config.label, **naming(pk)}
            snapshot = snapshots.plan(request, replay)  # (see snapshots.py)
            answer = {} if snapshot is None else {"snapshot": snapshot}
            consumer.reply({**subscribed, "ref": ref, "last_id": last_id, **answer})
            if replay is not None and replay.complete and consumer.holding(key):
                # The read was limited to the room left in the send queue, but
                # replies may have taken some meanwhile: a replay that overflowed
                # it would end in a reset after part of it went out.
                if len(replay.frames) > consumer.sender.room - 1:
                    replay = Replay(False, "too_many")
                else:
                    sent = await _replay(consumer, config, pk, replay.frames)
        if snapshot and request is not None and not consumer.closing:
            await snapshots.send(consumer, config, pk, request, last_id)
            replay = None
    finally:
        held = consumer.release(key)
    if (since is not None or snapshot) and last_id is not None:
        # What the read (or the snapshot) covered never goes out again, held or
        # still on its way.
        floor = position(last_id)
        if floor is not None and held:
            held = [(frame, event) for frame, event in held if not covers(floor, event["id"])]
        consumer.floors.set(key, last_id, hub.last_ids.get(config.label))
    if held is None:
        # More live events came while the log was read than the queue holds.
        consumer.reset(config.label, pk, "overflow")
        return
    if replay is not None and not replay.complete:
        consumer.reset(config.label, pk, replay.reason)
    for frame, event in held:
        if event["id"] not in sent:
            consumer.send_event(frame, event)
    if not listener.confirmed():
        # Cut off from Redis (see instance/probe.py): what this subscription receives may
        # already lag, as for the subscriptions that got this when it began.
        consumer.reset(config.label, pk, DISCONNECTED)


async def _replay(
    consumer: BroadcastConsumer,
    config: ModelConfig,
    pk: str | None,
    frames: list[tuple[str, str]],
) -> set[str]:
    """Send the replayed events of the subscription; returns their ids.

    A few frames at a time, letting the other connections' frames through in
    between; the subscription's live events are held back until the end.
    """
    if isinstance(pk, Where):
        decided = replay_frames(pk, frames)
        if decided is None:
            # An event the filter cannot place (see filters.UNDECIDED): reload instead.
            consumer.reset(config.label, pk, UNDECIDED)
            return set()
        frames, pk = decided, None
    sent: set[str] = set()
    for number, (event_id, frame) in enumerate(frames, 1):
        # Routing needs the frame's head only; the whole event when a check reads it.
        event: dict[str, Any] = frame_head(frame) or json.loads(frame)
        if pk is not None and event["pk"] != pk:
            continue
        if config.object_check is not None and "data" not in event:
            event = json.loads(frame)
        consumer.send_event(frame, event)
        sent.add(event_id)
        if number % REPLAY_CHUNK == 0:
            await asyncio.sleep(0)
            if consumer.closing:
                break
    return sent


async def _read_log(
    consumer: BroadcastConsumer, label: str, since: object, refused: str | None
) -> tuple[Replay | None, str | None]:
    fallback = hub.last_ids.get(label)
    return await event_log.on_subscribe(label, since, refused, consumer.sender.room, fallback)

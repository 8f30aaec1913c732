"""Confirm that an instance still receives from Redis: probes it sends itself.

A subscription can go quiet without an error: across a network partition the
connection stays open and nothing flows, and channels-redis' layer has no timeout on
it. So the listener sends itself a probe through its own channel layer, to every Redis
host its models' events come from, on a group only it joined, ``_PER_TIMEOUT`` times
per ``BROADCAST_CONFIRM_TIMEOUT``. A probe that comes back proves that every event
Redis published before it was received (one connection, in order). The listener lets
its cache serve hits only until ``BROADCAST_CONFIRM_TIMEOUT`` after the newest probe
back was *sent*, and tells its subscribers when that lapses (see ``Listener``).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from typing import Any

from ..conf import conf
from ..stats import stats
from ..transport import cluster
from ..transport.routes import group_name, route

#: ``type`` of the channel-layer message of a probe
PROBE_TYPE = "broadcast.probe"
#: reset reason when an instance cannot confirm that it receives events
DISCONNECTED = "disconnected"
_PER_TIMEOUT = 5  # probes sent per BROADCAST_CONFIRM_TIMEOUT once confirmed
_FIRST = 0.02  # seconds before the second probe of a subscription (then doubling)


class Probes:
    """The probes of one listener, and what those that came back confirm."""

    def __init__(self) -> None:
        #: whether a probe back confirmed, within the bound, that events arrive
        self.receiving = False
        #: until when (time.monotonic()) the probes back so far confirm it
        self.until = 0.0
        #: per probed Redis host (by index): when its newest probe back was sent
        self._confirmed: dict[int, float] = {}
        self._hosts = 0
        self._token = ""
        self._token_pid = 0

    @staticmethod
    def interval() -> float:
        """Seconds between two probes (once confirmed)."""
        return conf.BROADCAST_CONFIRM_TIMEOUT / _PER_TIMEOUT

    def groups(self, labels: list[str]) -> list[str]:
        """One group per Redis host that ``labels``' events come from, for this listener
        alone (its name holds a token of this process); group i probes host i."""
        if self._token_pid != os.getpid():  # a forked child must not share the parent's
            self._token, self._token_pid = secrets.token_hex(8), os.getpid()
        if cluster.enabled():
            # On a cluster each model's events come from its slot's node: one probe per
            # model, in its slot, confirms each connection they travel on.
            self._confirmed = {}
            groups = [cluster.probe_group(label, self._token) for label in labels]
            groups = groups or [cluster.probe_group(self._label(0), self._token)]
            self._hosts = len(groups)
            return groups
        wanted = {route(label).key for label in labels} or {route(self._label(0)).key}
        found: dict[str, str] = {}
        # The layer picks a group's host by hashing its name: try names until each
        # wanted host has one (a few tries per host).
        for n in range(64 * len(wanted)):
            key = route(self._label(n)).key
            if key in wanted and key not in found:
                found[key] = group_name(self._label(n))
                if len(found) == len(wanted):
                    break
        self._confirmed = {}
        self._hosts = len(found)
        return list(found.values())

    def _label(self, n: int) -> str:
        # "-" cannot start an app label: no model's group has such a name.
        return f"-probe.{self._token}.{n}"

    async def send(self, layer: Any, groups: list[str]) -> None:
        """Send probes to ``groups`` through ``layer`` until cancelled; never raises."""
        sending: dict[int, asyncio.Task[None]] = {}
        pause = _FIRST
        try:
            while True:
                sent = time.monotonic()
                for index, group in enumerate(groups):
                    task = sending.get(index)
                    if task is None or task.done():  # a send that hangs is not repeated
                        message = {"type": PROBE_TYPE, "token": self._token, "host": index}
                        message["sent"] = sent
                        sending[index] = asyncio.ensure_future(_send(layer, group, message))
                # Quickly at first: the subscription may not be in place for the first.
                pause = self.interval() if self.receiving else min(pause * 2, self.interval())
                await asyncio.sleep(pause)
        finally:
            for task in sending.values():
                task.cancel()
            await asyncio.gather(*sending.values(), return_exceptions=True)

    def confirms(self, message: dict[str, Any]) -> float | None:
        """The deadline (``time.monotonic()``) up to which the probes back, ``message``
        included, confirm that events arrive; None if it confirms nothing new."""
        index, sent = message.get("host"), message.get("sent")
        if message.get("token") != self._token or not isinstance(index, int):
            return None  # another process's (or an earlier run's)
        if not isinstance(sent, float) or not 0 <= index < self._hosts:
            return None
        self._confirmed[index] = max(sent, self._confirmed.get(index, sent))
        if len(self._confirmed) < self._hosts:
            return None
        timeout = conf.BROADCAST_CONFIRM_TIMEOUT
        left = min(self._confirmed.values()) + timeout - time.monotonic()
        if left <= 0:
            return None  # sent long ago (held up in a partition): confirms nothing now
        if not self.receiving and left < timeout - 2 * self.interval():
            # Held up for a while: it would end a lapse for a moment only, and the next
            # probe, sent since, is due within an interval.
            return None
        return time.monotonic() + left

    def lapsed(self) -> bool:
        """Whether confirmation was there and has run out."""
        return self.receiving and time.monotonic() >= self.until

    def next_check(self) -> float:
        """Seconds until :meth:`lapsed` may turn true (or a while, when it cannot)."""
        if not self.receiving:
            return self.interval()
        return min(self.interval(), max(0.0, self.until - time.monotonic()))


async def _send(layer: Any, group: str, message: dict[str, Any]) -> None:
    try:
        # The layer's connections have no timeouts of their own: a partition would hold
        # this send for as long as it lasts.
        await asyncio.wait_for(layer.group_send(group, message), conf.BROADCAST_CONFIRM_TIMEOUT)
    except asyncio.CancelledError:
        raise
    except Exception:
        stats.incr("probe_errors")

"""Running a channels consumer that reads no channel layer in its own task (fast path
``one_task``).

channels' ``AsyncConsumer.__call__`` hands the client's messages to ``dispatch`` through
``await_many_dispatch``: a task per source and an ``asyncio.wait`` per message, so that
a layer can be read beside the client. A consumer without a layer holds that task and
its wait for as long as the connection is idle. :func:`run_in_one_task` does what
``__call__`` does for such a consumer (``scope``, ``channel_layer`` and ``base_send`` set,
every message dispatched until ``StopConsumer``) in the caller's task instead. What
``__call__`` sets is not documented: :func:`available` compares the names its code uses
with those known (channels 4.0 to 4.3), and tests/test_upstream_contracts.py pins them.
Public path: channels' own ``__call__``.
"""

from __future__ import annotations

import functools
from typing import Any

from channels.consumer import AsyncConsumer
from channels.exceptions import StopConsumer

from . import enabled

#: every name channels' ``AsyncConsumer.__call__`` uses, as far as this module knows it
KNOWN_NAMES = frozenset(
    {
        "StopConsumer", "_sync", "async_to_sync", "await_many_dispatch", "base_send",
        "channel_layer", "channel_layer_alias", "channel_name", "channel_receive",
        "dispatch", "functools", "get_channel_layer", "new_channel", "partial", "receive",
        "scope",
    }
)  # fmt: skip


@functools.cache
def _as_known(owner: type) -> bool:
    inherited = next(
        (c.__dict__["__call__"] for c in owner.__mro__[1:] if "__call__" in c.__dict__), None
    )
    code = getattr(inherited, "__code__", None)
    return (
        issubclass(owner, AsyncConsumer)
        and inherited is AsyncConsumer.__call__  # no class between overrides it
        and code is not None
        and set(code.co_names) == KNOWN_NAMES
        and not getattr(owner, "_sync", True)
    )


def available(owner: type) -> bool:
    """Whether ``owner`` (the ``AsyncConsumer`` subclass whose ``__call__`` calls
    :func:`run_in_one_task`) may: its parents' ``__call__`` is channels' own, as known."""
    return enabled("one_task") and _as_known(owner)


async def run_in_one_task(consumer: Any, scope: Any, receive: Any, send: Any) -> None:
    """``AsyncConsumer.__call__`` for a consumer without a channel layer, the client's
    messages awaited in this task."""
    consumer.scope = scope
    consumer.channel_layer = None
    consumer.base_send = send
    try:
        while True:
            await consumer.dispatch(await receive())
    except StopConsumer:
        pass

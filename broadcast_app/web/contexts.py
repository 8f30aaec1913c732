"""Worker-thread calls from a connection's task that leave its context as it was.

asgiref's ``sync_to_async`` (and channels' ``database_sync_to_async``) copies the context
variables the worker thread changed (Django's connection handler, asgiref's locals)
back into the caller's context when the call returns. Awaited in a websocket
connection's task, they stay for as long as the connection lives, in each of
thousands of idle connections (docs/scaling.md). :func:`in_worker` is
``database_sync_to_async`` awaited in a task of its own, whose context goes with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from channels.db import database_sync_to_async

P = ParamSpec("P")
T = TypeVar("T")


def in_worker(
    func: Callable[P, T], *, thread_sensitive: bool = True
) -> Callable[P, Coroutine[Any, Any, T]]:
    """``database_sync_to_async(func, thread_sensitive=...)``, each call awaited in a
    task of its own (cancelled with the caller)."""
    threaded = database_sync_to_async(func, thread_sensitive=thread_sensitive)

    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        result: T = await asyncio.ensure_future(threaded(*args, **kwargs))
        return result

    return call

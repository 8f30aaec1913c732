"""Awaiting worker-thread calls from a connection's task without growing its context.

asgiref's ``sync_to_async`` (and channels' ``database_sync_to_async``) copies the context
variables the worker thread changed (Django's connection handler, asgiref's locals)
back into the caller's context when the call returns. Awaited in a websocket
connection's task, they stay for as long as the connection lives, in each of
thousands of idle connections (docs/scaling.md). :func:`isolated` awaits such a call in
a task of its own, whose context goes with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def isolated(call: Coroutine[Any, Any, T]) -> T:
    """``await call`` in a task of its own (cancelled with the caller)."""
    return await asyncio.ensure_future(call)

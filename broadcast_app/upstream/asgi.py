"""Writing websocket frames: past channels' session middleware, and the server's
``send`` run up to its first wait in the caller's task.

Public paths: the consumer's ``base_send`` as channels hands it over, and an eager task
(``asyncio.eager_task_factory``, Python 3.12+) or, before 3.12, an ordinary task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from types import CoroutineType
from typing import Any

from . import enabled

Send = Callable[[dict[str, Any]], Awaitable[None]]

# Public since Python 3.12: runs a new task's first step at once, in the caller.
_eager_task_factory: Any = getattr(asyncio, "eager_task_factory", None)


def session_wrapper_class() -> type | None:
    """channels' ``InstanceSessionWrapper`` (whose ``real_send`` is the server's send),
    or None if channels no longer has it."""
    try:
        from channels.sessions import InstanceSessionWrapper
    except ImportError:
        return None
    return InstanceSessionWrapper  # type: ignore[no-any-return]


def server_send(send: Send) -> Send:
    """The server's own ``send`` under channels' session middleware (fast path
    ``session_send``), else ``send`` itself.

    ``InstanceSessionWrapper.send`` only acts on ``http.response.start`` (it saves the
    session and sets its cookie); for a websocket frame it reads the session's state and
    passes the message on, at a cost per frame of every client.
    """
    wrapper_class = session_wrapper_class()
    if wrapper_class is None or not enabled("session_send"):
        return send
    wrapper = getattr(send, "__self__", None)
    while isinstance(wrapper, wrapper_class):
        inner = getattr(wrapper, "real_send", None)
        if not callable(inner):
            return send  # channels changed: the public path
        send = inner
        wrapper = getattr(send, "__self__", None)
    return send


class Pending:
    """A send the server made wait: ``wait()`` finishes it, ``close()`` abandons it."""

    __slots__ = ("_awaited", "_coro", "_task")

    def __init__(
        self,
        coro: Coroutine[Any, Any, None] | None = None,
        awaited: Any = None,
        task: asyncio.Task[None] | None = None,
    ) -> None:
        self._coro, self._awaited, self._task = coro, awaited, task

    async def wait(self) -> None:
        """Until the send is done; raises its error (``ConnectionError`` if the server
        cancelled what it waited for)."""
        if self._task is not None:
            try:
                await asyncio.shield(self._task)
            except asyncio.CancelledError as exc:
                if self._task.cancelled():
                    raise ConnectionError("the server cancelled a websocket send") from exc
                raise
            return
        assert self._coro is not None
        await _finish(self._coro, self._awaited)

    def close(self) -> None:
        """Abandon the send (the connection goes away, or stopped reading)."""
        if self._task is not None:
            self._task.cancel()
        elif self._coro is not None:
            self._coro.close()


def start(send: Send, message: dict[str, Any], stepped: bool) -> Pending | None:
    """Start ``send(message)`` and run it up to its first wait in the caller's task:
    None if it finished; a :class:`Pending` if the server made it wait. Raises what the
    send raised at once.

    ``stepped`` (fast path ``stepped_send``, see :func:`stepping`) drives the coroutine
    by hand, as an eager task would, without making a task; otherwise an eager task
    runs it (or, before Python 3.12, an ordinary one, so the frame is written at the
    next turn of the loop).
    """
    sending = send(message)
    if type(sending) is not CoroutineType and not isinstance(sending, Coroutine):
        sending = _awaiting(sending)  # a send returning some other awaitable
    if stepped:
        try:
            awaited = sending.send(None)
        except StopIteration:
            return None
        return Pending(coro=sending, awaited=awaited)
    loop = asyncio.get_running_loop()
    if _eager_task_factory is not None:
        task = _eager_task_factory(loop, sending)
    else:
        task = loop.create_task(sending)
    if task.done():
        task.result()  # raises the send's own error
        return None
    return Pending(task=task)


def stepping() -> bool:
    """Whether :func:`start` may drive sends by hand (fast path ``stepped_send``)."""
    return enabled("stepped_send")


async def _awaiting(awaitable: Awaitable[None]) -> None:
    await awaitable


def _done(ready: asyncio.Future[None], _: object) -> None:
    if not ready.done():
        ready.set_result(None)


async def _finish(coro: Coroutine[Any, Any, None], awaited: Any) -> None:
    """Run to its end a coroutine whose first step already returned ``awaited``.

    What an asyncio task does with each step of its coroutine (undocumented: asyncio's
    coroutines yield the future they wait for, or None for one turn of the loop): wait
    until that future is done, then resume the coroutine, which reads the outcome.
    """
    loop = asyncio.get_running_loop()
    while True:
        if awaited is None:
            await asyncio.sleep(0)
        elif asyncio.isfuture(awaited):
            # Not ``await awaited``: the coroutine awaits it already (a future is
            # awaited once); a future of our own is told when it is done.
            ready: asyncio.Future[None] = loop.create_future()
            awaited.add_done_callback(partial(_done, ready))
            await ready
        else:
            raise RuntimeError(f"a websocket send yielded {awaited!r}, not a future")
        try:
            awaited = coro.send(None)
        except StopIteration:
            return
        except asyncio.CancelledError as exc:
            # The server cancelled what its send waited for (this writer was not).
            raise ConnectionError("the server cancelled a websocket send") from exc

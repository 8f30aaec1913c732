"""The per-connection frame sender: written at once when the server can, in order, bounded."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from broadcast_app.web.sender import Sender

pytestmark = pytest.mark.asyncio


class Server:
    """A server ``send`` that writes at once, or waits while ``reading`` is clear."""

    def __init__(self) -> None:
        self.written: list[str] = []
        self.reading = asyncio.Event()
        self.reading.set()
        self.abandoned = 0
        self.stalled = 0
        self.progress = asyncio.Event()

    async def send(self, message: dict[str, Any]) -> None:
        assert message["type"] == "websocket.send"
        try:
            await self.reading.wait()
        except GeneratorExit:
            self.abandoned += 1
            raise
        self.written.append(message["text"])
        self.progress.set()

    async def on_stalled(self) -> None:
        self.stalled += 1
        self.progress.set()

    async def until(self, check: Any) -> None:
        """Wait (at most 5 s) until ``check()`` holds; it is checked after each write."""
        async with asyncio.timeout(5):
            while not check():
                self.progress.clear()
                await self.progress.wait()


def sender_for(server: Server, limit: int = 3, timeout: float = 5.0) -> Sender:
    return Sender(server.send, limit, timeout, server.on_stalled)


async def test_a_frame_is_written_before_put_returns_when_the_server_can_take_it() -> None:
    server = Server()
    sender = sender_for(server)
    assert sender.put("a") and sender.put("b")
    # No task switch in between: written within put() itself.
    assert server.written == ["a", "b"]
    await sender.close()


async def test_a_sender_whose_sends_never_wait_holds_no_task_and_no_queue() -> None:
    # Held by every connection: the writer task and the queue come with the first wait.
    server = Server()
    sender = sender_for(server)
    assert sender.put("a") and sender.room == 3
    assert sender._task is None and sender._queue is None
    server.reading.clear()
    assert sender.put("b") and sender.put("c")  # "b" waits for the server, "c" behind it
    assert sender._task is not None and list(sender.queue) == ["c"]
    server.reading.set()
    await server.until(lambda: server.written == ["a", "b", "c"])
    await sender.close()


async def test_frames_wait_behind_a_send_the_server_holds_and_keep_their_order() -> None:
    server = Server()
    sender = sender_for(server, limit=3)
    server.reading.clear()
    assert all(sender.put(text) for text in "abcd")  # one in flight, three queued
    assert not sender.put("e")  # the queue is full: the caller decides
    assert sender.room == 0
    await asyncio.sleep(0.01)  # time for a wrong write to happen
    assert server.written == []
    server.reading.set()
    await server.until(lambda: len(server.written) == 4)
    assert server.written == ["a", "b", "c", "d"]
    assert sender.put("f") and server.written[-1] == "f"  # writes at once again
    await sender.close()


async def test_a_client_that_stays_unwritable_is_reported_once_and_dropped() -> None:
    server = Server()
    sender = sender_for(server, timeout=0.2)
    server.reading.clear()
    sender.put("a")
    sender.put("b")
    await server.until(lambda: server.stalled)
    assert server.abandoned == 1  # the waiting send was closed, not left pending
    assert not sender.open and sender.put("c")  # dropped: the connection is closing
    server.reading.set()
    await asyncio.sleep(0.01)  # time for a wrong write to happen
    assert server.written == [] and server.stalled == 1
    await sender.close()


async def test_a_failing_send_never_raises_into_the_caller() -> None:
    async def broken(message: dict[str, Any]) -> None:
        raise ConnectionResetError("gone")

    stalled: list[bool] = []

    async def on_stalled() -> None:
        stalled.append(True)

    sender = Sender(broken, 3, 5.0, on_stalled)
    assert sender.put("a")
    assert not sender.open and sender.put("b")
    await sender.close()
    assert not stalled


async def test_a_send_that_fails_after_waiting_sees_its_own_error() -> None:
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[None] = loop.create_future()
    seen: list[BaseException] = []
    failed = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        try:
            await outcome
        except OSError as exc:
            seen.append(exc)
            failed.set()  # the writer handles the error in this same step
            raise

    sender = Sender(send, 3, 5.0, _never)
    sender.put("a")
    sender.put("b")
    outcome.set_exception(OSError("reset by peer"))
    await asyncio.wait_for(failed.wait(), 5)
    assert not sender.open
    assert [str(exc) for exc in seen] == ["reset by peer"]
    assert not sender.queue
    await sender.close()


async def test_a_send_that_yields_to_the_loop_is_finished_by_the_writer() -> None:
    written: list[str] = []
    both = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        await asyncio.sleep(0)  # a bare yield, not a future
        written.append(message["text"])
        if len(written) == 2:
            both.set()

    sender = Sender(send, 3, 5.0, _never)
    sender.put("a")
    sender.put("b")
    await asyncio.wait_for(both.wait(), 5)
    assert written == ["a", "b"]
    await sender.close()


async def test_closing_abandons_a_waiting_send() -> None:
    server = Server()
    sender = sender_for(server)
    server.reading.clear()
    sender.put("a")
    sender.put("b")
    await asyncio.sleep(0)  # the writer takes over the waiting send
    await sender.close()
    assert server.abandoned == 1
    server.reading.set()
    await asyncio.sleep(0.01)  # time for a wrong write to happen
    assert server.written == [] and server.stalled == 0


async def _never() -> None:
    raise AssertionError("on_stalled must not be called")


async def test_a_send_whose_wait_the_server_cancels_counts_as_failed() -> None:
    loop = asyncio.get_running_loop()
    waited: asyncio.Future[None] = loop.create_future()
    cancelled = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        try:
            await waited
        except asyncio.CancelledError:
            cancelled.set()  # the writer handles it in this same step
            raise

    sender = Sender(send, 3, 5.0, _never)
    sender.put("a")
    sender.put("b")
    waited.cancel()  # the server's own doing, not the writer's
    await asyncio.wait_for(cancelled.wait(), 5)
    assert not sender.open and not sender.queue
    # the writer is still there, idle, until closed
    assert sender._task is not None and not sender._task.done()
    await sender.close()

"""Sending a batch of commands to Redis in one write with redis-py.

Fast path ``raw_connection``: one connection taken from the client's pool and kept
(``ConnectionPool.get_connection()``), written with ``Connection.send_packed_command``
and read with ``Connection.read_response``: names without an underscore, but redis-py
documents no contract for them, and ``get_connection``'s arguments changed in 5.3.
Taking a connection from the pool for every command costs more than the command (a
lock and a poll of the socket), and writing apart from reading lets the publisher
thread wait before it reads Redis's replies (see publish/publisher.py, ``_REPLY_DELAY``).

Public path: a non-transactional pipeline (``Redis.pipeline(transaction=False)``), one
write and one read per batch, without the pause in between.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

import redis

from . import enabled


class Commands(Protocol):
    """Sends a batch of commands and returns their replies, in order."""

    def call(
        self, commands: list[tuple[Any, ...]], pause: Callable[[], None] | None = None
    ) -> list[Any]:
        """Send ``commands`` in one write and return their replies (``pause`` runs in
        between when it can); raises on the first error."""

    def close(self) -> None:
        """Let go of the connection."""


def commands_for(client: redis.Redis) -> Commands:
    """How to send batches to ``client``'s Redis: its own kept connection (fast path
    ``raw_connection``) or pipelines."""
    if enabled("raw_connection"):
        connection = _kept_connection(client)
        if connection is not None:
            return RawConnection(connection)
    return Pipelined(client)


def _kept_connection(client: redis.Redis) -> Any:
    pool = client.connection_pool
    try:
        # From the pool, so it is connected as the client's own would be (Sentinel: to
        # the current master); it goes back with the client.
        connection = pool.get_connection()
    except TypeError:  # a redis-py before 5.3, which wanted a command name
        return None
    if not all(
        callable(getattr(connection, name, None))
        for name in ("send_packed_command", "read_response", "disconnect")
    ):
        pool.release(connection)
        return None
    return connection


class RawConnection:
    """One connection of the client's, written and read apart (fast path)."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self._lock = threading.Lock()

    def call(
        self, commands: list[tuple[Any, ...]], pause: Callable[[], None] | None = None
    ) -> list[Any]:
        connection = self._connection
        packed = resp(commands)
        with self._lock:
            connection.send_packed_command([packed])
            if pause is not None:
                pause()
            return [connection.read_response() for _ in commands]

    def close(self) -> None:
        self._connection.disconnect()


class Pipelined:
    """A pipeline per batch (public path)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def call(
        self, commands: list[tuple[Any, ...]], pause: Callable[[], None] | None = None
    ) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)  # type: ignore[no-untyped-call]
        # The first error raises, as for the fast path; the caller drops the client.
        return pipe.execute()

    def close(self) -> None:
        pass  # the client's pool holds the connections


def resp(commands: list[tuple[Any, ...]]) -> bytes:
    """``commands`` in the Redis protocol, in one buffer.

    What redis-py's ``pack_commands()`` gives for the argument kinds the publisher sends
    (str, bytes, int), in half its time: packing comes between an event's commit and
    its write to Redis, and redis-py's general packer (any argument type, chunked
    buffers) costs tens of microseconds there when the thread runs cold.
    """
    out = bytearray()
    for command in commands:
        out += b"*%d\r\n" % len(command)
        for arg in command:
            if isinstance(arg, str):
                data = arg.encode()
            elif isinstance(arg, bytes):
                data = arg
            elif type(arg) is int:
                data = b"%d" % arg
            else:
                raise TypeError(f"cannot send {type(arg).__name__} to Redis")
            out += b"$%d\r\n%s\r\n" % (len(data), data)
    return bytes(out)

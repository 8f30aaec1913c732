"""A TCP proxy that can blackhole its connections: a network partition in a test.

While cut, the proxy forwards nothing in either direction but closes nothing: the
peers' connections stay open and simply fall silent, as across a partition where
packets are dropped (TCP holds what was sent, and delivers it if the path comes back
before the connection times out). New connections are accepted and then hang. On heal,
what was held flows again in order; or, with ``drop``, every connection opened before
is closed instead, as a firewall or NAT that forgot them would.

It runs its own event loop in a thread, so a test that blocks its loop (or a process
started synchronously) never stalls the traffic it carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from broadcast_app.dev.embedded_redis import free_port

_CHUNK = 65536
_STOP_WAIT = 5.0  # seconds stop() waits for the proxy's thread


class BlackholeProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_port`` until told to stop forwarding."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="blackhole-proxy")
        self._flowing: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        #: writers of every open connection (both sides), to close them on drop/stop
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> BlackholeProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def cut(self) -> None:
        """Stop forwarding; every connection stays open."""
        self._call(self._set_flowing(False))

    def heal(self, drop: bool = False) -> None:
        """Forward again (with ``drop``, after closing every connection opened so far)."""
        self._call(self._heal(drop))

    def stop(self) -> None:
        """Close the listening socket and every connection; end the thread."""
        if self._thread.is_alive():
            self._call(self._close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_STOP_WAIT)
        self._loop.close()

    def __enter__(self) -> BlackholeProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- in the proxy's loop --------------------------------------------------------

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(_STOP_WAIT)

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.port = free_port()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _heal(self, drop: bool) -> None:
        if drop:
            await self._close_connections()
        await self._set_flowing(True)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._close_connections()

    async def _close_connections(self) -> None:
        writers, self._writers = self._writers, set()
        for writer in writers:
            writer.transport.abort()  # a reset, as from a middlebox that forgot it

    async def _accept(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        assert self._flowing is not None
        self._writers.add(client_w)
        await self._flowing.wait()  # across a partition nothing reaches the target
        try:
            upstream_r, upstream_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        if client_w not in self._writers:  # dropped while connecting
            upstream_w.transport.abort()
            return
        self._writers.add(upstream_w)
        await asyncio.gather(
            self._pipe(client_r, upstream_w, client_w),
            self._pipe(upstream_r, client_w, upstream_w),
        )

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: asyncio.StreamWriter,
    ) -> None:
        assert self._flowing is not None
        try:
            while writer in self._writers:
                await self._flowing.wait()
                data = await reader.read(_CHUNK)
                if not data:
                    break
                # Read just before a cut: held, not forwarded, until the heal.
                await self._flowing.wait()
                if writer not in self._writers:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # One side ended: end the other, as the connection would.
            for side in (writer, peer):
                self._writers.discard(side)
                with contextlib.suppress(Exception):
                    side.close()

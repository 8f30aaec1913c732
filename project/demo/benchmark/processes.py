"""The child processes of a run: uvicorn servers and the client fleet, always stopped.

Children run in their own process group, so a Ctrl-C in the terminal reaches only the
driver, which then stops them in order (``Children.stop_all``) instead of everything
dying at once mid-measurement. Their output goes to log files, quoted when one fails.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import IO, Any

from broadcast_app.web.server_limits import ws_max_size

from ..children import stop_processes

#: seconds a child may take to stop after SIGTERM before it is killed
STOP_TIMEOUT = 10.0


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds process ``pid`` used so far (Linux ``/proc``; else None)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after the command name, from field 3 on
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


class BenchmarkError(Exception):
    """The run could not go on: a process failed to start, died, or answered wrongly."""


class Interrupted(BaseException):
    """SIGTERM arrived (SIGINT raises KeyboardInterrupt): stop and clean up."""


class Children:
    """Every process started for one run, with its log file."""

    def __init__(self, log_dir: Path, cwd: Path) -> None:
        self.log_dir = log_dir
        self.cwd = cwd
        self.processes: dict[str, subprocess.Popen[Any]] = {}
        self._logs: list[IO[bytes]] = []

    def start(
        self, name: str, command: list[str], env: dict[str, str], **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start ``command``; its stderr (and stdout, unless piped) goes to ``<name>.log``."""
        log = (self.log_dir / f"{name}.log").open("wb")
        self._logs.append(log)
        kwargs.setdefault("stdout", log)
        process = subprocess.Popen(
            command, cwd=self.cwd, env=env, stderr=log, process_group=0, **kwargs
        )
        self.processes[name] = process
        return process

    def check_alive(self) -> None:
        """Raise :class:`BenchmarkError`, quoting its log, if a child has exited."""
        for name, process in self.processes.items():
            code = process.poll()
            if code is not None:
                raise BenchmarkError(
                    f"{name} exited with code {code}. Its log ends with:\n{self.log_tail(name)}"
                )

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def log_lines(self, name: str, *needles: str) -> list[str]:
        """Lines of a child's log containing any of ``needles``."""
        path = self.log_dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return [line for line in text.splitlines() if any(n in line for n in needles)]

    def stop_all(self) -> None:
        """SIGTERM every child (last started first), SIGKILL those still up after a while."""
        stop_processes(reversed(self.processes.values()), STOP_TIMEOUT)
        for log in self._logs:
            log.close()
        self._logs = []


def uvicorn_command(app: str, port: int) -> list[str]:
    """The command line of one uvicorn server (the same flags for ours and the floor)."""
    return [
        sys.executable, "-m", "uvicorn", app,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--ws-per-message-deflate", "false",
        "--ws-max-size", str(ws_max_size()),
        "--lifespan", "on",
        "--log-level", "warning",
        "--no-access-log",
    ]  # fmt: skip


def wait_http(children: Children, url: str, timeout: float) -> None:
    """Return once ``url`` answers HTTP at all; raise if a child dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        children.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # any status: the server is up
        except OSError:
            if time.monotonic() > deadline:
                raise BenchmarkError(f"No HTTP answer from {url} after {timeout:.0f}s.") from None
            time.sleep(0.1)


class FleetProcess:
    """The driver's end of the client fleet: one JSON command, one JSON reply."""

    def __init__(self, children: Children, env: dict[str, str], name: str = "clients") -> None:
        self.children = children
        self.process = children.start(
            name,
            [sys.executable, "-m", "project.demo.benchmark.clients"],
            env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def call(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send a command and return the reply; raise :class:`BenchmarkError` on error."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else b""
        if not line:
            self.children.check_alive()
            raise BenchmarkError(f"The client fleet did not answer {command['cmd']!r}.")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise BenchmarkError(f"The client fleet failed ({command['cmd']}): {reply['error']}")
        return reply


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM into :class:`Interrupted`, SIGINT into KeyboardInterrupt (even when
    the parent shell ignored SIGINT for a background job)."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signal.Signals(signum).name)

    with _handling({signal.SIGTERM: interrupt, signal.SIGINT: signal.default_int_handler}):
        yield


@contextmanager
def ignoring_signals() -> Iterator[None]:
    """Let cleanup finish: a second Ctrl-C must not leave processes behind."""
    with _handling({signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: signal.SIG_IGN}):
        yield


Handler = Callable[[int, FrameType | None], None] | signal.Handlers


@contextmanager
def _handling(handlers: dict[signal.Signals, Handler]) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (call_command from a thread)
        return
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)

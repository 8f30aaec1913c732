"""``manage.py broadcast_demo``, run as a user runs it: in a terminal that then closes.

The demo is started in a pseudo-terminal of its own (its controlling terminal, as a
shell's would be), with no ``REDIS_URL`` so that it starts its own Redis too. Closing
the terminal sends it SIGHUP: it must stop every process it started. While it runs,
its instances must close a websocket frame too large for the protocol while reading
it (code 1009) rather than buffer it.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from broadcast_app.dev.embedded_redis import free_port
from broadcast_app.web.server_limits import ws_max_size
from tests.e2e_support import BASE_DIR, last_json_line, manage, subprocess_env

#: seconds the demo may take to migrate, seed and start its instances
STARTUP_TIMEOUT = 90.0
#: seconds it may take to stop everything after SIGHUP
STOP_TIMEOUT = 30.0


def test_a_port_in_use_is_reported_with_the_option_that_changes_it(tmp_path: Path) -> None:
    env = subprocess_env(DATABASE_URL=f"sqlite:///{tmp_path / 'demo.sqlite3'}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "manage.py", "broadcast_demo", "--ports", str(port)],
            cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode != 0
    assert re.search(rf"CommandError: Port {port} is already in use.*--ports \d+", result.stderr)


INSTANCE_COMMAND = """
import json
from broadcast_app.web.server_limits import ws_max_size
from project.demo import launcher
command = launcher.instance_command(8001)
print(json.dumps([command[command.index("--ws-max-size") + 1], str(ws_max_size())]))
"""


def test_instances_run_with_a_websocket_size_limit_near_the_protocols(tmp_path: Path) -> None:
    env = subprocess_env(DATABASE_URL=f"sqlite:///{tmp_path / 'demo.sqlite3'}")
    given, limit = last_json_line(manage("shell", "-c", INSTANCE_COMMAND, env=env).stdout)
    assert given == limit


def _port_is_free(port: int) -> bool:
    """As the launcher checks it (SO_REUSEADDR: connections in TIME_WAIT don't count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _descendants(root: int) -> set[int]:
    """Every live process below ``root`` (from /proc: no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), []):
            found.add(child)
            pending.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _read_until(fd: int, text: str, process: subprocess.Popen[bytes], timeout: float) -> str:
    output = b""
    deadline = time.monotonic() + timeout
    while text.encode() not in output:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or process.poll() is not None:
            raise AssertionError(f"the demo did not print {text!r}:\n{output.decode()}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                output += os.read(fd, 65536)
            except OSError:  # EIO: the terminal's other side is gone
                break
    return output.decode(errors="replace")


async def _frames_against(port: int) -> tuple[dict[str, object], int | None]:
    url = f"ws://127.0.0.1:{port}/ws/broadcast/"
    origin = f"http://127.0.0.1:{port}"
    async with connect(url, origin=origin, proxy=None, max_size=None) as ws:  # type: ignore[arg-type]
        # Over the protocol's limit but within the margin: the polite error.
        await ws.send("x" * (ws_max_size() // 2))
        polite = json.loads(await asyncio.wait_for(ws.recv(), 10))
    async with connect(url, origin=origin, proxy=None, max_size=None) as ws:  # type: ignore[arg-type]
        # Far over it: closed by the server while reading, never handed to the app.
        code = None
        try:
            await ws.send("x" * (1024 * 1024))
            await asyncio.wait_for(ws.recv(), 10)
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
    return polite, code


@pytest.mark.e2e
def test_closing_the_terminal_stops_everything_the_demo_started(tmp_path: Path) -> None:
    setsid = shutil.which("setsid")
    assert setsid, "util-linux setsid is needed to give the demo a terminal of its own"
    ports = [free_port(), free_port()]
    env = subprocess_env(DATABASE_URL=f"sqlite:///{tmp_path / 'demo.sqlite3'}")
    env.pop("REDIS_URL", None)  # the demo starts its own Redis: it must stop it too
    master, slave = pty.openpty()
    started: set[int] = set()
    process = subprocess.Popen(
        # --ctty: the pty becomes the demo's controlling terminal, as in a shell.
        [setsid, "--ctty", "--wait", sys.executable, "manage.py", "broadcast_demo",
         "--ports", ",".join(map(str, ports))],
        cwd=BASE_DIR, env=env, stdin=slave, stdout=slave, stderr=slave,
    )  # fmt: skip
    os.close(slave)
    try:
        output = _read_until(master, "Press Ctrl-C to stop.", process, STARTUP_TIMEOUT)
        started = _descendants(process.pid)
        # Two uvicorn instances and the redis-server, at least.
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in started]
        assert sum(b"uvicorn" in c for c in commands) == 2, commands
        assert any(b"redis-server" in c for c in commands), commands

        polite, code = asyncio.run(_frames_against(ports[0]))
        assert polite["type"] == "error" and polite["code"] == "too_large", polite
        assert code == 1009
        assert "accepts websocket messages of up to" not in output  # no size warning

        os.close(master)  # the terminal closes: SIGHUP to the demo
        master = -1
        assert process.wait(STOP_TIMEOUT) == 0
        left = [pid for pid in started if _alive(pid)]
        assert left == [], f"still running after SIGHUP: {left}"
        for port in ports:
            assert _port_is_free(port)
    finally:
        if master != -1:
            os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()
        # A failure must not leave this test's processes behind (they are ours).
        for pid in started:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

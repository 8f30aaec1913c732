"""Process and protocol helpers for the end-to-end tests (tests/demo/test_e2e.py).

A throwaway database (SQLite file, or a uniquely named PostgreSQL or MySQL/MariaDB
database), the demo's ``manage.py`` run in subprocesses, real server instances (uvicorn,
or daphne, hypercorn, granian) whose output goes to files, and thin HTTP (admin forms)
and websocket clients. Every process started here is stopped by the context manager or
method that started it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.typing import Origin
from websockets.uri import parse_uri

from broadcast_app.dev.embedded_redis import free_port

BASE_DIR = Path(__file__).resolve().parent.parent
#: seconds an instance may take to answer HTTP after it starts
STARTUP_TIMEOUT = 30.0
#: seconds an instance may take to exit after SIGTERM before it is killed
STOP_TIMEOUT = 10.0
#: seconds a ``manage.py`` subprocess may run
MANAGE_TIMEOUT = 120.0
#: seconds to wait for one websocket frame
FRAME_TIMEOUT = 10.0


# -- database -------------------------------------------------------------------------


@contextmanager
def fresh_database(env_url: str | None, directory: Path) -> Iterator[str]:
    """Yield the ``DATABASE_URL`` of an empty database, removed afterwards.

    A PostgreSQL or MySQL/MariaDB ``env_url`` gives a uniquely named database on that
    server (created and dropped through a connection to the server); anything else a
    SQLite file in ``directory``.
    """
    scheme = urlsplit(env_url).scheme if env_url else ""
    if env_url and scheme in {"postgres", "postgresql", "pgsql"}:
        with _postgres_database(env_url) as url:
            yield url
    elif env_url and scheme in {"mysql", "mysql2", "mariadb"}:
        with _mysql_database(env_url) as url:
            yield url
    else:
        yield f"sqlite:///{directory / 'e2e.sqlite3'}"


@contextmanager
def _postgres_database(env_url: str) -> Iterator[str]:
    import psycopg
    from psycopg import sql

    parts = urlsplit(env_url)
    name = f"broadcast_e2e_{uuid.uuid4().hex[:12]}"
    admin = psycopg.conninfo.make_conninfo(
        host=parts.hostname or "",
        port=parts.port or 5432,
        user=parts.username or "",
        password=parts.password or "",
        dbname="postgres",
    )
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            # FORCE: a connection left behind by a killed instance must not keep it alive.
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextmanager
def _mysql_database(env_url: str) -> Iterator[str]:
    import MySQLdb

    parts = urlsplit(env_url)
    name = f"broadcast_e2e_{uuid.uuid4().hex[:12]}"
    options: dict[str, Any] = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 3306,
        "user": parts.username or "root",
        "password": parts.password or "",
    }
    # The name is ours (hex), so quoting it with backticks is enough.
    conn = MySQLdb.connect(**options)
    try:
        conn.cursor().execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    finally:
        conn.close()
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        conn = MySQLdb.connect(**options)
        try:
            conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()


# -- manage.py ------------------------------------------------------------------------


def manage(
    *args: str, env: Mapping[str, str], timeout: float = MANAGE_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``python manage.py <args>``; raise with its output when it fails."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"manage.py {args[0]} exited with {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result


async def manage_async(
    *args: str, env: Mapping[str, str], timeout: float = MANAGE_TIMEOUT
) -> tuple[int, str, str]:
    """Run ``python manage.py <args>`` without blocking the event loop: (code, out, err)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "manage.py",
        *args,
        cwd=BASE_DIR,
        env=dict(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def last_json_line(output: str) -> Any:
    """The JSON value a ``shell -c`` script printed on its last line."""
    lines = [line for line in output.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"no output to parse: {output!r}")
    return json.loads(lines[-1])


# -- server instances (uvicorn by default) --------------------------------------------

#: the ASGI servers an instance can run under
SERVERS = ("uvicorn", "daphne", "hypercorn", "granian")


def server_command(server: str, port: int, fd: int | None = None) -> list[str]:
    """The command that serves the demo with ``server`` on 127.0.0.1:``port`` (uvicorn:
    or on the listening socket ``fd`` it inherits)."""
    app = "project.asgi:application"
    if server == "uvicorn":
        address = ["--host", "127.0.0.1", "--port", str(port)] if fd is None else ["--fd", str(fd)]
        return [
            sys.executable, "-m", "uvicorn", app, *address,
            "--ws-per-message-deflate", "false", "--lifespan", "on",
        ]  # fmt: skip
    if server == "daphne":
        # No lifespan: the listener starts with the first request (see asgi.py).
        return [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), app]
    if server == "hypercorn":
        return [sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}", app]
    if server == "granian":
        return [
            sys.executable, "-m", "granian", "--interface", "asgi",
            "--host", "127.0.0.1", "--port", str(port), app,
        ]  # fmt: skip
    raise ValueError(f"unknown server {server!r}; known: {SERVERS}")


@dataclass
class Instance:
    """One server process of the demo project, its port and its captured output."""

    name: str
    env: dict[str, str]
    log_dir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    #: more uvicorn options (e.g. ``--ws-ping-interval``)
    uvicorn_args: tuple[str, ...] = ()
    #: SO_SNDBUF of the connections it accepts (0: the kernel's autotuning, up to MiBs);
    #: a small one makes a client that stops reading back up into the server at once
    send_buffer: int = 0
    #: one of SERVERS (``uvicorn_args`` and ``send_buffer`` are uvicorn's only)
    server: str = "uvicorn"
    #: how the last stop went: the exit code, and whether SIGTERM sufficed
    exit_code: int | None = None
    stopped_cleanly: bool = False
    _files: list[Any] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def origin(self) -> str:
        """An ``Origin`` header value this instance accepts."""
        return self.base_url

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/broadcast/"

    @property
    def stdout_path(self) -> Path:
        return self.log_dir / f"{self.name}.stdout.log"

    @property
    def stderr_path(self) -> Path:
        return self.log_dir / f"{self.name}.stderr.log"

    def start(self, attempts: int = 3) -> None:
        """Start uvicorn on a free port and wait until it answers HTTP.

        A port found free may be taken before uvicorn binds it: that attempt exits at
        once and the next one uses another port.
        """
        for attempt in range(1, attempts + 1):
            self.port = free_port()
            self._spawn()
            try:
                self._wait_ready(STARTUP_TIMEOUT)
                return
            except _ExitedEarly:
                self.stop()
                if attempt == attempts:
                    raise RuntimeError(
                        f"instance {self.name} could not start:\n{self.log_text()}"
                    ) from None

    def kill(self) -> None:
        """SIGKILL the process, as a crash would: no shutdown code runs."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)
        self.stop()

    def restart(self) -> None:
        """Start again on the same port (clients reconnect to the same URL)."""
        self._spawn()
        try:
            self._wait_ready(STARTUP_TIMEOUT)
        except _ExitedEarly:
            raise RuntimeError(
                f"instance {self.name} could not restart:\n{self.log_text()}"
            ) from None

    def _spawn(self) -> None:
        if self.server != "uvicorn":
            self._popen(server_command(self.server, self.port), None)
            return
        listen: socket.socket | None = None
        if self.send_buffer:
            # Accepted sockets inherit SO_SNDBUF from the listening one, which uvicorn
            # then takes over (--fd).
            listen = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listen.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
            listen.bind(("127.0.0.1", self.port))
            listen.listen(128)
        fd = None if listen is None else listen.fileno()
        command = [*server_command("uvicorn", self.port, fd), *self.uvicorn_args]
        self._popen(command, listen)

    def _popen(self, command: list[str], listen: socket.socket | None) -> None:
        stdout = self.stdout_path.open("ab")
        stderr = self.stderr_path.open("ab")
        self._files = [stdout, stderr]
        try:
            self.process = subprocess.Popen(
                command,
                cwd=BASE_DIR,
                env=self.env,
                stdout=stdout,
                stderr=stderr,
                pass_fds=() if listen is None else (listen.fileno(),),
            )
        finally:
            if listen is not None:
                listen.close()  # the child has its own copy

    def _wait_ready(self, timeout: float) -> None:
        # The lifespan startup subscribes the listener before uvicorn (hypercorn,
        # granian) accepts connections, so an HTTP answer also means events will be
        # received; daphne has no lifespan: its first request starts the listener.
        assert self.process is not None
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while True:
                if self.process.poll() is not None:
                    raise _ExitedEarly()
                try:
                    client.get(f"{self.base_url}/admin/login/")
                    return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"instance {self.name} gave no HTTP answer in {timeout:.0f}s:\n"
                        f"{self.log_text()}"
                    )
                time.sleep(0.1)  # readiness polling, bounded by the deadline

    def stop(self) -> None:
        """SIGTERM, wait, SIGKILL if needed; close the log files."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
                self.stopped_cleanly = True
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)
                self.stopped_cleanly = False
            self.exit_code = process.returncode
        for file in self._files:
            file.close()
        self._files = []

    def log_text(self) -> str:
        """Everything the instance wrote to stdout and stderr so far."""
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)


class _ExitedEarly(Exception):
    """The server process exited before answering HTTP."""


@contextmanager
def running_instances(
    envs: Mapping[str, dict[str, str]],
    log_dir: Path,
    uvicorn_args: tuple[str, ...] = (),
    server: str = "uvicorn",
) -> Iterator[list[Instance]]:
    """Start one instance per ``{name: env}``, ready to serve; always stop them all."""
    instances = [
        Instance(name, env, log_dir, uvicorn_args=uvicorn_args, server=server)
        for name, env in envs.items()
    ]
    try:
        for instance in instances:
            instance.start()
        yield instances
    finally:
        for instance in instances:
            instance.stop()


# -- HTTP: admin login and forms ------------------------------------------------------


class FormParser(HTMLParser):
    """The fields of one ``<form>`` (by id) as a browser would submit them, bar buttons."""

    def __init__(self, form_id: str | None = None) -> None:
        super().__init__()
        self.form_id = form_id
        self.fields: dict[str, str] = {}
        self._in_form = False
        self._textarea: str | None = None
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {key: value or "" for key, value in attrs}
        if tag == "form":
            self._in_form = self.form_id is None or attr.get("id") == self.form_id
        if not self._in_form or ("name" not in attr and tag != "option"):
            return
        if tag == "input":
            kind = attr.get("type", "text").lower()
            if kind in {"submit", "button", "image", "reset", "file"}:
                return
            if kind in {"checkbox", "radio"} and "checked" not in attr:
                return
            self.fields[attr["name"]] = attr.get("value", "on" if kind == "checkbox" else "")
        elif tag == "textarea":
            self._textarea = attr["name"]
            self.fields[attr["name"]] = ""
        elif tag == "select":
            self._select = attr["name"]
        elif tag == "option" and self._select is not None and "selected" in attr:
            self.fields[self._select] = attr.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False
        elif tag == "textarea":
            self._textarea = None
        elif tag == "select":
            self._select = None

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self.fields[self._textarea] += data


def form_fields(html: str, form_id: str | None = None) -> dict[str, str]:
    """Parse the submittable fields of a form out of a page."""
    parser = FormParser(form_id)
    parser.feed(html)
    parser.close()
    return parser.fields


def login(base_url: str, username: str, password: str) -> str:
    """Log in through the admin login form; return the ``sessionid`` cookie."""
    with httpx.Client(base_url=base_url, timeout=10.0, trust_env=False) as client:
        page = client.get("/admin/login/", params={"next": "/admin/"})
        page.raise_for_status()
        fields = form_fields(page.text, "login-form")
        fields.update(username=username, password=password, next="/admin/")
        response = client.post(
            "/admin/login/", data=fields, headers={"Referer": f"{base_url}/admin/login/"}
        )
        if response.status_code != 302 or "sessionid" not in response.cookies:
            raise AssertionError(
                f"login of {username!r} failed: {response.status_code}\n{response.text[:2000]}"
            )
        return str(response.cookies["sessionid"])


@asynccontextmanager
async def http_client(base_url: str, session_id: str | None) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of one instance, logged in with ``session_id`` when given."""
    cookies = {"sessionid": session_id} if session_id else None
    async with httpx.AsyncClient(
        base_url=base_url, cookies=cookies, timeout=10.0, trust_env=False
    ) as client:
        yield client


async def admin_change(client: httpx.AsyncClient, model: str, pk: int, **changes: str) -> None:
    """Submit the admin change form of one object, as loaded, with ``changes`` applied."""
    url = f"/admin/{model.replace('.', '/')}/{pk}/change/"
    page = await client.get(url)
    assert page.status_code == 200, f"GET {url}: {page.status_code}"
    form_id = f"{model.split('.')[1]}_form"
    fields = form_fields(page.text, form_id)
    assert "csrfmiddlewaretoken" in fields, f"no csrf token in the form {form_id}"
    missing = set(changes) - set(fields)
    assert not missing, f"the form has no field(s) {sorted(missing)}: {sorted(fields)}"
    fields.update(changes)
    fields["_save"] = "Save"
    referer = str(client.base_url.join(url))
    response = await client.post(url, data=fields, headers={"Referer": referer})
    if response.status_code != 302:
        errors = re.findall(r'<ul class="errorlist[^"]*"[^>]*>.*?</ul>', response.text, re.S)
        raise AssertionError(
            f"POST {url}: {response.status_code} {errors or response.text[:2000]}"
        )


# -- websocket ------------------------------------------------------------------------


class Socket:
    """A websocket client speaking the broadcast protocol, each wait bounded."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection

    async def send(self, message: Any) -> None:
        """Send a JSON text frame (a ``str`` or ``bytes`` goes out as is)."""
        if isinstance(message, str | bytes):
            await self.connection.send(message)
        else:
            await self.connection.send(json.dumps(message))

    async def receive(self, timeout: float = FRAME_TIMEOUT) -> dict[str, Any]:
        """The next frame, decoded; fails after ``timeout`` seconds."""
        try:
            raw = await asyncio.wait_for(self.connection.recv(), timeout)
        except TimeoutError:
            raise AssertionError(f"no frame within {timeout}s") from None
        assert isinstance(raw, str), f"expected a text frame, got {raw!r}"
        frame: dict[str, Any] = json.loads(raw)
        return frame

    async def ask(self, message: Any) -> dict[str, Any]:
        """Send one frame and return the next frame received."""
        await self.send(message)
        return await self.receive()

    async def subscribe(
        self, model: str, pk: str | None = None, ref: Any = None
    ) -> dict[str, Any]:
        """Subscribe and check the ``subscribed`` answer; return it."""
        message: dict[str, Any] = {"type": "subscribe", "model": model, "ref": ref}
        if pk is not None:
            message["pk"] = pk
        reply = await self.ask(message)
        assert reply["type"] == "subscribed", reply
        assert (reply["model"], reply["pk"], reply["ref"]) == (model, pk, ref), reply
        return reply

    async def expect_nothing_queued(self) -> None:
        """Ping: the server writes frames in order, so the pong must come next."""
        assert await self.ask({"type": "ping"}) == {"type": "pong"}


@asynccontextmanager
async def websocket(
    url: str, *, origin: str | None, session_id: str | None = None
) -> AsyncIterator[Socket]:
    """Open a websocket with an ``Origin`` and the session cookie (either may be left out)."""
    headers = {"Cookie": f"sessionid={session_id}"} if session_id else None
    async with connect(
        url,
        origin=origin,  # type: ignore[arg-type]
        additional_headers=headers,
        compression=None,
        proxy=None,
        open_timeout=FRAME_TIMEOUT,
        close_timeout=5,
    ) as connection:
        yield Socket(connection)


def subprocess_env(**overrides: str) -> dict[str, str]:
    """This process's environment with ``overrides`` (the demo reads its config from it)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    # Instances run the demo project exactly as users do, not the test settings.
    env["DJANGO_SETTINGS_MODULE"] = "project.settings"
    env.update(overrides)
    return env


@dataclass
class DemoStack:
    """Two demo instances on one Redis and a fresh database, seeded by a setup script."""

    a: Instance
    b: Instance
    env: dict[str, str]
    #: what the setup script printed last, as JSON
    setup_output: Any


@contextmanager
def demo_stack(
    redis_url: str | None,
    directory: Path,
    setup_script: str,
    password: str,
    setup_id: str,
    settings_module: str = "project.settings",
    server: str = "uvicorn",
    **env_overrides: str,
) -> Iterator[DemoStack]:
    """Migrate a fresh database, run ``setup_script`` (``manage.py shell -c``, with
    ``E2E_PASSWORD`` set), start instances A and B, and check on the way out that
    neither logged a traceback (stopping included: that covers the listener's shutdown).
    ``redis_url`` None: the Redis comes from ``env_overrides`` (``REDIS_SENTINELS``).
    ``server``: one of SERVERS, for both instances.
    """
    with fresh_database(os.environ.get("DATABASE_URL"), directory) as database_url:
        env = subprocess_env(
            DJANGO_SETTINGS_MODULE=settings_module,
            **({} if redis_url is None else {"REDIS_URL": redis_url}),
            **env_overrides,
            DATABASE_URL=database_url,
            DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
            DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
            DJANGO_DEBUG="0",
            BROADCAST_INSTANCE_ID=setup_id,
            PYTHONUNBUFFERED="1",
        )
        manage("migrate", "--noinput", env=env)
        setup = manage("shell", "-c", setup_script, env={**env, "E2E_PASSWORD": password})
        envs = {name: {**env, "BROADCAST_INSTANCE_ID": f"e2e-{name}"} for name in "AB"}
        with running_instances(envs, directory, server=server) as (a, b):
            yield DemoStack(a, b, env, last_json_line(setup.stdout))
        for instance in (a, b):
            assert "Traceback" not in instance.log_text(), instance.log_text()


class RawSocket:
    """A websocket client whose reading the test controls, over a plain socket.

    Unlike :func:`websocket`, nothing reads in the background: when the test stops
    calling :meth:`receive`, the client stops reading altogether and stops answering
    the server's pings, as a stalled or vanished browser does. ``receive_buffer``
    shrinks the kernel's receive buffer so that a stalled client backs up quickly.
    """

    def __init__(
        self, url: str, *, origin: str, session_id: str | None, receive_buffer: int = 0
    ) -> None:
        uri = parse_uri(url)
        self.protocol = ClientProtocol(uri, origin=Origin(origin))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer:
            # Before connect(): the window is negotiated at the handshake.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(FRAME_TIMEOUT)
        self.sock.connect((uri.host, uri.port))
        request = self.protocol.connect()
        if session_id:
            request.headers["Cookie"] = f"sessionid={session_id}"
        self.protocol.send_request(request)
        self._flush()
        self._pending: list[Any] = []
        while not any(isinstance(event, Response) for event in self._pending):
            if self.protocol.handshake_exc is not None:
                raise self.protocol.handshake_exc
            if not self._read():
                raise ConnectionError("the server closed the connection during the handshake")
        self._pending = [event for event in self._pending if not isinstance(event, Response)]

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.sock.sendall(data)

    def _read(self) -> bool:
        """Read once from the socket; False at end of stream (or a reset)."""
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        self._pending.extend(self.protocol.events_received())
        self._flush()  # pongs, and our half of a close
        return bool(data)

    def send(self, message: Any) -> None:
        self.protocol.send_text(json.dumps(message).encode())
        self._flush()

    def receive(self) -> dict[str, Any] | None:
        """The next text frame, decoded; None once the connection ended."""
        while True:
            while self._pending:
                frame = self._pending.pop(0)
                if getattr(frame, "opcode", None) == Opcode.TEXT:
                    result: dict[str, Any] = json.loads(frame.data)
                    return result
            if self.protocol.close_code is not None and not self._pending:
                return None
            if not self._read() and not self._pending:
                return None

    @property
    def close_code(self) -> int | None:
        """The code of the server's close frame, if one arrived."""
        code = self.protocol.close_code
        return None if code is None else int(code)

    def close(self) -> None:
        self.sock.close()

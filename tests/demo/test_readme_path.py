"""The README's "Installing into your project", executed: from a wheel to a live page.

The README is the single source: every fenced block marked ``<!-- readme-test: ... -->``
in README.md is applied here verbatim —

- ``run <name>``: shell commands, run one by one in the project directory, with the
  fresh virtualenv first on ``PATH``;
- ``file <path>``: the whole content of that file of the project;
- ``append <path> [<phase>]``: appended to that file (in that phase only, if named).

What the test adds is only what a person does by hand: the path of a clone in the
install command (a copy of this checkout), a free port for each server, ``--noinput``
(with Django's ``DJANGO_SUPERUSER_*`` variables) for ``createsuperuser``, logging in,
and a change made through the admin. Pins come from requirements.txt through ``PIP_CONSTRAINT``, so
the install is the README's command at the versions CI tests.

Then, with two instances and one Redis (started here), a page built from the documented
template tags must update live in headless Chromium, every static file loading: with
``DEBUG`` and the documented development server (``runserver``, daphne's), then with
``DEBUG = False`` and the documented production setup (``collectstatic``, WhiteNoise,
uvicorn). Before that, the README's test file runs under ``manage.py test`` against the
same Redis: nothing may reach it, and the run has nothing to wait for at exit.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from broadcast_app.dev.embedded_redis import EmbeddedRedis, free_port
from tests.browser_support import BASE_DIR, chromium, chromium_path, collect_page_errors

pytestmark = [pytest.mark.browser, pytest.mark.adoption]

README = BASE_DIR / "README.md"
MARKER = re.compile(r"<!-- readme-test: (\w+) (\S+)(?: (\w+))? -->\n```\w*\n(.*?)```", re.S)
#: where the README's install command says the clone is
CLONE_PLACEHOLDER = "/path/to/broadcast_app"
#: seconds for one command (the install downloads packages unless pip's cache has them)
COMMAND_TIMEOUT = 600.0
#: seconds a server may take to answer HTTP after it starts
SERVER_TIMEOUT = 60.0
ADMIN = ("admin", "admin-password")


@dataclass
class Block:
    kind: str  # run, file or append
    target: str  # a command group's name, or a path in the project
    phase: str | None
    text: str


def readme_blocks() -> list[Block]:
    return [
        Block(kind, target, phase or None, text)
        for kind, target, phase, text in MARKER.findall(README.read_text())
    ]


def commands(blocks: list[Block], name: str) -> list[str]:
    (block,) = [b for b in blocks if b.kind == "run" and b.target == name]
    return [line for line in block.text.splitlines() if line.strip()]


def apply_files(blocks: list[Block], project: Path, phase: str | None) -> None:
    for block in blocks:
        if block.phase != phase or block.kind not in {"file", "append"}:
            continue
        path = project / block.target
        path.parent.mkdir(parents=True, exist_ok=True)
        if block.kind == "file":
            path.write_text(block.text)
        else:
            with path.open("a") as file:
                file.write("\n" + block.text)


def constraints(directory: Path) -> Path:
    """requirements.txt's pins, as a pip constraints file (no extras, no editable)."""
    pins = []
    for line in (BASE_DIR / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins.append(f"{name.split('[', 1)[0]}=={version}")
    path = directory / "constraints.txt"
    path.write_text("\n".join(pins) + "\n")
    return path


@dataclass
class Environment:
    venv: Path
    project: Path
    env: dict[str, str]

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT) -> str:
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=self.project,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        return result.stdout + result.stderr

    @contextmanager
    def server(self, command: str, port: int) -> Iterator[str]:
        """Start a server command in its own session; yield its base URL; stop it all."""
        log = self.project / f"server-{port}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                ["bash", "-c", f"exec {command}"],
                cwd=self.project,
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # runserver's autoreloader has a child: stop both
            )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + SERVER_TIMEOUT
            with httpx.Client(timeout=2.0, trust_env=False) as client:
                while True:
                    assert process.poll() is None, log.read_text()
                    try:
                        client.get(f"{base}/admin/login/")
                        break
                    except httpx.TransportError:
                        assert time.monotonic() < deadline, log.read_text()
                        time.sleep(0.1)  # readiness polling, bounded by the deadline
            yield base
        finally:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def clone(root: Path) -> Path:
    """This repository as a fresh clone would have it: no build leftovers, no venv (a
    stale ``build/`` directory would otherwise end up in the wheel)."""
    target = root / "broadcast_app"
    shutil.copytree(
        BASE_DIR,
        target,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
            "db.sqlite3*", "staticfiles",
        ),
    )  # fmt: skip
    return target


@pytest.fixture(scope="module")
def project_redis() -> Iterator[EmbeddedRedis]:
    """The Redis the project's instances share (its own: the test reads its streams)."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, project_redis: EmbeddedRedis):
    """A fresh virtualenv with the README's install command, and a fresh project."""
    chromium_path()  # skip (or fail in CI) before minutes of installing
    root = tmp_path_factory.mktemp("adoption")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTEST_", "DJANGO_", "VIRTUAL_ENV", "PYTHON"))
    }
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
        PIP_CONSTRAINT=str(constraints(root)),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        REDIS_URL=project_redis.url,
        DJANGO_SUPERUSER_USERNAME=ADMIN[0],
        DJANGO_SUPERUSER_PASSWORD=ADMIN[1],
        DJANGO_SUPERUSER_EMAIL="admin@example.com",
    )
    project = root / "mysite"
    project.mkdir()
    environment = Environment(venv, project, env)
    blocks = readme_blocks()
    source = clone(root)
    for line in commands(blocks, "install"):
        environment.run(line.replace(CLONE_PLACEHOLDER, str(source)))
    environment.run("django-admin startproject mysite .")
    environment.run("python manage.py startapp shop")
    apply_files(blocks, project, None)
    return environment, blocks


def test_the_readme_marks_every_step_it_shows() -> None:
    blocks = readme_blocks()
    kinds = {(b.kind, b.target, b.phase) for b in blocks}
    for expected in [
        ("run", "install", None),
        ("append", "mysite/settings.py", None),
        ("file", "shop/apps.py", None),
        ("file", "mysite/asgi.py", None),
        ("file", "mysite/urls.py", None),
        ("file", "shop/templates/shop/products.html", None),
        ("run", "development", None),
        ("append", "mysite/settings.py", "production"),
        ("run", "production", None),
    ]:
        assert expected in kinds
    # The settings snippet is complete Python: no "{...}" placeholders to fill in.
    assert all("{...}" not in b.text for b in blocks if b.kind != "run")


@asynccontextmanager
async def logged_in_browser(
    base: str,
) -> AsyncIterator[tuple[Any, list[str], list[str], list[str]]]:
    """A logged-in browser context; the static files loaded, and failed; script errors."""
    async with chromium() as browser:
        context = await browser.new_context()
        failed: list[str] = []
        loaded: list[str] = []

        def on_response(response: Any) -> None:
            if "/static/" in response.url:
                (loaded if response.ok else failed).append(response.url)

        context.on("response", on_response)
        page = await context.new_page()
        errors = collect_page_errors(page)
        await page.goto(f"{base}/admin/login/?next=/admin/")
        await page.fill("#id_username", ADMIN[0])
        await page.fill("#id_password", ADMIN[1])
        await page.click("input[type=submit]")
        await page.wait_for_url(f"{base}/admin/")
        await page.close()
        try:
            yield context, loaded, failed, errors
        finally:
            await context.close()


async def live_page_follows_a_change_made_on_the_other_instance(
    environment: Environment, a: str, b: str, price: str
) -> None:
    from playwright.async_api import expect

    async with logged_in_browser(a) as (context, loaded, failed, errors):
        page = await context.new_page()
        errors += collect_page_errors(page)
        await page.goto(f"{a}/")
        await expect(page.locator("[data-broadcast-status]")).to_have_attribute(
            "data-status", "open"
        )
        # Change the product through the other instance's admin (its CSS must load too).
        admin = await context.new_page()
        await admin.goto(f"{b}/admin/shop/product/1/change/")
        await admin.fill("#id_price", price)
        await admin.click("input[name=_save]")
        await admin.wait_for_url(f"{b}/admin/shop/product/")
        # The page on the first instance follows: the live field and the live table.
        await expect(page.locator("strong.broadcast-field")).to_have_text(price)
        await expect(page.locator("table td", has_text=price)).to_have_count(1)
        # Every static file loaded: the tags' CSS and modules, the admin's CSS.
        assert failed == []
        names = {url.rsplit("/static/", 1)[1] for url in loaded}
        for name in [
            "broadcast_app/css/live.css",
            "broadcast_app/js/page.js",
            "broadcast_app/js/broadcast.js",
            "admin/css/base.css",
        ]:
            assert name in names, sorted(names)
        assert errors == []


@pytest.mark.asyncio
async def test_the_readme_path_from_a_wheel_to_a_live_page(
    installed: tuple[Environment, list[Block]], project_redis: EmbeddedRedis
) -> None:
    environment, blocks = installed
    stream = "broadcast:log:shop.product"
    client = redis.Redis.from_url(project_redis.url, decode_responses=True)
    try:
        # A user's test run: captured, never published to the instances' Redis.
        started = time.monotonic()
        output = environment.run("python manage.py makemigrations shop && "
                                 "python manage.py test shop")  # fmt: skip
        assert "OK" in output, output
        assert "still queued" not in output
        assert time.monotonic() - started < 30
        assert client.exists(stream) == 0

        # Development: DEBUG, runserver (daphne), two instances.
        for line in commands(blocks, "development"):
            if line.endswith("createsuperuser"):
                line += " --noinput"
            if not line.endswith("runserver"):
                environment.run(line)
        environment.run(
            'python manage.py shell -c "from shop.models import Product; '
            "Product.objects.create(name='Anvil', sku='AN-1', price='10.00', stock=3)\""
        )
        assert client.xlen(stream) == 1  # a shell's save is published (and flushed at exit)
        (runserver,) = [line for line in commands(blocks, "development") if "runserver" in line]
        ports = free_port(), free_port()
        with (
            environment.server(f"{runserver} 127.0.0.1:{ports[0]}", ports[0]) as a,
            environment.server(f"{runserver} 127.0.0.1:{ports[1]}", ports[1]) as b,
        ):
            await live_page_follows_a_change_made_on_the_other_instance(environment, a, b, "12.50")

        # Production: DEBUG = False, collectstatic, WhiteNoise, uvicorn.
        apply_files(blocks, environment.project, "production")
        (collect, uvicorn) = commands(blocks, "production")
        environment.run(collect)
        ports = free_port(), free_port()
        servers = [re.sub(r"--port \d+", f"--port {port}", uvicorn) for port in ports]
        assert all(shlex.split(s)[0] == "uvicorn" for s in servers)
        with (
            environment.server(servers[0], ports[0]) as a,
            environment.server(servers[1], ports[1]) as b,
        ):
            async with httpx.AsyncClient(trust_env=False) as http:
                debug_page = await http.get(f"{a}/no-such-page/")
            assert debug_page.status_code == 404
            assert "Using the URLconf" not in debug_page.text  # DEBUG is off
            await live_page_follows_a_change_made_on_the_other_instance(environment, a, b, "14.75")
    finally:
        client.close()

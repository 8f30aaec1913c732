"""The work behind ``manage.py broadcast_demo``: Redis, data, and two server instances.

Two uvicorn processes share one database and one Redis, as two instances of a real
deployment would, so a change made through one shows up live on the other.
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.test.utils import override_settings
from django.urls import reverse

from broadcast_app.conf import conf
from broadcast_app.dev.embedded_redis import EmbeddedRedis
from broadcast_app.web.server_limits import ws_max_size

from . import seed
from .children import stop_processes
from .models import Product

Write = Callable[[str], None]

DEFAULT_PORTS = "8001,8002"
ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "admin"  # a local demo account: printed on purpose
#: seconds an instance may take to answer HTTP after it starts
STARTUP_TIMEOUT = 30.0
#: seconds an instance may take to stop after SIGTERM before it is killed
STOP_TIMEOUT = 10.0


class LaunchError(Exception):
    """The demo could not start, or an instance died while it ran."""


class Stopped(Exception):
    """SIGINT, SIGTERM or SIGHUP (the terminal closed) arrived: time to shut down."""


#: what stops the demo: Ctrl-C, a kill, and the terminal closing (SIGHUP reaches the
#: demo alone: the instances and Redis run in process groups of their own)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def parse_ports(text: str) -> list[int]:
    """Parse ``"8001,8002"``: distinct integers in 1-65535, free on 127.0.0.1."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError("Give at least one port, e.g. --ports 8001,8002.")
    ports: list[int] = []
    for item in items:
        try:
            port = int(item)
        except ValueError:
            raise ValueError(f"{item!r} is not a port number.") from None
        if not 1 <= port <= 65535:
            raise ValueError(f"Port {port} is outside 1-65535.")
        if port in ports:
            raise ValueError(f"Port {port} is given twice.")
        ports.append(port)
    for port in ports:
        if not _port_is_free(port):
            others = ",".join(str(p + 10) for p in ports)
            raise ValueError(
                f"Port {port} is already in use on 127.0.0.1 (a demo still running, or "
                f"another server). Stop it, or choose other ports: --ports {others}"
            )
    return ports


def _port_is_free(port: int) -> bool:
    # A server already there would answer the readiness probe in our instance's place.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As uvicorn does, so that connections of a previous run in TIME_WAIT don't count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def run_demo(ports: list[int], write: Write) -> None:
    """Prepare the demo, run an instance on each port, and return when told to stop.

    Raises :class:`LaunchError` when an instance fails to start or dies.
    """
    try:
        with _stop_on_signals(), _redis(write) as redis_url, _using_redis(redis_url):
            _prepare(write)
            with _Instances(ports, redis_url) as instances:
                instances.wait_ready(STARTUP_TIMEOUT)
                _print_urls(ports, write)
                instances.wait()
    except Stopped:
        # After SIGHUP the terminal may be gone: everything is stopped, say so if we can.
        with suppress(OSError):
            write("Stopped.")


@contextmanager
def _redis(write: Write) -> Iterator[str]:
    """Yield ``REDIS_URL`` from the environment, or the URL of a Redis started here."""
    url = os.environ.get("REDIS_URL")
    if url:
        write("Using the Redis at REDIS_URL.")
        yield url
        return
    if os.environ.get("REDIS_CLUSTER_NODES"):
        # The settings read the cluster's nodes; REDIS_URL is not used.
        write("Using the Redis Cluster at REDIS_CLUSTER_NODES.")
        yield ""
        return
    # Ctrl-C must not reach it: the instances stop first, then it.
    redis = EmbeddedRedis(own_process_group=True)
    try:
        try:
            redis.start()
        except RuntimeError as exc:  # no redis-server binary, or it would not start
            raise LaunchError(f"{exc} Or set REDIS_URL to a running Redis.") from exc
        write(f"Started a throwaway Redis at {redis.url} (set REDIS_URL to use your own).")
        yield redis.url
    finally:
        with _ignoring_signals():
            redis.stop()


@contextmanager
def _using_redis(url: str) -> Iterator[None]:
    """Point this process's channel layer at ``url``, like the instances' (for seeding);
    "" (a Redis Cluster, which the settings name): leave the settings as they are."""
    if not url:
        yield
        return
    layers: dict[str, dict[str, Any]] = copy.deepcopy(settings.CHANNEL_LAYERS)
    layers[conf.BROADCAST_CHANNEL_LAYER].setdefault("CONFIG", {})["hosts"] = [url]
    # override_settings sends setting_changed, on which channels and broadcast_app drop
    # whatever they built from the old value.
    with override_settings(CHANNEL_LAYERS=layers):
        yield


def _prepare(write: Write) -> None:
    call_command("migrate", interactive=False, verbosity=0)
    created = seed.seed_products()
    if created:
        write(f"Created {created} demo products.")
    seed.ensure_superuser(ADMIN_USERNAME, ADMIN_PASSWORD)


def _print_urls(ports: list[int], write: Write) -> None:
    base = [f"http://127.0.0.1:{port}" for port in ports]
    first = Product.objects.order_by("pk").values_list("pk", flat=True).first()
    lines = ["", "The demo is running. Open the product list on each instance:"]
    lines += [f"  {url}{reverse('demo:index')}" for url in base]
    lines += [
        "Change products in the admin of either one and watch both lists follow:",
        f"  {base[0]}{reverse('admin:demo_product_changelist')}",
        f"  Log in as {ADMIN_USERNAME} / {ADMIN_PASSWORD} (one login serves every port).",
        "Every instance, live, on the staff dashboard:",
        f"  {base[-1]}{reverse('broadcast_app:dashboard')}",
    ]
    if first is not None:
        lines += [
            "One product from each instance's broadcast cache (see the X-Cache header):",
            *(f"  {url}{reverse('demo:product-json', args=[first])}" for url in base),
        ]
    lines += ["Press Ctrl-C to stop.", ""]
    for line in lines:
        write(line)


def instance_command(port: int) -> list[str]:
    """One instance's command line: the README's run command, on 127.0.0.1:``port``."""
    return [
        sys.executable, "-m", "uvicorn", "project.asgi:application",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--ws-per-message-deflate", "false",
        # Frames too large for the protocol are closed (1009) while being read,
        # instead of being buffered whole (uvicorn's default allows 16 MiB).
        "--ws-max-size", str(ws_max_size()),
        "--lifespan", "on",
    ]  # fmt: skip


class _Instances:
    """The uvicorn processes, one per port; stopped (and reaped) on exit."""

    def __init__(self, ports: list[int], redis_url: str) -> None:
        self.ports = ports
        self.redis_url = redis_url
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> _Instances:
        try:
            self._start()
        except BaseException:
            # __exit__ does not run when __enter__ fails: stop what did start.
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        for port in self.ports:
            env = {
                **os.environ,
                "REDIS_URL": self.redis_url,
                "BROADCAST_INSTANCE_ID": f"instance-{port}",
            }
            self.processes[port] = subprocess.Popen(
                instance_command(port),
                cwd=settings.BASE_DIR,
                env=env,
                # Their own process group: Ctrl-C reaches only this process, which then
                # stops the instances in order instead of everything dying at once.
                process_group=0,
            )

    def __exit__(self, *exc_info: object) -> None:
        with _ignoring_signals():
            self.stop()

    def wait_ready(self, timeout: float) -> None:
        """Return once every instance answers HTTP; raise if one dies or is too slow."""
        deadline = time.monotonic() + timeout
        pending = list(self.ports)
        while pending:
            self._check_alive()
            pending = [port for port in pending if not _answers_http(port)]
            if pending and time.monotonic() > deadline:
                raise LaunchError(f"No HTTP answer on port(s) {pending} after {timeout:.0f}s.")
            if pending:
                time.sleep(0.2)

    def wait(self) -> None:
        """Block until an instance exits (raising :class:`LaunchError`) or a signal."""
        while True:
            self._check_alive()
            time.sleep(0.5)

    def _check_alive(self) -> None:
        for port, process in self.processes.items():
            code = process.poll()
            if code is not None:
                raise LaunchError(f"The instance on port {port} exited with code {code}.")

    def stop(self) -> None:
        """Terminate every instance, then kill those still running after the timeout."""
        stop_processes(self.processes.values(), STOP_TIMEOUT)


#: ignores any http_proxy of the environment: the probe must reach 127.0.0.1 itself
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _answers_http(port: int) -> bool:
    try:
        with _direct.open(f"http://127.0.0.1:{port}/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP status means the server is up
    except OSError:
        return False


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signal.Signals(signum).name)


def _stop_on_signals() -> AbstractContextManager[None]:
    """Turn the stop signals into :class:`Stopped`, so ``finally`` blocks clean up."""
    return _handling_signals(_raise_stopped)


def _ignoring_signals() -> AbstractContextManager[None]:
    """Let cleanup finish: a second Ctrl-C must not leave processes behind."""
    return _handling_signals(signal.SIG_IGN)


@contextmanager
def _handling_signals(
    handler: Callable[[int, FrameType | None], None] | signal.Handlers,
) -> Iterator[None]:
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)

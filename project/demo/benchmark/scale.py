"""Connections at scale: thousands of subscribed clients on one instance, and their cost.

For each client count N (ascending; clients stay connected from one count to the next),
three uvicorn servers hold N clients each, every fleet in its own process: instance B of
the demo (subscribed to ``demo.product``), the bare websocket app (``bare_app``: what
uvicorn alone spends per connection) and the floor relay (``floor_relay``: the least a
Redis-to-websocket relay does per event). The row records

- each server's RSS growth per connection, from ``/proc`` (ours against the bare app);
- for single events, alternating ours and the floor, the time from the commit (the
  event's ``ts``) to the *last* client's receipt;
- events lost, duplicated, or covered by a ``reset``.

The open-files limit is raised to its hard limit here, before any child starts, so every
server and fleet inherits it.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.core.management import call_command
from django.test.utils import override_settings

from broadcast_app.dev.embedded_redis import free_port
from broadcast_app.publish import publisher

from ..models import Product
from .environment import benchmark_data, database, layers_on, login, redis_server
from .processes import (
    BenchmarkError,
    Children,
    FleetProcess,
    ignoring_signals,
    stop_on_signals,
    uvicorn_command,
    wait_http,
)
from .saves import Products, floor_save, marker, plain_save

Write = Callable[[str], None]

STARTUP_TIMEOUT = 60.0
FLOOR_CHANNEL = "benchmark.scale.floor"
KINDS = ("ours", "bare", "floor")
APPS = {
    "ours": "project.asgi:application",
    "bare": "project.demo.benchmark.bare_app:app",
    "floor": "project.demo.benchmark.floor_relay:app",
}
#: clients connected before the baseline RSS is read: the first connections load code
#: and start the listener, which is not a per-connection cost
WARM_CLIENTS = 10


@dataclass(frozen=True)
class ScalePlan:
    """Which client counts, and how many single events per side at each."""

    counts: tuple[int, ...] = (1000, 5000)
    events: int = 5
    #: seconds to wait for an event to reach every client before counting it lost
    settle_seconds: float = 10.0
    #: instances of the demo sharing the clients (then without the bare app and the
    #: floor: see scale_instances)
    instances: int = 1
    targets: dict[str, float] = field(
        default_factory=lambda: {"rss_ratio": 1.2, "last_client_ratio": 1.3}
    )


def raise_open_files() -> int:
    """Raise this process's soft open-files limit to the hard one; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def rss_bytes(pid: int) -> int | None:
    """Resident set size of process ``pid`` (Linux ``/proc``; else None)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    with suppress(OSError, IndexError, ValueError):
        memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    try:
        load = [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory_bytes": memory,
        "load": load,
    }


def run_scale(plan: ScalePlan, redis_url: str | None, write: Write) -> dict[str, Any]:
    """Measure every count of ``plan``; return the results (see :class:`Scale`)."""
    open_files = raise_open_files()
    needed = max(plan.counts) + 100
    if open_files < needed:
        raise BenchmarkError(
            f"The open-files limit is {open_files}; {needed} are needed per process "
            "(raise the hard limit: ulimit -Hn)."
        )
    with (
        stop_on_signals(),
        tempfile.TemporaryDirectory(prefix="broadcast-scale-") as tmp,
        redis_server(redis_url, write) as (url, _redis_pid),
        database(Path(tmp)) as database_url,
        layers_on(url),
    ):
        call_command("migrate", interactive=False, verbosity=0)
        with benchmark_data() as (username, password, products):
            env = {
                **os.environ,
                "REDIS_URL": url,
                "DATABASE_URL": database_url,
                "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
                "DJANGO_SETTINGS_MODULE": "project.settings",
                "BENCHMARK_FLOOR_CHANNEL": FLOOR_CHANNEL,
            }
            children = Children(Path(tmp), Path(settings.BASE_DIR))
            meta: dict[str, Any] = {
                "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                "machine": machine(),
                "open_files_limit": open_files,
            }
            try:
                ports = {kind: free_port() for kind in KINDS}
                for kind in KINDS:
                    children.start(kind, uvicorn_command(APPS[kind], ports[kind]), env)
                wait_http(children, f"http://127.0.0.1:{ports['ours']}/admin/login/", 60)
                for kind in ("bare", "floor"):
                    wait_http(children, f"http://127.0.0.1:{ports[kind]}/", STARTUP_TIMEOUT)
                cookie = login(f"http://127.0.0.1:{ports['ours']}", username, password)
                rows = Scale(plan, children, ports, cookie, url, products, write).run()
            finally:
                with ignoring_signals():
                    _stop(children)
            meta["load_after"] = machine()["load"]
            meta["instance_warnings"] = children.log_lines(
                "ours", "WARNING", "ERROR", "Traceback"
            )[:20]
            return {"meta": meta, "plan": asdict(plan), "rows": rows}


def _stop(children: Children) -> None:
    for kind in KINDS:
        fleet = children.processes.get(f"clients-{kind}")
        if fleet is not None and fleet.poll() is None and fleet.stdin is not None:
            try:  # a clean close first, so the servers see ordinary disconnects
                fleet.stdin.write(b'{"cmd": "quit"}\n')
                fleet.stdin.close()
                fleet.wait(20)
            except Exception:  # stop_all below terminates it anyway
                pass
    children.stop_all()


class Scale:
    """The rows of one run, on servers already started."""

    def __init__(
        self,
        plan: ScalePlan,
        children: Children,
        ports: dict[str, int],
        cookie: str,
        redis_url: str,
        products: Products,
        write: Write,
    ) -> None:
        self.plan = plan
        self.children = children
        self.ports = ports
        self.cookie = cookie
        self.redis_url = redis_url
        self.products = products
        self.write = write
        self.fleets = {
            kind: FleetProcess(children, {**os.environ}, name=f"clients-{kind}") for kind in KINDS
        }
        self.connected = dict.fromkeys(KINDS, 0)

    def run(self) -> list[dict[str, Any]]:
        floor_client = redis.Redis.from_url(self.redis_url)
        try:
            for kind in KINDS:
                self.connect(kind, WARM_CLIENTS)
            self._warm_up()
            baseline = self.rss()
            rows = []
            for count in sorted(set(self.plan.counts)):
                rows.append(self.row(count, baseline, floor_client))
                self.write(row_line(rows[-1]))
            return rows
        finally:
            floor_client.close()

    def row(self, count: int, baseline: dict[str, int], floor: redis.Redis) -> dict[str, Any]:
        self.write(f"{count} clients on each server: connecting…")
        connect_seconds = {}
        for kind in KINDS:
            began = time.monotonic()
            self.connect(kind, count)
            connect_seconds[kind] = round(time.monotonic() - began, 2)
        rss = self.rss()
        added = count - WARM_CLIENTS
        per_connection = {kind: (rss[kind] - baseline[kind]) / added for kind in KINDS}
        events: dict[str, list[dict[str, Any]]] = {"ours": [], "floor": []}
        for number in range(self.plan.events):
            for kind in ("ours", "floor") if number % 2 == 0 else ("floor", "ours"):
                events[kind].append(self.event(kind, floor))
        last = {kind: statistics.median(e["max_ms"] for e in events[kind]) for kind in events}
        rss_ratio = _ratio(per_connection["ours"], per_connection["bare"])
        last_ratio = _ratio(last["ours"], last["floor"])
        targets = self.plan.targets
        return {
            "clients": count,
            "connect_seconds": connect_seconds,
            "rss_bytes": rss,
            "rss_baseline_bytes": baseline,
            "rss_per_connection_kib": {k: round(v / 1024, 2) for k, v in per_connection.items()},
            "rss_ratio": rss_ratio,
            "rss_ratio_target": targets["rss_ratio"],
            "last_client_ms": {kind: round(value, 3) for kind, value in last.items()},
            "last_client_ratio": last_ratio,
            "last_client_ratio_target": targets["last_client_ratio"],
            "events": events,
            "lost": sum(e["missing"] for side in events.values() for e in side),
            "duplicates": sum(e["duplicates"] for side in events.values() for e in side),
            #: frames about the event beyond one per client, with a ts of their own
            "extra": sum(
                max(0, e["received"] - e["clients"]) for side in events.values() for e in side
            ),
            "resets": sum(e["resets"] for side in events.values() for e in side),
        }

    def event(self, kind: str, floor: redis.Redis) -> dict[str, Any]:
        """One save of a fresh product, and when each of ``kind``'s clients got it."""
        product = quiet_product(self.products)
        context: AbstractContextManager[Any]
        if kind == "ours":
            save, context = plain_save(product), nullcontext()
            self._warm_up(delivered=True)
        else:
            save = floor_save(product, floor, FLOOR_CHANNEL)
            context = override_settings(BROADCAST_ENABLED=False)
        fleet = self.fleets[kind]
        with context:
            fleet.call(
                {"cmd": "start", "marker": marker(product), "group": kind, "expected": 1}, 10
            )
            save(0)
            publisher.flush(5)
            settle = self.plan.settle_seconds
            received = fleet.call({"cmd": "stop", "settle": settle}, settle + 30)
        return {
            key: received[key]
            for key in (
                "clients",
                "received",
                "missing",
                "duplicates",
                "resets",
                "p50_ms",
                "max_ms",
            )
        }

    def connect(self, kind: str, count: int) -> None:
        missing = count - self.connected[kind]
        if missing <= 0:
            return
        port = self.ports[kind]
        command = {
            "cmd": "connect",
            "group": kind,
            "url": f"ws://127.0.0.1:{port}/ws/broadcast/",
            "count": missing,
            "headers": [["Cookie", self.cookie], ["Origin", f"http://127.0.0.1:{port}"]],
            "subscribe": '{"type":"subscribe","model":"demo.product"}' if kind == "ours" else None,
        }
        self.connected[kind] = self.fleets[kind].call(command, 60 + missing / 20)["connected"]
        if self.connected[kind] != count:
            raise BenchmarkError(f"{kind}: {self.connected[kind]} clients, not {count}.")

    def rss(self) -> dict[str, int]:
        sizes = {}
        for kind in KINDS:
            size = rss_bytes(self.children.processes[kind].pid)
            if size is None:
                raise BenchmarkError("RSS is read from /proc: the scale rows need Linux.")
            sizes[kind] = size
        return sizes

    def _warm_up(self, delivered: bool = False) -> None:
        """Publish one event: a floor event's override_settings made the publisher drop
        its Redis client, which reconnects now rather than inside the measured event.

        With ``delivered``, return once every client of ours has it: an event measured
        while the instance still writes this one to its clients (and the fleet still
        reads it) would wait behind it, which the floor's events never do.
        """
        product = self.products.new()
        fleet = self.fleets["ours"]
        if delivered:
            command = {"cmd": "start", "marker": marker(product), "group": "ours", "expected": 1}
            fleet.call(command, 10)
        plain_save(product)(0)
        publisher.flush(5)
        if delivered:
            settle = self.plan.settle_seconds
            fleet.call({"cmd": "stop", "settle": settle}, settle + 30)


def quiet_product(products: Products) -> Product:
    """A fresh product whose creation is not published: ``bulk_create`` is (the wrapped
    QuerySet), and its ``created`` frame, carrying the same pk, would arrive while the
    save's event is being recorded."""
    with override_settings(BROADCAST_ENABLED=False):
        return products.new()


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator > 0 else None


def row_line(row: dict[str, Any]) -> str:
    """One row as a line of the command's output."""
    kib, last = row["rss_per_connection_kib"], row["last_client_ms"]
    return (
        f"  {row['clients']:>6} clients: RSS/conn ours {kib['ours']:.1f} KiB, bare "
        f"{kib['bare']:.1f} KiB (x{row['rss_ratio']}, target ≤ {row['rss_ratio_target']}); "
        f"commit→last client ours {last['ours']:.1f} ms, floor {last['floor']:.1f} ms "
        f"(x{row['last_client_ratio']}, target ≤ {row['last_client_ratio_target']}); "
        f"lost {row['lost']}, resets {row['resets']}"
    )

"""One benchmark run: set everything up, measure ours against the floor, tear it all down.

The saver is this process (the one running ``manage.py broadcast_benchmark``), as a
worker or a shell would be: its saves go through broadcast_app's publisher thread to
Redis, and the clients listen on uvicorn instance B, a separate process. The floor is
measured in the same run, with the same client fleet and the same save loop: saves with
broadcasting off plus a sync ``PUBLISH``, relayed by ``floor_relay``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.core.management import call_command
from django.db import DEFAULT_DB_ALIAS, connections
from django.test.utils import override_settings

from broadcast_app.capture.registry import get_config
from broadcast_app.dev.embedded_redis import free_port
from broadcast_app.publish import publisher
from broadcast_app.stats import stats

from ..models import Product
from . import report
from .bulk import bulk_delete_throughput, bulk_throughput
from .ceiling import ceiling_row
from .environment import benchmark_data, database, layers_on, login, redis_server
from .filtered import filtered_line, filtered_row
from .presence import presence_line, presence_row
from .processes import (
    BenchmarkError,
    Children,
    FleetProcess,
    cpu_seconds,
    ignoring_signals,
    stop_on_signals,
    uvicorn_command,
    wait_http,
)
from .resume import resume_row
from .saves import Products, floor_save, marker, paced, plain_save

Write = Callable[[str], None]

STARTUP_TIMEOUT = 60.0
FLOOR_CHANNEL = "benchmark.floor"
SAVER_NOTE = (
    "Saves are made in the benchmark (driver) process, like a worker or a shell would; "
    "the clients are connected to uvicorn instance B, a separate process."
)


@dataclass(frozen=True)
class Plan:
    """What to measure, and for how long."""

    overhead_saves: int = 500
    overhead_rate: float = 50.0
    latency_clients: tuple[int, ...] = (1, 50, 200)
    latency_rate: float = 50.0
    #: seconds of saves per latency row and side, in chunks of ``latency_chunk_seconds``
    #: alternating between ours and the floor
    latency_seconds: float = 10.0
    latency_chunk_seconds: float = 1.0
    step_clients: tuple[int, ...] = (50, 200)
    step_rates: tuple[float, ...] = (100, 150, 200, 250, 300, 400, 500, 600, 800, 1000)
    step_seconds: float = 3.0
    #: seconds to wait for the last frames of a phase after its last save
    settle_seconds: float = 2.0
    p99_limit_ms: float = 50.0
    #: rows of the bulk publication rows (QuerySet.update(), then delete(), of every
    #: row, published)
    bulk_rows: int = 20_000
    #: (h): resuming clients, seconds between two resumes of each, seconds the victim
    #: pings per load, events in the log
    resume_clients: int = 20
    resume_interval: float = 0.05
    resume_seconds: float = 5.0
    resume_log: int = 10_000
    #: measure (h) alone
    resume_only: bool = False
    #: (i): joins timed from instance A to a subscriber on B, joins a second, A's tabs
    presence_samples: int = 200
    presence_rate: float = 20.0
    presence_tabs: int = 10
    #: (j): saves per variant (none, 1,000 plain, 1,000 filtered subscriptions), a second
    filtered_events: int = 500
    filtered_rate: float = 100.0
    #: (k): events per burst of the publish ceiling rows (each of 4 publishers sends as many)
    ceiling_events: int = 20_000
    targets: dict[str, Any] = field(
        default_factory=lambda: {
            "save_ratio": 1.10,
            "p50_ratio": 1.5,
            "sustained": {"50": 250, "200": 125},
            "resume": {"p50_ratio": 3.0, "max_ms": 50.0},
        }
    )


FULL = Plan()
QUICK = Plan(
    overhead_saves=50,
    latency_clients=(1, 10),
    latency_seconds=1.5,
    latency_chunk_seconds=0.5,
    step_clients=(10,),
    step_rates=(100, 200),
    step_seconds=1.0,
    settle_seconds=1.0,
    bulk_rows=2_000,
    resume_clients=5,
    resume_seconds=1.0,
    presence_samples=20,
    filtered_events=100,
    ceiling_events=2_000,
)


def run_benchmark(plan: Plan, redis_url: str | None, write: Write) -> dict[str, Any]:
    """Run every measurement of ``plan`` and return the results (see ``report``)."""
    with (
        stop_on_signals(),
        tempfile.TemporaryDirectory(prefix="broadcast-benchmark-") as tmp,
        redis_server(redis_url, write) as (url, redis_pid),
        database(Path(tmp)) as database_url,
        layers_on(url),
    ):
        write("Preparing the database…")
        call_command("migrate", interactive=False, verbosity=0)
        if get_config(Product).max_rate:
            raise BenchmarkError("Product has a max_rate: not every save would be an event.")
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
            try:
                ports = _start(children, env, write)
                cookie = login(f"http://127.0.0.1:{ports['ours']}", username, password)
                results = Measurements(
                    plan, children, ports, cookie, (url, redis_pid), products, write
                ).run()
                if not plan.resume_only:
                    write("(i) presence: joins on a second instance A, seen on B…")
                    results["presence"] = presence_row(children, env, ports["ours"], cookie, plan)
                    write(presence_line(results["presence"]))
                    write("(j) 1,000 filtered subscriptions against 1,000 plain ones…")
                    pid = children.processes["ours"].pid
                    ws_url = f"ws://127.0.0.1:{ports['ours']}/ws/broadcast/"
                    results["filtered"] = filtered_row(
                        ws_url, cookie, pid, products, plan.filtered_events, plan.filtered_rate
                    )
                    write(filtered_line(results["filtered"]))
            finally:
                with ignoring_signals():
                    _stop(children)
            results["meta"].update(
                redis="given (--redis-url)" if redis_url else "embedded redis-server",
                database=connections[DEFAULT_DB_ALIAS].vendor,
                instance_warnings=_problems(children),
            )
            return results


def _load() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _problems(children: Children) -> list[str]:
    """Up to 20 warning or error lines instance B logged (slow clients closed, …)."""
    return children.log_lines("ours", "WARNING", "ERROR", "Traceback")[:20]


def _start(children: Children, env: dict[str, str], write: Write) -> dict[str, int]:
    ports = {"ours": free_port(), "floor": free_port()}
    write(f"Starting uvicorn instance B (port {ports['ours']}), the floor relay "
          f"(port {ports['floor']}) and the client fleet…")  # fmt: skip
    ours_env = {**env, "BROADCAST_INSTANCE_ID": "benchmark-b"}
    children.start("ours", uvicorn_command("project.asgi:application", ports["ours"]), ours_env)
    app = "project.demo.benchmark.floor_relay:app"
    children.start("floor", uvicorn_command(app, ports["floor"]), env)
    wait_http(children, f"http://127.0.0.1:{ports['ours']}/admin/login/", STARTUP_TIMEOUT)
    wait_http(children, f"http://127.0.0.1:{ports['floor']}/", STARTUP_TIMEOUT)
    return ports


def _stop(children: Children) -> None:
    fleet = children.processes.get("clients")
    if fleet is not None and fleet.poll() is None and fleet.stdin is not None:
        # A clean close first, so the servers see ordinary disconnects.
        try:
            fleet.stdin.write(b'{"cmd": "quit"}\n')
            fleet.stdin.close()
            fleet.wait(10)
        except Exception:  # stop_all below terminates it anyway
            pass
    children.stop_all()


class Measurements:
    """The measurements of one run, in order, on processes already started."""

    def __init__(
        self,
        plan: Plan,
        children: Children,
        ports: dict[str, int],
        cookie: str,
        redis_server: tuple[str, int | None],
        products: Products,
        write: Write,
    ) -> None:
        self.plan = plan
        self.children = children
        self.redis_url, self.redis_pid = redis_server
        self.ports = ports
        self.cookie = cookie
        self.products = products
        self.write = write
        self.fleet = FleetProcess(children, {**os.environ})
        self.floor_client = redis.Redis.from_url(self.redis_url)
        self.connected = {"ours": 0, "floor": 0}

    def run(self) -> dict[str, Any]:
        if self.plan.resume_only:
            self.floor_client.close()
            meta = {"saver": SAVER_NOTE, "cpus": os.cpu_count(), "load_before": _load()}
            resume = self.resume()
            meta["load_after"] = _load()
            return {"meta": meta, "plan": asdict(self.plan), "resume": resume}
        plan = self.plan
        results: dict[str, Any] = {
            # Other work on the machine skews every number: the load average tells.
            "meta": {"saver": SAVER_NOTE, "cpus": os.cpu_count(), "load_before": _load()},
            "plan": asdict(plan),
            "save_overhead": self.save_overhead(),
            "latency": [],
            "sustained": [],
        }
        try:
            for clients in sorted({*plan.latency_clients, *plan.step_clients}):
                self.ensure_clients(clients)
                if clients in plan.latency_clients:
                    results["latency"].append(self.latency_row(clients))
                if clients in plan.step_clients:
                    results["sustained"].append(self.sustained_row(clients))
        finally:
            self.floor_client.close()
        # The rows below measure an idle instance B: the fleet's clients, subscribed to
        # every product, would each get every bulk event, and B would still be writing
        # them out (minutes at 200 clients) while the next rows ran.
        self.fleet.call({"cmd": "close"}, 30)
        self.connected = {"ours": 0, "floor": 0}
        self.write(f"(f) bulk: QuerySet.update() of {plan.bulk_rows} rows, until published…")
        results["bulk"] = bulk_throughput(plan.bulk_rows)
        self.write(f"(g) bulk: QuerySet.delete() of {plan.bulk_rows} rows, until published…")
        results["bulk_delete"] = bulk_delete_throughput(plan.bulk_rows)
        results["resume"] = self.resume()
        self.write(f"(k) publish ceiling: bursts of {plan.ceiling_events} events…")
        results["ceiling"] = ceiling_row(self.redis_url, plan.ceiling_events)
        results["meta"]["load_after"] = _load()
        return results

    # -- (h) a victim's ping under resume load ----------------------------------------

    def resume(self) -> dict[str, Any]:
        plan = self.plan
        self.write(f"(h) a victim's ping while {plan.resume_clients} clients resume…")
        row = resume_row(self.children, self.ports["ours"], self.cookie, self.redis_url, plan)
        self.write("\n".join(report.resume_lines(row, plan.targets["resume"])))
        return row

    # -- (a) the cost of broadcasting in save() ---------------------------------------

    def save_overhead(self) -> dict[str, Any]:
        """Median ``save()`` time with broadcasting on and off, in interleaved chunks."""
        plan = self.plan
        self.write(f"(a) save() with broadcasting on vs off, {plan.overhead_rate:g} saves/s…")
        save = plain_save(self.products.new())
        durations: dict[bool, list[float]] = {True: [], False: []}
        paced(plan.overhead_rate, 10, save)  # warm-up: connections, caches
        # Short chunks in ABBA order (off, on, on, off, ...): the machine's state drifts
        # (other processes, CPU caches, the database file), and this spreads the drift
        # evenly over both sides instead of letting it show as overhead.
        chunk = min(10, plan.overhead_saves)
        for number in range(max(1, plan.overhead_saves // chunk)):
            for enabled in (False, True) if number % 2 == 0 else (True, False):
                off = override_settings(BROADCAST_ENABLED=False)
                with nullcontext() if enabled else off:
                    durations[enabled] += paced(plan.overhead_rate, chunk, save).durations
        publisher.flush(5)
        return report.overhead_result(
            durations[True], durations[False], plan.overhead_rate, plan.targets["save_ratio"]
        )

    # -- (b), (d), (e): latency at a fixed rate ---------------------------------------

    def latency_row(self, clients: int) -> dict[str, Any]:
        """Ours and the floor in alternating chunks (ABBA), each side's pooled."""
        plan = self.plan
        count = max(1, round(plan.latency_rate * plan.latency_chunk_seconds))
        chunks = max(1, round(plan.latency_seconds / plan.latency_chunk_seconds))
        # The machine drifts between fast and slow spells lasting seconds (its other
        # work, the host's): alternating short chunks shares them between both sides,
        # as (a) does, where one phase after the other put the drift into the ratio.
        measured: dict[str, list[dict[str, Any]]] = {"ours": [], "floor": []}
        for number in range(chunks):
            for kind in ("ours", "floor") if number % 2 == 0 else ("floor", "ours"):
                measured[kind].append(self.phase(kind, plan.latency_rate, count, raw=True))
        ours, floor = report.pooled(measured["ours"]), report.pooled(measured["floor"])
        row = report.latency_row(clients, ours, floor, plan.targets["p50_ratio"])
        self.write(report.latency_line(row))
        return row

    # -- (c): the highest sustained rate ----------------------------------------------

    def sustained_row(self, clients: int) -> dict[str, Any]:
        steps = {kind: self.step_up(kind) for kind in ("ours", "floor")}
        target = self.plan.targets["sustained"].get(str(clients))
        row = report.sustained_row(clients, steps["ours"], steps["floor"], target)
        self.write(report.sustained_line(row))
        return row

    def step_up(self, kind: str) -> list[dict[str, Any]]:
        """Raise the rate step by step; stop after the first step that fails."""
        steps = []
        for rate in self.plan.step_rates:
            step = self.step(kind, rate)
            if not step["passed"] and not step["lost"]:
                # One p99 spike can come from anything else on the machine: a step
                # fails only if it fails twice (ours and the floor alike; both kept).
                step = {**self.step(kind, rate), "first_attempt": step}
            steps.append(step)
            self.write("    " + report.step_line(kind, step))
            if not step["passed"]:
                break
        return steps

    def step(self, kind: str, rate: float) -> dict[str, Any]:
        step = self.phase(kind, rate, round(rate * self.plan.step_seconds))
        step["passed"] = report.step_passed(step, self.plan.p99_limit_ms)
        return step

    # -- one phase --------------------------------------------------------------------

    def phase(self, kind: str, rate: float, count: int, raw: bool = False) -> dict[str, Any]:
        """``count`` paced saves of a fresh product, and what the ``kind`` clients got
        (with ``raw``, every latency and save duration too, for ``report.pooled``)."""
        product = self.products.new()
        context: AbstractContextManager[Any]
        if kind == "ours":
            save, context = plain_save(product), nullcontext()
            self._warm_up()
        else:
            save = floor_save(product, self.floor_client, FLOOR_CHANNEL)
            context = override_settings(BROADCAST_ENABLED=False)
        before = stats.snapshot()
        cpu = self._cpu(kind)
        started_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        with context:
            start = {"cmd": "start", "marker": marker(product), "group": kind, "expected": count}
            self.fleet.call(start, 10)
            pace = paced(rate, count, save)
            publisher.flush(5)
            settle = self.plan.settle_seconds
            stop = {"cmd": "stop", "settle": settle, "raw": raw}
            received = self.fleet.call(stop, settle + 30)
        after = stats.snapshot()
        cpu_ms = {}
        for name, end in self._cpu(kind).items():
            begin = cpu[name]
            if begin is not None and end is not None:
                cpu_ms[name] = round((end - begin) * 1000)
        frames = received["received"] + received["duplicates"]
        if raw:
            received["save_durations_ms"] = [d * 1000 for d in pace.durations]
        return {
            "kind": kind,
            "started_at": started_at,
            "rate": rate,
            "saves": count,
            "achieved_rate": round(pace.achieved_rate, 1),
            "kept_pace": pace.kept_pace,
            "save_median_ms": round(pace.median_ms, 3),
            "publish_failures": sum(
                after.get(k, 0) - before.get(k, 0) for k in ("dropped", "publish_errors")
            ),
            **received,
            # CPU time each process used during the phase (Linux), and the server's
            # per frame it sent: where the time goes, ours against the floor.
            "cpu_ms": cpu_ms,
            "server_cpu_us_per_frame": report.server_cpu_per_frame(cpu_ms, frames),
        }

    def _cpu(self, kind: str) -> dict[str, float | None]:
        pids = {
            "saver": os.getpid(),
            "server": self.children.processes[kind].pid,
            "clients": self.fleet.process.pid,
        }
        if self.redis_pid is not None:
            pids["redis"] = self.redis_pid
        return {name: cpu_seconds(pid) for name, pid in pids.items()}

    def _warm_up(self) -> None:
        # A floor phase's override_settings made the publisher drop its Redis client:
        # reconnect now rather than inside the measured phase.
        save = plain_save(self.products.new())
        save(1)
        publisher.flush(5)

    def ensure_clients(self, count: int) -> None:
        """Connect clients to B and to the floor until each has ``count``."""
        for kind in ("ours", "floor"):
            missing = count - self.connected[kind]
            if missing <= 0:
                continue
            port = self.ports[kind]
            command = {
                "cmd": "connect",
                "group": kind,
                "url": f"ws://127.0.0.1:{port}/ws/broadcast/",
                "count": missing,
                "headers": [["Cookie", self.cookie], ["Origin", f"http://127.0.0.1:{port}"]],
                "subscribe": '{"type":"subscribe","model":"demo.product"}'
                if kind == "ours"
                else None,
            }
            self.connected[kind] = self.fleet.call(command, 120)["connected"]
            if self.connected[kind] != count:
                raise BenchmarkError(f"{kind}: {self.connected[kind]} clients, not {count}.")

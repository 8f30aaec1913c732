"""Connections at scale over several instances of the demo on one Redis.

``broadcast_scale --instances K``: K uvicorn instances of the demo, each with its own
client fleet process, share the clients of each count evenly and one Redis. Per row:
each instance's RSS growth per connection, and for single events the time from the
commit to the last client of *any* instance, with events lost or reset. Redis sends
each event once per instance; this row shows what the spread costs end to end.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command

from broadcast_app.dev.embedded_redis import free_port
from broadcast_app.publish import publisher

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
from .saves import Products, marker, plain_save
from .scale import (
    APPS,
    WARM_CLIENTS,
    ScalePlan,
    Write,
    machine,
    quiet_product,
    raise_open_files,
    rss_bytes,
)


def run_instances(plan: ScalePlan, redis_url: str | None, write: Write) -> dict[str, Any]:
    """Measure every count of ``plan`` spread over ``plan.instances`` instances."""
    open_files = raise_open_files()
    names = [f"ours-{number}" for number in range(1, plan.instances + 1)]
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
            }
            children = Children(Path(tmp), Path(settings.BASE_DIR))
            meta: dict[str, Any] = {
                "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                "machine": machine(),
                "open_files_limit": open_files,
            }
            try:
                ports = {name: free_port() for name in names}
                for name in names:
                    command = uvicorn_command(APPS["ours"], ports[name])
                    children.start(name, command, {**env, "BROADCAST_INSTANCE_ID": name})
                for name in names:
                    wait_http(children, f"http://127.0.0.1:{ports[name]}/admin/login/", 60)
                cookie = login(f"http://127.0.0.1:{ports[names[0]]}", username, password)
                rows = Spread(plan, children, ports, cookie, products, write).run()
            finally:
                with ignoring_signals():
                    _stop(children, names)
            meta["load_after"] = machine()["load"]
            meta["instance_warnings"] = [
                line
                for name in names
                for line in children.log_lines(name, "WARNING", "ERROR", "Traceback")[:5]
            ]
            return {"meta": meta, "plan": asdict(plan), "rows": rows}


def _stop(children: Children, names: list[str]) -> None:
    for name in names:
        fleet = children.processes.get(f"clients-{name}")
        if fleet is not None and fleet.poll() is None and fleet.stdin is not None:
            try:  # a clean close first, so the servers see ordinary disconnects
                fleet.stdin.write(b'{"cmd": "quit"}\n')
                fleet.stdin.close()
                fleet.wait(20)
            except Exception:  # stop_all below terminates it anyway
                pass
    children.stop_all()


class Spread:
    """The rows of one run over several instances already started."""

    def __init__(
        self,
        plan: ScalePlan,
        children: Children,
        ports: dict[str, int],
        cookie: str,
        products: Products,
        write: Write,
    ) -> None:
        self.plan = plan
        self.children = children
        self.ports = ports
        self.cookie = cookie
        self.products = products
        self.write = write
        self.fleets = {
            name: FleetProcess(children, {**os.environ}, name=f"clients-{name}") for name in ports
        }
        self.connected = dict.fromkeys(ports, 0)

    def run(self) -> list[dict[str, Any]]:
        for name in self.ports:
            self.connect(name, WARM_CLIENTS)
        self._save()
        baseline = self.rss()
        rows = []
        for count in sorted(set(self.plan.counts)):
            rows.append(self.row(count, baseline))
            self.write(row_line(rows[-1]))
        return rows

    def row(self, count: int, baseline: dict[str, int]) -> dict[str, Any]:
        each = count // len(self.ports)
        if each <= WARM_CLIENTS:
            raise BenchmarkError(f"{count} clients over {len(self.ports)} instances: too few.")
        self.write(f"{count} clients over {len(self.ports)} instances: connecting…")
        began = time.monotonic()
        for name in self.ports:
            self.connect(name, each)
        connect_seconds = round(time.monotonic() - began, 2)
        rss = self.rss()
        per_connection = {
            name: round((rss[name] - baseline[name]) / (each - WARM_CLIENTS) / 1024, 2)
            for name in self.ports
        }
        events = [self.event() for _ in range(self.plan.events)]
        return {
            "clients": each * len(self.ports),
            "instances": len(self.ports),
            "connect_seconds": connect_seconds,
            "rss_bytes": rss,
            "rss_per_connection_kib": per_connection,
            "last_client_ms": round(statistics.median(e["max_ms"] for e in events), 3),
            "events": events,
            "lost": sum(e["missing"] for e in events),
            "duplicates": sum(e["duplicates"] for e in events),
            #: frames about the event beyond one per client, with a ts of their own
            "extra": sum(max(0, e["received"] - e["clients"]) for e in events),
            "resets": sum(e["resets"] for e in events),
        }

    def event(self) -> dict[str, Any]:
        """One save; when the last client of every instance got it."""
        product = quiet_product(self.products)
        for name, fleet in self.fleets.items():
            start = {"cmd": "start", "marker": marker(product), "group": name, "expected": 1}
            fleet.call(start, 10)
        self._save(product)
        settle = self.plan.settle_seconds
        replies = [
            fleet.call({"cmd": "stop", "settle": settle}, settle + 30)
            for fleet in self.fleets.values()
        ]
        return {
            "clients": sum(r["clients"] for r in replies),
            "received": sum(r["received"] for r in replies),
            "missing": sum(r["missing"] for r in replies),
            "duplicates": sum(r["duplicates"] for r in replies),
            "resets": sum(r["resets"] for r in replies),
            "max_ms": max(r["max_ms"] for r in replies),
        }

    def _save(self, product: Any = None) -> None:
        plain_save(product if product is not None else self.products.new())(0)
        publisher.flush(5)

    def connect(self, name: str, count: int) -> None:
        missing = count - self.connected[name]
        if missing <= 0:
            return
        port = self.ports[name]
        command = {
            "cmd": "connect",
            "group": name,
            "url": f"ws://127.0.0.1:{port}/ws/broadcast/",
            "count": missing,
            "headers": [["Cookie", self.cookie], ["Origin", f"http://127.0.0.1:{port}"]],
            "subscribe": '{"type":"subscribe","model":"demo.product"}',
        }
        self.connected[name] = self.fleets[name].call(command, 60 + missing / 20)["connected"]
        if self.connected[name] != count:
            raise BenchmarkError(f"{name}: {self.connected[name]} clients, not {count}.")

    def rss(self) -> dict[str, int]:
        sizes = {}
        for name in self.ports:
            size = rss_bytes(self.children.processes[name].pid)
            if size is None:
                raise BenchmarkError("RSS is read from /proc: the scale rows need Linux.")
            sizes[name] = size
        return sizes


def row_line(row: dict[str, Any]) -> str:
    kib = row["rss_per_connection_kib"]
    return (
        f"  {row['clients']:>6} clients over {row['instances']} instances: RSS/conn "
        f"{min(kib.values()):.1f}-{max(kib.values()):.1f} KiB; commit→last client "
        f"{row['last_client_ms']:.1f} ms; lost {row['lost']}, resets {row['resets']}"
    )

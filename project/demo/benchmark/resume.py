"""(h) What resuming clients cost everyone else: a victim's ping under resume load.

The model's log is filled to ``log_events`` events (a bulk update of as many products),
then a victim connection pings instance B every 50 ms, first with nothing else going
on, then while ``clients`` connections (another process, ``resume_load``) each send a
frame every ``resume_interval`` seconds (ten times what their resume allowance lets
through): pings only (what that many frames cost without any resume, for reference);
resumes from the start of the log
(more events than a resume may replay: each answer is a ``reset``); and resumes from
as far back as a resume may go (each replays ``BROADCAST_RESUME_MAX_EVENTS - 1``
events, or is refused by the budget).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import redis
from django.db.models import F
from django.test.utils import override_settings

from broadcast_app.conf import conf
from broadcast_app.publish import publisher
from broadcast_app.transport.log_reader import entry_events
from broadcast_app.transport.routes import route

from ..models import Product
from . import report
from .processes import BenchmarkError, Children, cpu_seconds
from .resume_load import PINGS_ONLY, victim_pings

PREFIX = "bench-resume-"
LABEL = "demo.product"
#: seconds between the victim's pings: within the default frame allowance (200 at once,
#: then 20 a second) for the whole of ``resume_seconds``, or pings are refused
PING_INTERVAL = 0.05


def fill_log(entries: int) -> None:
    """Publish ``entries`` events of the model (one bulk update of as many products)."""
    with override_settings(BROADCAST_ENABLED=False):
        Product.objects.filter(sku__startswith=PREFIX).delete()
        Product.objects.bulk_create(
            (Product(name=f"R{i}", sku=f"{PREFIX}{i}", price=1, stock=0) for i in range(entries)),
            batch_size=2000,
        )
    Product.objects.filter(sku__startswith=PREFIX).update(stock=F("stock") + 1)
    if not publisher.flush(120):
        raise BenchmarkError("The resume row's events were not all published.")
    with override_settings(BROADCAST_ENABLED=False):
        Product.objects.filter(sku__startswith=PREFIX).delete()


def resume_points(redis_url: str) -> tuple[int, dict[str, str]]:
    """The events in the log, and the ``since`` of each load: its start, and the
    furthest back a resume may go (``BROADCAST_RESUME_MAX_EVENTS - 1`` events after it,
    what the default send queue leaves room for)."""
    r = route(LABEL)
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        epoch = client.hget(r.meta, "epoch")
        ids = [
            event_id
            for entry_id, fields in client.xrange(r.stream)
            for event_id, _, _ in entry_events(entry_id, fields, epoch)
        ]
        first = client.xrange(r.stream, count=1)[0][1]
    back = min(conf.BROADCAST_RESUME_MAX_EVENTS, conf.BROADCAST_SEND_QUEUE_SIZE)
    start = first["p"] or ids[0]
    return len(ids), {"pings": PINGS_ONLY, "start": start, "limit": ids[-back]}


def resume_row(
    children: Children,
    port: int,
    cookie: str,
    redis_url: str,
    plan: Any,
) -> dict[str, Any]:
    """The victim's ping round trips idle and under each resume load."""
    fill_log(plan.resume_log)
    length, points = resume_points(redis_url)
    url = f"ws://127.0.0.1:{port}/ws/broadcast/"
    origin = ("Origin", f"http://127.0.0.1:{port}")
    victim = [origin]
    seconds = plan.resume_seconds
    idle = report.latency_summary(asyncio.run(victim_pings(url, victim, seconds, PING_INTERVAL)))
    row: dict[str, Any] = {
        "clients": plan.resume_clients,
        "interval": plan.resume_interval,
        "log_events": length,
        "seconds": seconds,
        "ping_interval": PING_INTERVAL,
        "idle": idle,
        "loads": {},
    }
    for name, since in points.items():
        command = [
            sys.executable, "-m", "project.demo.benchmark.resume_load",
            "--url", url, "--clients", str(plan.resume_clients), "--since", since,
            "--seconds", str(seconds), "--interval", str(plan.resume_interval),
            "--header", f"Cookie: {cookie}",
            "--header", f"{origin[0]}: {origin[1]}",
        ]  # fmt: skip
        process = children.start(
            f"resume-{name}",
            command,
            {**os.environ},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert process.stdin is not None
        assert process.stdout is not None
        if process.stdout.readline().strip() != b"ready":
            raise BenchmarkError(
                f"The resuming clients ({name}) did not connect:\n"
                + children.log_tail(f"resume-{name}")
            )
        server = children.processes["ours"].pid
        cpu_before = cpu_seconds(server)
        process.stdin.write(b"go\n")
        process.stdin.flush()
        pings = asyncio.run(victim_pings(url, victim, seconds, PING_INTERVAL))
        answers = json.loads(process.stdout.readline() or b"{}")
        cpu_after = cpu_seconds(server)
        process.wait(30)
        loaded = report.latency_summary(pings)
        row["loads"][name] = {
            "since": since,
            "victim": loaded,
            "answers": answers,
            # instance B's CPU time while the load ran (Linux), of the load's seconds
            "server_cpu_ms": None
            if cpu_before is None or cpu_after is None
            else round((cpu_after - cpu_before) * 1000),
            **report.resume_verdict(idle, loaded, plan.targets["resume"]),
        }
    return row

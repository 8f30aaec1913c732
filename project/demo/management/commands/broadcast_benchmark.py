"""``manage.py broadcast_benchmark``: broadcast_app's costs, measured against a bare floor."""

from __future__ import annotations

import dataclasses
from argparse import ArgumentParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.core.management.base import BaseCommand, CommandError

from project.demo.benchmark import report, runner
from project.demo.benchmark.processes import BenchmarkError, Interrupted


def _positive_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise CommandError(f"{text!r} is not a comma-separated list of integers.") from None
    if not values or any(v <= 0 for v in values):
        raise CommandError(f"{text!r}: give positive integers, e.g. 1,50,200.")
    return values


class Command(BaseCommand):
    help = (
        "Benchmark broadcast_app: the cost of broadcasting in save(), commit-to-websocket "
        "latency with 1/50/200 clients, the highest sustained save rate, and events lost, "
        "each next to a bare floor (sync PUBLISH + a raw ASGI relay) measured in the same "
        "run. Starts its own redis-server, uvicorn instance, floor relay and client fleet, "
        "and uses a temporary SQLite database unless DATABASE_URL is set."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--quick",
            action="store_true",
            help="A short smoke run (under a minute): fewer clients, saves and steps.",
        )
        parser.add_argument(
            "--json",
            default="benchmark-results.json",
            help="Where to write the results as JSON (default: benchmark-results.json).",
        )
        parser.add_argument(
            "--redis-url",
            help=(
                "Use this Redis instead of starting a throwaway redis-server; the benchmark "
                "writes a stream and publishes events there."
            ),
        )
        parser.add_argument(
            "--clients",
            help="Comma-separated client counts of the latency rows (default: 1,50,200).",
        )
        parser.add_argument(
            "--step-clients",
            help="Comma-separated client counts of the sustained-rate rows (default: 50,200).",
        )
        parser.add_argument(
            "--resume-clients",
            type=int,
            help="Clients resuming at once in the resume-load row (h) (default: 20; quick: 5).",
        )
        parser.add_argument(
            "--resume-only",
            action="store_true",
            help="Measure only the resume-load row (h): a victim's ping while clients resume.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        plan = runner.QUICK if options["quick"] else runner.FULL
        if options["clients"]:
            plan = dataclasses.replace(plan, latency_clients=_positive_ints(options["clients"]))
        if options["step_clients"]:
            plan = dataclasses.replace(plan, step_clients=_positive_ints(options["step_clients"]))
        if options["resume_clients"] is not None:
            if options["resume_clients"] <= 0:
                raise CommandError("--resume-clients must be a positive integer.")
            plan = dataclasses.replace(plan, resume_clients=options["resume_clients"])
        if options["resume_only"]:
            plan = dataclasses.replace(plan, resume_only=True)
        redis_url = options["redis_url"]
        if redis_url and urlsplit(redis_url).scheme not in {"redis", "rediss", "unix"}:
            raise CommandError(f"{redis_url!r} is not a redis://, rediss:// or unix:// URL.")
        path = Path(options["json"])
        if not path.parent.is_dir():
            raise CommandError(f"No directory {path.parent} for --json.")
        try:
            results = runner.run_benchmark(plan, redis_url, self.stdout.write)
        except (KeyboardInterrupt, Interrupted):
            raise CommandError("Interrupted; every process started was stopped.") from None
        except BenchmarkError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(report.format_table(results))
        report.write_json(results, path)
        self.stdout.write(f"Results written to {path}.")

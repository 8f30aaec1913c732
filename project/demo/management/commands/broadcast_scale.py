"""``manage.py broadcast_scale``: thousands of connections on one instance, measured."""

from __future__ import annotations

import json
from argparse import ArgumentParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.core.management.base import BaseCommand, CommandError

from project.demo.benchmark.processes import BenchmarkError, Interrupted
from project.demo.benchmark.scale import ScalePlan, run_scale
from project.demo.benchmark.scale_instances import run_instances

from .broadcast_benchmark import _positive_ints


class Command(BaseCommand):
    help = (
        "Connections at scale: for each client count, instance B of the demo, a bare "
        "uvicorn websocket app and the floor relay each hold that many clients (fleets in "
        "their own processes); records RSS per connection (ours against the bare app), "
        "the time from commit to the last client for single events (ours against the "
        "floor) and events lost. Starts its own redis-server and servers, and uses a "
        "temporary SQLite database unless DATABASE_URL is set."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--scale",
            default="1000,5000",
            help="Comma-separated client counts per server (default: 1000,5000).",
        )
        parser.add_argument(
            "--events", type=int, default=5, help="Single events per side and count (5)."
        )
        parser.add_argument(
            "--json", default="scale-results.json", help="Where to write the results."
        )
        parser.add_argument(
            "--instances",
            type=int,
            default=1,
            help=(
                "Spread each count's clients over this many instances of the demo on one "
                "Redis (without the bare app and the floor); default 1."
            ),
        )
        parser.add_argument("--redis-url", help="Use this Redis instead of a throwaway one.")

    def handle(self, *args: Any, **options: Any) -> None:
        counts = _positive_ints(options["scale"])
        if options["events"] <= 0:
            raise CommandError("--events must be a positive integer.")
        redis_url = options["redis_url"]
        if redis_url and urlsplit(redis_url).scheme not in {"redis", "rediss", "unix"}:
            raise CommandError(f"{redis_url!r} is not a redis://, rediss:// or unix:// URL.")
        path = Path(options["json"])
        if not path.parent.is_dir():
            raise CommandError(f"No directory {path.parent} for --json.")
        if options["instances"] <= 0:
            raise CommandError("--instances must be a positive integer.")
        plan = ScalePlan(counts=counts, events=options["events"], instances=options["instances"])
        run = run_scale if plan.instances == 1 else run_instances
        try:
            results = run(plan, redis_url, self.stdout.write)
        except (KeyboardInterrupt, Interrupted):
            raise CommandError("Interrupted; every process started was stopped.") from None
        except BenchmarkError as exc:
            raise CommandError(str(exc)) from exc
        path.write_text(json.dumps(results, indent=2) + "\n")
        self.stdout.write(f"Results written to {path}.")

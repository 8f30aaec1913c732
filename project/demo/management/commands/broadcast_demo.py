"""``manage.py broadcast_demo``: run the demo as two server instances sharing one Redis."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from project.demo import launcher


class Command(BaseCommand):
    help = (
        "Run the broadcast demo: migrate, seed products and an admin/admin superuser, then "
        "serve the project from two uvicorn instances sharing one Redis (REDIS_URL, or a "
        "throwaway redis-server started for the run). Stop with Ctrl-C."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--ports",
            default=launcher.DEFAULT_PORTS,
            help=(
                "Comma-separated ports on 127.0.0.1, one uvicorn instance each "
                f"(default: {launcher.DEFAULT_PORTS})."
            ),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            ports = launcher.parse_ports(options["ports"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        try:
            launcher.run_demo(ports, self.stdout.write)
        except launcher.LaunchError as exc:
            raise CommandError(str(exc)) from exc

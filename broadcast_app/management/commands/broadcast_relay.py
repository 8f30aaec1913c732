"""``manage.py broadcast_relay``: publish the outbox (``BROADCAST_DELIVERY = "outbox"``)."""

from __future__ import annotations

import signal
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from broadcast_app.conf import conf
from broadcast_app.publish.relay import Outcome, RelayLoop, outbox_databases


class Command(BaseCommand):
    help = (
        "Relay the broadcast outbox: publish committed outbox rows to Redis in order and "
        "delete them, until SIGTERM or Ctrl-C (or, with --once, until the outbox is empty). "
        "Any number may run: one at a time publishes, the others wait for it."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--once",
            action="store_true",
            help="Relay what the outbox holds now, then exit (status 1 if Redis failed).",
        )
        parser.add_argument(
            "--database",
            action="append",
            dest="databases",
            help="Relay this database alias (repeatable; default: every database the "
            "outbox table is migrated to).",
        )
        parser.add_argument(
            "--interval",
            type=float,
            help="Seconds between two passes when idle (default: BROADCAST_OUTBOX_INTERVAL).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        aliases = options["databases"] or outbox_databases()
        unknown = sorted(set(aliases) - set(connections))
        if unknown:
            raise CommandError(f"Unknown database alias(es): {', '.join(unknown)}.")
        interval = options["interval"]
        if interval is not None and interval <= 0:
            raise CommandError("--interval must be a positive number of seconds.")
        if conf.BROADCAST_DELIVERY != "outbox":
            self.stderr.write(
                f"BROADCAST_DELIVERY is {conf.BROADCAST_DELIVERY!r}: only processes that "
                "exited while Redis was unreachable write outbox rows; relaying those."
            )
        loop = RelayLoop(aliases, interval)
        if options["once"]:
            total = Outcome()
            for relay in loop.relays():
                total.add(loop.pass_over(relay))
            self._report(total)
            if total.failed:
                raise CommandError("Redis or the database failed; rows left in the outbox.")
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: loop.stop())
        self.stdout.write(f"Relaying the outbox of {', '.join(aliases)}; stop with Ctrl-C.")
        self._report(loop.run())

    def _report(self, total: Outcome) -> None:
        self.stdout.write(
            f"relayed {total.published} event(s) from {total.rows} outbox row(s), "
            f"{total.duplicates} duplicate(s) skipped"
        )

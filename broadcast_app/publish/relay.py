"""The outbox relay: publish committed outbox rows in order, then delete them.

A pass runs in one database transaction that first updates the single
:class:`~.models.OutboxLock` row: a second relay (another instance, or
``manage.py broadcast_relay``) blocks on that row until the first commits, on
PostgreSQL as on SQLite, so one relay at a time publishes and ordering holds. The pass
reads the oldest rows by id, widened to whole transactions (rows sharing a token) and
to every row below the highest id taken, and publishes each transaction's changes,
coalesced per object, through the publisher's Lua script, in the order of each
transaction's last row; then it deletes those rows in the same database transaction.

Ids are assigned at insert, so a transaction that commits late can hold ids below rows
already relayed: the relay never keeps a high-water mark, it publishes whatever rows
exist. Two transactions touching one object are ordered by the row lock the first holds
until it commits: the second's row for that object, and so its last row, comes after
all of the first's rows.

At least once, no duplicates: a relay that dies after publishing but before its delete
commits leaves the rows; the next pass publishes them again and the Lua script skips
each event already recorded in its transaction's ``<prefix>:outbox:<token>`` hash.
While Redis is down passes fail at the first event and keep every row: nothing is held
in memory, and the rows go out in order when Redis answers.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from django.db import connections, router, transaction
from django.db.models import Q
from django.utils import timezone

from ..conf import conf
from ..events.coalesce import coalesce
from ..events.row_sets import RowSet
from ..events.wire import event_body
from ..models import OutboxEvent, OutboxLock
from ..stats import stats
from ..transport.backoff import Backoff
from ..transport.routes import once_key
from . import publisher
from .outbox_rows import Item, LostEvents, from_payload
from .publisher import Publisher

logger = logging.getLogger(__name__)

_BATCH = 500  # oldest rows read per pass, before widening to whole transactions
_DELETE_CHUNK = 500  # ids per DELETE (SQLite limits the parameters of one statement)
_RETRY_MIN, _RETRY_MAX = 0.2, 5.0  # seconds between passes while Redis or the DB fails


@dataclass
class Outcome:
    """What relay passes did: rows taken from the outbox, events out, duplicates skipped."""

    rows: int = 0
    published: int = 0
    duplicates: int = 0
    failed: bool = False

    def add(self, other: Outcome) -> None:
        self.rows += other.rows
        self.published += other.published
        self.duplicates += other.duplicates
        self.failed = self.failed or other.failed


class Relay:
    """Relays the outbox of one database."""

    def __init__(self, using: str = "default", batch: int = _BATCH) -> None:
        self.using = using
        self.batch = batch
        # A publisher of its own: no thread, no queue, just its Redis clients.
        self.publisher = Publisher()

    def drain(self, stopping: threading.Event | None = None) -> Outcome:
        """Relay until the outbox is empty, a pass fails (Redis down) or ``stopping``."""
        total = Outcome()
        while stopping is None or not stopping.is_set():
            outcome = self.relay_once()
            total.add(outcome)
            if outcome.failed or outcome.rows == 0:
                break
        return total

    def relay_once(self) -> Outcome:
        """One pass: the oldest rows (whole transactions), published, then deleted."""
        outcome = Outcome()
        if not OutboxEvent.objects.using(self.using).exists():
            # Idle: a read, not a write lock every interval in every instance.
            return outcome
        done_tokens: dict[str, set[str]] = {}
        with transaction.atomic(using=self.using):
            self._lock()
            rows = self._oldest()
            done: list[int] = []
            for token, group in _by_token(rows).items():
                published, skipped, ok = self._publish(token, group)
                outcome.published += published
                outcome.duplicates += skipped
                if not ok:
                    # Keep order: nothing after a failed transaction goes out now.
                    outcome.failed = True
                    break
                done.extend(row.id for row in group)
                done_tokens[token] = {row.label for row in group}
            outcome.rows = len(done)
            self._delete(done)
            if done_tokens:
                transaction.on_commit(lambda: self._forget(done_tokens), using=self.using)
        return outcome

    def _lock(self) -> None:
        manager = OutboxLock.objects.using(self.using)
        holder = conf.BROADCAST_INSTANCE_ID
        # An UPDATE, not SELECT ... FOR UPDATE: SQLite has no row locks but takes its
        # write lock here, so a second relay waits on both backends.
        if not manager.filter(id=1).update(holder=holder, taken=timezone.now()):
            manager.get_or_create(id=1)  # first pass on this database (or tests flushed)
            manager.filter(id=1).update(holder=holder, taken=timezone.now())

    def _oldest(self) -> list[OutboxEvent]:
        """The oldest rows, widened until they hold whole transactions and every
        committed row up to the highest id among them."""
        manager = OutboxEvent.objects.using(self.using)
        taken = {row.id: row for row in manager.order_by("id")[: self.batch]}
        while taken:
            # A transaction's rows go out together, so they coalesce as in best_effort;
            # and a transaction with a row below the top must be in: it may have changed
            # an object before one already taken did. Each query sees what committed
            # since the last one (READ COMMITTED), so repeat until nothing is missing.
            top = max(taken)
            below = set(manager.filter(id__lte=top).values_list("id", flat=True))
            tokens = {row.token for row in taken.values()}
            more = manager.filter(Q(id__in=below - taken.keys()) | Q(token__in=tokens, id__gt=top))
            found = {row.id: row for row in more}
            if not found:
                break
            taken.update(found)
        return [taken[key] for key in sorted(taken)]

    def _publish(self, token: str, rows: list[OutboxEvent]) -> tuple[int, int, bool]:
        """Publish one transaction's rows: (events out, duplicates skipped, all done)."""
        items: list[Item] = []
        for item in _items(rows, self.using):
            if not isinstance(item, LostEvents):
                items.append(item)
            elif not self.publisher.send_resets(
                {item.label}, "were lost by a process that exited"
            ):
                return 0, 0, False  # Redis down: kept, in order, for the next pass
        # The event's ts is when the transaction wrote its last change, not relay time:
        # the dashboard's commit → receipt lag includes the time spent in the outbox.
        ts = _iso(max(row.created for row in rows))
        origin = _origin(rows[0])
        key = once_key(token)
        published = skipped = 0
        for changes in coalesce(items):
            batch, once = [], []
            for change in changes:
                try:
                    batch.append((change.label, event_body(change, ts, origin)))
                except Exception:
                    stats.incr("capture_errors")
                    logger.exception("broadcast_app could not encode an outbox event")
                    continue
                once.append((key, f"{change.label}:{change.pk}"))
            if not batch:
                continue
            if publisher.captured(batch, once):  # capture_events() in a test: not for Redis
                published += len(batch)
                continue
            dealt, duplicates = self.publisher.send_now(batch, once)
            published += dealt - duplicates
            skipped += duplicates
            if dealt < len(batch):
                return published, skipped, False
        return published, skipped, True

    def _delete(self, ids: list[int]) -> None:
        manager = OutboxEvent.objects.using(self.using)
        for start in range(0, len(ids), _DELETE_CHUNK):
            manager.filter(id__in=ids[start : start + _DELETE_CHUNK]).delete()

    def _forget(self, tokens: dict[str, set[str]]) -> None:
        self.publisher.forget(
            (label, once_key(token)) for token, labels in tokens.items() for label in labels
        )


def _by_token(rows: Iterable[OutboxEvent]) -> dict[str, list[OutboxEvent]]:
    """Rows per transaction, transactions in the order of their last row.

    Not of their first: a transaction that wrote a row early, then waited for another's
    lock on an object, changed that object after the other committed, so after every
    row of the other. Its last row is therefore above the other's last row.
    """
    groups: dict[str, list[OutboxEvent]] = {}
    for row in rows:
        groups.setdefault(row.token, []).append(row)
    return dict(sorted(groups.items(), key=lambda item: item[1][-1].id))


def _items(rows: list[OutboxEvent], using: str) -> Iterable[Item | LostEvents]:
    for row in rows:
        try:
            item = from_payload(row.label, row.payload)
            if isinstance(item, RowSet):
                item.using = using  # the outbox lives beside the rows it names
            yield item
        except Exception:
            # Unregistered model, or a row this version cannot read: holding it would
            # stop the outbox for good, so it is dropped, loudly.
            stats.incr("outbox_errors")
            logger.exception("broadcast_app dropped outbox row %s (%s)", row.id, row.label)


def _origin(row: OutboxEvent) -> str:
    """The instance that made the change (its rows all come from one process)."""
    try:
        return str(json.loads(row.payload)["origin"])
    except (ValueError, KeyError):
        return conf.BROADCAST_INSTANCE_ID


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def outbox_databases() -> list[str]:
    """The database aliases that hold an outbox table (where its migration runs)."""
    return [alias for alias in connections if router.allow_migrate_model(alias, OutboxEvent)]


class RelayLoop:
    """Relay passes over databases until stopped; woken at once by local commits."""

    def __init__(self, aliases: list[str] | None = None, interval: float | None = None):
        self.aliases = aliases
        self.interval = interval
        self.stopping = threading.Event()
        self._wake = threading.Event()

    def wake(self) -> None:
        """Run a pass now rather than at the next interval."""
        self._wake.set()

    def stop(self) -> None:
        """Make :meth:`run` return after its current pass."""
        self.stopping.set()
        self._wake.set()

    def relays(self) -> list[Relay]:
        """One relay per database this loop covers."""
        return [Relay(alias) for alias in self.aliases or outbox_databases()]

    def run(self) -> Outcome:
        """Relay until :meth:`stop`; returns the totals."""
        relays = self.relays()
        total = Outcome()
        delay = _RETRY_MIN
        try:
            while not self.stopping.is_set():
                self._wake.clear()
                failed = False
                for relay in relays:
                    outcome = self.pass_over(relay)
                    total.add(outcome)
                    failed = failed or outcome.failed
                if failed:
                    wait = delay
                    delay = min(delay * 2, _RETRY_MAX)
                else:
                    wait = self.interval or conf.BROADCAST_OUTBOX_INTERVAL
                    delay = _RETRY_MIN
                self._wake.wait(wait)
        finally:
            for relay in relays:
                relay.publisher.close()
                # This thread's connection: PostgreSQL cannot drop a database in use.
                connections[relay.using].close()
        return total

    def pass_over(self, relay: Relay) -> Outcome:
        """Drain one database's outbox; a failure is logged and reported, never raised."""
        try:
            outcome = relay.drain(self.stopping)
        except Exception:
            stats.incr("outbox_errors")
            logger.exception("broadcast_app outbox relay failed on %r", relay.using)
            connections[relay.using].close_if_unusable_or_obsolete()
            return Outcome(failed=True)
        if outcome.rows or outcome.published:
            logger.info(
                "broadcast_app relayed %d event(s) from %d outbox row(s) on %r "
                "(%d duplicate(s) skipped)%s",
                outcome.published,
                outcome.rows,
                relay.using,
                outcome.duplicates,
                "; Redis unavailable, rows kept" if outcome.failed else "",
            )
        return outcome


class InProcessRelay:
    """The relay thread an instance runs with ``BROADCAST_OUTBOX_RELAY`` (one per process;
    started and stopped by the instance runtime)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: RelayLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the relay thread unless it runs already."""
        with self._lock:
            if self.running:
                return
            self._loop = RelayLoop()
            self._thread = threading.Thread(
                target=self._supervise, args=(self._loop,), name="broadcast-outbox-relay"
            )
            self._thread.daemon = True
            self._thread.start()

    @staticmethod
    def _supervise(loop: RelayLoop) -> None:
        """Run ``loop`` until stopped; if it fails, log it and run it again with backoff
        (the instance runtime's restart policy)."""
        backoff = Backoff()
        while not loop.stopping.is_set():
            began = time.monotonic()
            try:
                loop.run()
            except Exception:
                delay = backoff.after(time.monotonic() - began)
                stats.incr("task_restarts")
                logger.exception(
                    "broadcast_app outbox relay thread failed; restarting in %.1fs", delay
                )
                loop.stopping.wait(delay)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread after its current pass (wait at most ``timeout`` seconds)."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is not None and thread is not None:
            loop.stop()
            thread.join(timeout)

    def wake(self) -> None:
        """A transaction with outbox rows committed in this process: relay it now."""
        loop = self._loop
        if loop is not None:
            loop.wake()


in_process = InProcessRelay()

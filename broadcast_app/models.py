"""The outbox tables (``BROADCAST_DELIVERY = "outbox"``); unused in ``best_effort`` mode.

An :class:`OutboxEvent` is written in the saving transaction, so it commits or rolls
back with the change it describes; the relay (:mod:`.relay`) publishes the rows and
deletes them. :class:`OutboxLock` holds the one row a relay pass locks, so that one
relay at a time publishes from a database.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class OutboxEvent(models.Model):
    """One captured change (or bulk operation), waiting to be published."""

    id = models.BigAutoField(primary_key=True)
    #: shared by the rows of one transaction: the relay coalesces them per row
    token = models.CharField(max_length=32, db_index=True)
    label = models.CharField(max_length=200)
    #: the captured change as JSON (see broadcast_app.publish.outbox_rows.to_payload)
    payload = models.TextField()
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.label} #{self.id}"


class OutboxLock(models.Model):
    """The row a relay pass updates first, and so holds until it commits."""

    id = models.PositiveSmallIntegerField(primary_key=True)
    holder = models.CharField(max_length=200, blank=True)
    taken = models.DateTimeField(null=True)

    def __str__(self) -> str:
        return f"outbox lock ({self.holder or 'free'})"

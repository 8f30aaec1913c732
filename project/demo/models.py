"""The demo's one model."""

from __future__ import annotations

from decimal import Decimal

from django.db import models


class Product(models.Model):
    """A product on sale; every save or delete is broadcast (``cost_price`` excepted)."""

    name = models.CharField(max_length=200)
    sku = models.CharField("SKU", max_length=64, unique=True)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    stock = models.IntegerField(default=0)
    cost_price = models.DecimalField(
        max_digits=10,
        decimal_places=2,
        default=Decimal("0"),
        help_text="Internal: never broadcast nor shown on the public page.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return f"{self.name} ({self.sku})"

"""Admin of the test app: a live changelist and change form (``LiveAdminMixin``)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from broadcast_app.admin import LiveAdminMixin

from .models import Product

#: below this stock a product counts as low (the list filter below)
LOW_STOCK = 20


class StockLevel(admin.SimpleListFilter):
    """Low or out of stock: ANDed lookups, so the live changelist follows the filter."""

    title = "stock"
    parameter_name = "stock_level"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("low", f"Below {LOW_STOCK}"), ("out", "Out of stock")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "low":
            return queryset.filter(stock__lt=LOW_STOCK)
        if self.value() == "out":
            return queryset.filter(stock=0)
        return queryset


@admin.register(Product)
class ProductAdmin(LiveAdminMixin, admin.ModelAdmin):  # type: ignore[type-arg]
    """Products, with the internal cost price editable but kept apart."""

    list_display = ["name", "sku", "price", "stock", "updated_at"]
    list_filter = [StockLevel, "updated_at"]
    search_fields = ["name", "sku"]
    list_per_page = 25
    readonly_fields = ["updated_at"]
    fieldsets = [
        (None, {"fields": ["name", "sku", "price", "stock", "updated_at"]}),
        ("Internal", {"fields": ["cost_price"]}),
    ]

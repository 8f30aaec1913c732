"""Admin of the demo: where changes are made to watch them broadcast, live."""

from __future__ import annotations

from django.contrib import admin

from broadcast_app.admin import LiveAdminMixin

from .models import Product


@admin.register(Product)
class ProductAdmin(LiveAdminMixin, admin.ModelAdmin):  # type: ignore[type-arg]
    """Products, with the internal cost price editable but kept apart.

    ``LiveAdminMixin``: the changelist follows changes made on any instance, and the
    change form warns when someone else changes the product being edited.
    """

    list_display = ["name", "sku", "price", "stock", "updated_at"]
    list_filter = ["updated_at"]
    search_fields = ["name", "sku"]
    list_per_page = 25
    readonly_fields = ["updated_at"]
    fieldsets = [
        (None, {"fields": ["name", "sku", "price", "stock", "updated_at"]}),
        (
            "Internal",
            {
                "fields": ["cost_price"],
                "description": "Not broadcast: excluded when the model is registered.",
            },
        ),
    ]

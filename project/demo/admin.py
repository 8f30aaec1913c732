"""Admin of the demo: where changes are made to watch them broadcast."""

from __future__ import annotations

from django.contrib import admin

from .models import Product


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Products, with the internal cost price editable but kept apart."""

    list_display = ["name", "sku", "price", "stock", "updated_at"]
    search_fields = ["name", "sku"]
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

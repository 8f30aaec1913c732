"""App config of the demo: registers ``Product`` for broadcasting."""

from __future__ import annotations

from django.apps import AppConfig


class DemoConfig(AppConfig):
    """The ``demo`` app."""

    name = "project.demo"
    label = "demo"
    verbose_name = "Demo"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        import broadcast_app

        from .models import Product

        # cost_price is internal: it must never reach a browser or the shared channel.
        broadcast_app.register(Product, exclude=["cost_price"])

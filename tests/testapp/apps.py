"""The library tests' app: a plain broadcast model (Product), relations (many-to-many,
foreign keys), a proxy, multi-table inheritance and custom QuerySet/manager classes."""

from __future__ import annotations

from django.apps import AppConfig


class TestAppConfig(AppConfig):
    name = "tests.testapp"
    label = "testapp"
    verbose_name = "Test app"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        import broadcast_app

        from .models import Article, Attachment, Comment, Note, Place, Product, Restaurant

        # cost_price is internal: it must never reach a browser or the shared channel.
        broadcast_app.register(Product, exclude=["cost_price"])
        broadcast_app.register(Article, exclude=["secret"], previous=True)
        broadcast_app.register(Comment)
        broadcast_app.register(Attachment)
        broadcast_app.register(Note)
        # Multi-table inheritance: a registered parent and one of its children (the
        # other child, Bar, is not registered: its writes publish the parent's rows).
        broadcast_app.register(Place)
        broadcast_app.register(Restaurant)

"""A test-only app with the relations the demo lacks (many-to-many, foreign keys)."""

from __future__ import annotations

from django.apps import AppConfig


class TestAppConfig(AppConfig):
    name = "tests.testapp"
    label = "testapp"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        import broadcast_app

        from .models import Article, Attachment, Comment

        broadcast_app.register(Article, exclude=["secret"], previous=True)
        broadcast_app.register(Comment)
        broadcast_app.register(Attachment)

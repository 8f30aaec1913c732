"""URLs of the staff dashboard: ``path("broadcast/", include("broadcast_app.urls"))``."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "broadcast_app"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("status.json", views.status_json, name="status"),
]

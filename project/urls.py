"""Root URLconf: the admin, broadcast_app's staff dashboard and the demo app."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("broadcast/", include("broadcast_app.urls")),
    path("", include("project.demo.urls")),
]

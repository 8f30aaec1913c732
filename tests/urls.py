"""URLconf of the library's tests: the admin and broadcast_app's own views."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("broadcast/", include("broadcast_app.urls")),
]

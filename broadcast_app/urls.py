"""The staff dashboard's URLs: ``path("broadcast/", include("broadcast_app.urls"))``.

A public entry point: the top-level modules are the paths a project names (URLconf,
ASGI, settings, admin); the stage subpackages behind them are private.
"""

from __future__ import annotations

from broadcast_app.web.urls import app_name, urlpatterns

__all__ = ["app_name", "urlpatterns"]

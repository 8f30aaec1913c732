"""``LiveAdminMixin``: a live change list and change form for a ``ModelAdmin``.

A public entry point (see ``broadcast_app.urls``); the code is in ``broadcast_app.web``.
"""

from __future__ import annotations

from broadcast_app.web.admin import LiveAdminMixin, changelist_where

__all__ = ["LiveAdminMixin", "changelist_where"]

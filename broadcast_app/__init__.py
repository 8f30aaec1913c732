"""broadcast_app: Django model changes, published after commit, live on every instance."""

from __future__ import annotations

from .bulk import publish_changes
from .registry import register, unregister

__version__ = "0.1.0"
__all__ = ["__version__", "publish_changes", "register", "unregister"]

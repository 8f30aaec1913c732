"""broadcast_app: Django model changes, published after commit, live on every instance."""

from __future__ import annotations

from .registry import register, unregister

__version__ = "0.1.0"
__all__ = ["__version__", "register", "unregister"]

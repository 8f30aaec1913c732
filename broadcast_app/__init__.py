"""broadcast_app: Django model changes, published after commit, live on every instance.

The public API is the names in ``__all__``. They are loaded on first access, so that
``import broadcast_app`` (done by Django for every installed app, and by settings files)
imports neither the capture pipeline nor a Redis client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .capture.bulk import publish_changes
    from .capture.registry import (
        AlreadyRegistered,
        ModelConfig,
        NotRegistered,
        register,
        unregister,
    )

__version__ = "0.1.0"
__all__ = [
    "AlreadyRegistered",
    "ModelConfig",
    "NotRegistered",
    "__version__",
    "publish_changes",
    "register",
    "unregister",
]

_FROM_REGISTRY = {"AlreadyRegistered", "ModelConfig", "NotRegistered", "register", "unregister"}


def __getattr__(name: str) -> Any:
    # Plain imports (not importlib by name) so tests/test_package_shape.py sees the edges.
    if name in _FROM_REGISTRY:
        from .capture import registry

        value = getattr(registry, name)
    elif name == "publish_changes":
        from .capture.bulk import publish_changes as value
    else:
        # An AttributeError lets ``from broadcast_app import cache`` import the submodule.
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

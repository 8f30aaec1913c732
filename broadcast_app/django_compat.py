"""The private parts of Django that broadcast_app uses, each in one place.

Every use here has a contract test (``tests/test_django_contracts.py``) that fails with
a clear message when Django changes it, and a public fallback that keeps events correct
(perhaps at some cost) when the private path is unavailable. docs/architecture.md
("Private Django APIs we use") says what each buys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper


def prefetched(instance: models.Model) -> dict[str, Any]:
    """The relations ``prefetch_related()`` loaded into ``instance``, by name.

    Django keeps them in ``instance._prefetched_objects_cache`` (undocumented). Without
    it, nothing counts as prefetched: a save with many-to-many fields is then read back
    at commit, a delete's event omits them.
    """
    cache = getattr(instance, "_prefetched_objects_cache", None)
    return cache if isinstance(cache, dict) else {}


#: False when the installed Django's ``run_on_commit`` is not a list of
#: ``(savepoint ids, callable, robust)`` tuples (as since Django 4.2); the public
#: fallbacks below then apply. Tests set it to exercise them.
HOOK_TUPLES = True


def commit_hooks(conn: BaseDatabaseWrapper) -> list[Any] | None:
    """The connection's pending commit hooks, or None where their shape is not known."""
    hooks = getattr(conn, "run_on_commit", None)
    if not HOOK_TUPLES or not isinstance(hooks, list):
        return None
    if hooks and not (isinstance(hooks[-1], tuple) and len(hooks[-1]) == 3):
        return None
    return hooks


def hook_pending(conn: BaseDatabaseWrapper, func: Callable[[], Any]) -> bool:
    """Whether ``func`` is still among the commit hooks of ``conn``'s transaction (gone:
    that transaction ended, or the savepoint that registered it was rolled back).

    Fallback: False, so callers start afresh (a hook per item: correct, coalesces less).
    """
    hooks = commit_hooks(conn)
    # Django rebuilds the tuples on savepoint rollback, so match on the function.
    return hooks is not None and any(entry[1] == func for entry in reversed(hooks))


def keep_last(conn: BaseDatabaseWrapper, func: Callable[[], Any]) -> bool:
    """Make ``func`` the last commit hook of ``conn``'s transaction, adding it if absent
    (so it runs after every hook registered so far). False where hooks cannot be
    reordered: the caller must not rely on a hook that runs after all others."""
    hooks = commit_hooks(conn)
    if hooks is None:
        return False
    if len(hooks) >= 2 and hooks[-2][1] == func:
        hooks[-2], hooks[-1] = hooks[-1], hooks[-2]
        return True
    for index in range(len(hooks) - 1, -1, -1):
        if hooks[index][1] == func:
            hooks.append(hooks.pop(index))
            return True
    # Empty sids: no savepoint rollback may discard it; only a full rollback does.
    hooks.append((set(), func, True))
    return True

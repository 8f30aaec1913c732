"""The private parts of Django that broadcast_app uses, each in one place.

Every use here has a contract test (``tests/test_django_contracts.py``) that fails with
a clear message when Django changes it, and a public fallback that keeps events correct
(perhaps at some cost) when the private path is unavailable. docs/architecture.md
("Private Django APIs we use") says what each buys.
"""

from __future__ import annotations

from typing import Any

from django.db import models


def prefetched(instance: models.Model) -> dict[str, Any]:
    """The relations ``prefetch_related()`` loaded into ``instance``, by name.

    Django keeps them in ``instance._prefetched_objects_cache`` (undocumented). Without
    it, nothing counts as prefetched: a save with many-to-many fields is then read back
    at commit, a delete's event omits them.
    """
    cache = getattr(instance, "_prefetched_objects_cache", None)
    return cache if isinstance(cache, dict) else {}

"""The one place where broadcast_app relies on other libraries' private names or
undocumented behaviour.

Each such use is a *fast path*: it is taken only while ``BROADCAST_FAST_PATHS`` allows
it and a check against the installed library says it still holds; otherwise the code
around it takes a public path that keeps the same behaviour, only slower.
``tests/test_upstream_contracts.py`` pins each assumption on every supported version,
and docs/architecture.md ("Private APIs we use") says what each one buys.

Nothing outside this package imports a private name of another library.
"""

from __future__ import annotations

from ..conf import conf

#: every fast path, by the name ``BROADCAST_FAST_PATHS`` may list
FAST_PATHS = frozenset(
    {
        # channels: write websocket frames past channels' session middleware
        "session_send",
        # the ASGI server's send coroutine, run up to its first wait by hand
        "stepped_send",
        # the publish script publishes in channels-redis' group naming, shard and framing
        "script_publish",
        # channels-redis' per-channel queue, replaced to take events as they are read
        "direct_queue",
        # redis-py's Connection: one connection kept, write and read apart
        "raw_connection",
        # Django's LocMemCache: count the broadcast cache's entries
        "locmem_count",
        # channels' AsyncConsumer.__call__, done in the consumer's own task (no layer)
        "one_task",
    }
)


def enabled(name: str) -> bool:
    """Whether the settings allow fast path ``name`` (its own check still applies)."""
    if name not in FAST_PATHS:
        raise ValueError(f"no fast path is called {name!r}")
    allowed = conf.BROADCAST_FAST_PATHS
    return allowed is True or (allowed is not False and name in allowed)

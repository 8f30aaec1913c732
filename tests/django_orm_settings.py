"""Settings for Django's own test suite run with broadcast_app (see test_django_orm.py).

Django's ``tests/test_sqlite.py`` (importable: the runner puts the sdist's ``tests``
directory on ``sys.path``), plus a channel layer for the checks. Nothing reaches a
Redis: the suite runs under Django's test environment, where events are captured, not
published (``broadcast_app.transport.testenv``), and the host below refuses connections anyway.
"""

from test_sqlite import *  # type: ignore[import-not-found]  # noqa: F403

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        # Port 9 (discard) on loopback: a connection attempt fails at once.
        "CONFIG": {"hosts": ["redis://127.0.0.1:9/0"]},
    }
}
BROADCAST_ENABLED = True
BROADCAST_PUBLISH_IN_TESTS = False
BROADCAST_OUTBOX_RELAY = False

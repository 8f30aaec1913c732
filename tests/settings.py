"""Test settings: the demo project's, plus a test-only app."""

from project.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.testapp"]  # noqa: F405

# The suite's own tests publish to the redis-server its fixtures start (never to a real
# one); a user's tests publish nothing unless they set this (see broadcast_app.transport.testenv).
BROADCAST_PUBLISH_IN_TESTS = True

# Tests run relays themselves, at known points (and a thread querying the database
# would do so in tests that have none); instances (e2e) run the demo's settings.
BROADCAST_OUTBOX_RELAY = False

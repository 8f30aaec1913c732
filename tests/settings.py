"""Test settings: the demo project's, plus a test-only app."""

from project.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.testapp"]  # noqa: F405
# Tests run relays themselves, at known points (and a thread querying the database
# would do so in tests that have none); instances (e2e) run the demo's settings.
BROADCAST_OUTBOX_RELAY = False

"""The library tests' settings as a user's project has them: without
``BROADCAST_PUBLISH_IN_TESTS``, so that Django's test environment holds publishing back
(tests/test_testenv.py runs a user's test process on these)."""

from tests.settings import *  # noqa: F403

del BROADCAST_PUBLISH_IN_TESTS  # type: ignore[name-defined]  # noqa: F821

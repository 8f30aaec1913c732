"""Whether this process runs someone's tests, where events must not reach a real Redis.

Django's test runner and pytest-django both call
``django.test.utils.setup_test_environment()``, which installs the in-memory email
outbox (``django.core.mail.outbox``, a documented part of Django's test environment)
and ``teardown_test_environment()`` removes it: its presence is the public sign that
tests are running. There, changes are captured (``broadcast_app.testing`` sees every
event) but not published, unless ``BROADCAST_PUBLISH_IN_TESTS`` is True or a test asks
with ``capture_events(forward=True)``: a user's ``manage.py test`` must never write its
test rows into the Redis of running instances (their caches would serve them).
"""

from __future__ import annotations

from django.core import mail

from ..conf import conf

#: the module's namespace, tested for a key on every publish: hasattr() of a missing
#: attribute would raise and catch an AttributeError each time
_mail = vars(mail)


def held_back() -> bool:
    """True when events must stay in this process: tests run and did not opt in."""
    # The outbox test comes first: outside tests it is the only cost.
    return "outbox" in _mail and not conf.BROADCAST_PUBLISH_IN_TESTS

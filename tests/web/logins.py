"""Users logged in through the test client, for websockets that authenticate by the
session cookie (tests/web/test_access.py, tests/web/test_endpoint.py)."""

from __future__ import annotations

from django.contrib.auth.models import Permission, User
from django.test import Client


def viewer(username: str = "viewer") -> tuple[User, str]:
    """A user with testapp.view_product, logged in: the user and its session key."""
    user = User.objects.create_user(username, password="pw")
    user.user_permissions.add(Permission.objects.get(codename="view_product"))
    client = Client()
    assert client.login(username=username, password="pw")
    return user, client.cookies["sessionid"].value

"""An authentication backend whose user directory is unreachable (as an LDAP or SSO
backend is when its server is down): it logs users in, then cannot load them."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.backends import ModelBackend


class UnreachableBackend(ModelBackend):
    def get_user(self, user_id: Any) -> Any:
        raise ConnectionError("directory unreachable")

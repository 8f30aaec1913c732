"""A ``DATABASES`` entry tuned for development setups that run broadcast_app's parts
side by side: the demo's two server processes on one SQLite file, the tests' threads
(the publisher's, ``database_sync_to_async``'s), MySQL/MariaDB with several instances."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SQLITE = "django.db.backends.sqlite3"
MYSQL = "django.db.backends.mysql"


def tuned(parsed: Mapping[str, Any]) -> dict[str, Any]:
    """``parsed`` (as ``dj_database_url.parse`` returns it) with the options below;
    options it names itself win on MySQL, the journal and lock options on SQLite."""
    database = dict(parsed)
    if database["ENGINE"] == SQLITE:
        # IMMEDIATE transactions wait for the lock instead of failing with "database is
        # locked" when a read turns into a write; WAL lets readers and a writer of a
        # file database work at once.
        database["OPTIONS"] = {
            **database.get("OPTIONS", {}),
            "init_command": "PRAGMA journal_mode=WAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        }
    elif database["ENGINE"] == MYSQL:
        # 4-byte UTF-8 (utf8 is 3 bytes there), and READ COMMITTED, Django's default,
        # said out loud: the server's own, REPEATABLE READ, would keep a transaction
        # reading its first snapshot while other processes commit.
        database["OPTIONS"] = {
            "charset": "utf8mb4",
            "isolation_level": "read committed",
            **database.get("OPTIONS", {}),
        }
        database["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}
    return database

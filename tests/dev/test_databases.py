"""The development ``DATABASES`` entry (the demo's and the tests' settings use it)."""

from __future__ import annotations

import dj_database_url

from broadcast_app.dev.databases import tuned


def test_sqlite_waits_for_its_lock_in_wal_mode() -> None:
    options = tuned(dj_database_url.parse("sqlite:///x.sqlite3"))["OPTIONS"]
    assert options["transaction_mode"] == "IMMEDIATE"
    assert options["init_command"] == "PRAGMA journal_mode=WAL;"


def test_mysql_reads_committed_utf8mb4_unless_the_url_says_otherwise() -> None:
    database = tuned(dj_database_url.parse("mysql://root@127.0.0.1:3306/test"))
    assert database["OPTIONS"] == {"charset": "utf8mb4", "isolation_level": "read committed"}
    assert database["TEST"]["CHARSET"] == "utf8mb4"
    own = tuned({**dj_database_url.parse("mysql://h/d"), "OPTIONS": {"charset": "latin1"}})
    assert own["OPTIONS"]["charset"] == "latin1"


def test_postgresql_is_left_as_parsed() -> None:
    parsed = dj_database_url.parse("postgres://postgres@127.0.0.1:5432/test")
    assert tuned(parsed) == dict(parsed)

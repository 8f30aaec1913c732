"""channels-redis' outage tracebacks become one warning per window; the rest pass as is."""

from __future__ import annotations

import logging
import sys

import redis

from broadcast_app.transport.outage_log_filter import LOGGER, RedisOutageFilter, install


def record_of(error: BaseException) -> logging.LogRecord:
    try:
        raise error
    except BaseException:
        exc_info = sys.exc_info()
    return logging.LogRecord(
        LOGGER, logging.ERROR, __file__, 1, "Unexpected exception in receive task", (), exc_info
    )


def test_connection_errors_lose_their_traceback_and_repeat_rarely() -> None:
    quiet = RedisOutageFilter()
    first = record_of(redis.ConnectionError("Error 111 connecting to 127.0.0.1:1."))
    assert quiet.filter(first)
    assert (first.levelname, first.exc_info) == ("WARNING", None)
    assert "Error 111" in first.getMessage()
    # The same outage a second later: nothing.
    assert not quiet.filter(record_of(redis.ConnectionError("again")))


def test_other_errors_keep_their_traceback() -> None:
    quiet = RedisOutageFilter()
    other = record_of(KeyError("bug"))
    assert quiet.filter(other)
    assert other.levelname == "ERROR" and other.exc_info is not None


def test_the_listener_installs_it_once() -> None:
    install()
    install()
    filters = logging.getLogger(LOGGER).filters
    assert sum(isinstance(f, RedisOutageFilter) for f in filters) == 1

"""Turn channels-redis' per-second tracebacks during a Redis outage into rare warnings.

While Redis is unreachable, the pub/sub layer's receive task logs the same connection
error with a full traceback once a second until Redis answers again. The listener
already notices the outage and repairs the gap afterwards (see ``continuity``), so
those tracebacks say nothing new and bury everything else in the log. This filter keeps
other records untouched.
"""

from __future__ import annotations

import logging
import time

import redis

from ..upstream.channels_redis import PUBSUB_LOGGER

#: the channels-redis logger whose outage records are filtered
LOGGER = PUBSUB_LOGGER
_EVERY = 30.0  # seconds between two warnings about the same outage


class RedisOutageFilter(logging.Filter):
    """Drop the traceback of connection errors and let one warning pass per ``_EVERY`` s."""

    def __init__(self) -> None:
        super().__init__()
        self._last = -_EVERY

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, redis.ConnectionError | redis.TimeoutError | OSError):
            return True
        now = time.monotonic()
        if now - self._last < _EVERY:
            return False
        self._last = now
        record.msg, record.args = "Redis is unreachable, channels-redis retries: %s", (error,)
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def install() -> None:
    """Add the filter to channels-redis' logger (once per process)."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(f, RedisOutageFilter) for f in logger.filters):
        logger.addFilter(RedisOutageFilter())

"""The transport's interface (transport/interface.py) and its Redis implementation."""

from __future__ import annotations

from broadcast_app.publish.publisher import Publisher
from broadcast_app.transport.interface import PublishingTransport, ReadingTransport
from broadcast_app.transport.log_reader import EventLog, event_log
from broadcast_app.transport.redis_transport import RedisTransport


def test_redis_implements_the_transport_interface() -> None:
    assert isinstance(RedisTransport(), PublishingTransport)
    assert isinstance(EventLog(), ReadingTransport)
    assert isinstance(event_log, ReadingTransport)


def test_the_publisher_sends_through_a_transport() -> None:
    publisher = Publisher()
    assert isinstance(publisher.transport, RedisTransport)
    assert publisher.transport.lost == set()

"""The throwaway redis-server: its ports, and that the server it reports is its own."""

from __future__ import annotations

import pytest

from broadcast_app.dev import embedded_redis
from broadcast_app.dev.embedded_redis import EmbeddedRedis, _ephemeral_range, free_port


def test_free_port_never_hands_out_a_port_twice() -> None:
    # Several are taken before any is bound (a Sentinel setup takes five).
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)


def test_free_ports_are_below_the_ephemeral_range() -> None:
    # A port an outgoing connection may take as its local port between the choice and the
    # server's bind made a cluster node exit at start (CI, once).
    low, _high = _ephemeral_range()
    assert all(20000 <= free_port() < low for _ in range(50))


def test_no_free_port_left_is_an_error_not_a_port_in_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    low, _high = _ephemeral_range()
    every = set(range(20000, low))
    monkeypatch.setattr(embedded_redis, "_handed_out", every)
    with pytest.raises(RuntimeError, match="no free TCP port"):
        free_port()
    assert embedded_redis._handed_out == set(range(20000, low))


def test_a_port_another_server_holds_is_an_error_not_a_server_of_ours() -> None:
    with EmbeddedRedis() as first:
        second = EmbeddedRedis(first.port)
        # Before, a PONG from the first made the second look started.
        with pytest.raises(RuntimeError, match=f"port {first.port}"):
            second.start()
        assert second.process is None  # stopped, nothing left running
        assert first.process is not None  # the first one still serves its port
        assert first._answering_pid() == first.process.pid


def test_a_server_that_exits_at_start_leaves_nothing_behind() -> None:
    # The other way the test above can go (ours exits before the first answers): a server
    # that cannot start (an option it refuses) is reported and leaves no process or directory.
    server = EmbeddedRedis(None, "--no-such-option", "yes")
    with pytest.raises(RuntimeError, match=f"exited with 1 on port {server.port}"):
        server.start()
    assert server.process is None
    assert server._dir is None

"""The websocket server's frame limit: read from known servers' command lines, warned about."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from broadcast_app.web import server_limits
from broadcast_app.web.server_limits import server_limit_problem, ws_max_size
from tests.e2e_support import Instance, subprocess_env


def test_the_limit_given_to_servers_is_the_protocols_with_a_margin() -> None:
    assert ws_max_size() == 4 * 4096
    with override_settings(BROADCAST_MAX_FRAME_BYTES=1000):
        assert ws_max_size() == 4000


@pytest.mark.parametrize(
    ("argv", "warned"),
    [
        (["/venv/bin/uvicorn", "mysite.asgi:application"], True),  # 16 MiB default
        (["/venv/lib/uvicorn/__main__.py", "app", "--ws-max-size", "16384"], False),
        (["/venv/bin/uvicorn", "app", "--ws-max-size=16777216"], True),
        (["/venv/bin/uvicorn", "app", "--ws-max-size", "65536"], False),  # 16x: not "far"
        (["/venv/bin/daphne", "mysite.asgi:application"], True),  # 1 MiB default
        (["/venv/bin/daphne", "--websocket-max-message-size", "16384", "app"], False),
        (["/venv/bin/uvicorn", "app", "--ws-max-size", "lots"], False),  # uvicorn refuses it
        (["/venv/bin/hypercorn", "app"], False),  # unknown: an info line instead
        ([], False),
    ],
)
def test_known_servers_that_allow_far_larger_frames_are_named(
    argv: list[str], warned: bool
) -> None:
    problem = server_limit_problem(argv)
    assert (problem is not None) == warned
    if problem:
        assert str(ws_max_size()) in problem


def test_check_server_warns_once_or_says_what_to_configure(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="broadcast_app.web.server_limits")
    monkeypatch.setattr(server_limits, "_checked", False)
    server_limits.check_server(["/venv/bin/uvicorn", "app"])
    server_limits.check_server(["/venv/bin/uvicorn", "app"])
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "--ws-max-size 16384" in caplog.records[0].getMessage()
    caplog.clear()
    monkeypatch.setattr(server_limits, "_checked", False)
    server_limits.check_server(["/venv/bin/granian", "app"])
    assert [r.levelname for r in caplog.records] == ["INFO"]
    assert "about 16384" in caplog.records[0].getMessage()


@pytest.mark.e2e
def test_a_real_uvicorn_instance_says_at_startup_when_its_limit_is_far_too_large(
    redis_server: Any, tmp_path: Path
) -> None:
    env = subprocess_env(
        REDIS_URL=redis_server.url, DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}"
    )
    default = Instance("default", env, tmp_path)
    capped = Instance("capped", env, tmp_path, uvicorn_args=("--ws-max-size", "16384"))
    try:
        default.start()
        capped.start()
    finally:
        default.stop()
        capped.stop()
    # Started as `python -m uvicorn` without --ws-max-size: 16 MiB, and the fix named.
    warning = "uvicorn accepts websocket messages of up to 16777216 bytes"
    assert warning in default.log_text()
    assert f"--ws-max-size {ws_max_size()}" in default.log_text()
    assert "accepts websocket messages" not in capped.log_text()

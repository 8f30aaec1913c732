"""conf.py: settings read once until they change; the instance id per process."""

from __future__ import annotations

import os
import socket

import pytest
from django.test import override_settings

from broadcast_app import conf as conf_module
from broadcast_app.conf import conf


def test_instance_id_follows_setting_environment_and_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    default = f"{socket.gethostname()}:{os.getpid()}"
    monkeypatch.delenv("BROADCAST_INSTANCE_ID", raising=False)
    conf_module.forget()
    assert default == conf.BROADCAST_INSTANCE_ID
    with override_settings(BROADCAST_INSTANCE_ID="from-settings"):
        assert conf.BROADCAST_INSTANCE_ID == "from-settings"
    assert default == conf.BROADCAST_INSTANCE_ID
    monkeypatch.setenv("BROADCAST_INSTANCE_ID", "from-env")
    conf_module.forget()  # the environment is read once, like the settings
    assert conf.BROADCAST_INSTANCE_ID == "from-env"
    monkeypatch.delenv("BROADCAST_INSTANCE_ID")
    conf_module.forget()


def test_a_forked_child_has_its_own_default_instance_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BROADCAST_INSTANCE_ID", raising=False)
    conf_module.forget()
    parent = conf.BROADCAST_INSTANCE_ID  # remembered in this process
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once, whatever happens
        try:
            os.write(write, conf.BROADCAST_INSTANCE_ID.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    assert parent.endswith(f":{os.getpid()}")
    assert child == f"{socket.gethostname()}:{pid}"

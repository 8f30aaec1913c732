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


# Forking is what a pre-forking server does to the process under test; Python 3.12+
# warns that threads (here pytest's, the publisher's) do not follow into the child,
# which is fine: the child only reads a setting and leaves.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
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


def test_each_property_reads_its_default_from_the_table() -> None:
    from broadcast_app.conf import SETTINGS, Settings

    properties = {name for name, member in vars(Settings).items() if isinstance(member, property)}
    assert properties == set(SETTINGS)
    for name, setting in SETTINGS.items():
        assert getattr(Settings, name).__doc__ == setting.meaning
    with override_settings():
        from django.conf import settings

        for name, setting in SETTINGS.items():
            if setting.default is None or hasattr(settings, name):
                continue  # None: resolved at use (the instance id); set: not the default
            value = getattr(conf, name)
            assert value == setting.default, name


def test_override_settings_is_read_and_forgotten() -> None:
    before = conf.BROADCAST_QUEUE_SIZE
    with override_settings(BROADCAST_QUEUE_SIZE=7):
        assert conf.BROADCAST_QUEUE_SIZE == 7
    assert before == conf.BROADCAST_QUEUE_SIZE


def _readme_settings() -> dict[str, str]:
    """The README's configuration table: setting -> its default as written."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(BROADCAST_[A-Z_]+)` \| (.+?) \| ", section, flags=re.M)
    assert rows, "the README's configuration table was not found"
    return dict(rows)


def _as_written(value: object) -> str:
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value}`"


def test_readme_table_lists_every_setting_with_its_default() -> None:
    from broadcast_app.conf import SETTINGS

    readme = _readme_settings()
    assert list(readme) == list(SETTINGS)  # same settings, same order
    for name, setting in SETTINGS.items():
        assert readme[name] == (setting.shown or _as_written(setting.default)), name

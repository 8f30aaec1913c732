"""System checks: each misconfiguration gets its own id and a hint."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from django.test import override_settings

from broadcast_app import checks
from broadcast_app.conf import SETTINGS, Settings
from broadcast_app.transport import cluster


def ids(messages: list[Any]) -> list[str]:
    assert all(m.hint for m in messages)
    return [m.id for m in messages]


def test_project_settings_pass() -> None:
    assert checks.check_channel_layer(None) == []
    assert checks.check_cache(None) == []
    assert checks.check_registry(None) == []
    assert checks.check_numbers(None) == []
    assert checks.check_delivery(None) == []
    assert checks.check_limits(None) == []
    assert checks.check_flags(None) == []
    assert checks.check_text(None) == []
    assert checks.check_frame_burst(None) == []
    assert checks.check_presence_user(None) == []


@override_settings(BROADCAST_FRAME_BURST=100, BROADCAST_MAX_SUBSCRIPTIONS=100)
def test_a_frame_burst_a_full_resubscription_would_exceed_is_w021() -> None:
    messages = checks.check_frame_burst(None)
    assert ids(messages) == ["broadcast_app.W021"]
    assert "BROADCAST_MAX_SUBSCRIPTIONS (100)" in messages[0].msg


@override_settings(BROADCAST_FRAME_BURST=0)
def test_an_invalid_frame_burst_is_left_to_e006() -> None:
    assert checks.check_frame_burst(None) == []
    assert "broadcast_app.E006" in ids(checks.check_numbers(None))


@override_settings(BROADCAST_CHANNEL_LAYER="missing")
def test_missing_layer_alias_is_e001() -> None:
    assert ids(checks.check_channel_layer(None)) == ["broadcast_app.E001"]


@override_settings(
    CHANNEL_LAYERS={"default": {"BACKEND": "channels_redis.core.RedisChannelLayer"}}
)
def test_core_layer_is_e002() -> None:
    assert ids(checks.check_channel_layer(None)) == ["broadcast_app.E002"]


@pytest.mark.parametrize(
    "config",
    [{"symmetric_encryption_keys": ["k"]}, {"serializer_format": "pickle"}],
)
def test_unpublishable_layer_config_is_e003(config: dict[str, Any]) -> None:
    layers = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"], **config},
        }
    }
    with override_settings(CHANNEL_LAYERS=layers):
        assert ids(checks.check_channel_layer(None)) == ["broadcast_app.E003"]


@override_settings(BROADCAST_CACHE_ALIAS="nope")
def test_missing_cache_alias_is_e004() -> None:
    assert ids(checks.check_cache(None)) == ["broadcast_app.E004"]


def test_unknown_registered_field_is_e005(reregister: Any) -> None:
    reregister(exclude=["cost_price", "no_such_field"])
    messages = checks.check_registry(None)
    assert ids(messages) == ["broadcast_app.E005"]
    assert "no_such_field" in messages[0].msg


def _numeric_settings() -> set[str]:
    """Every setting that conf.py reads as a number (by its property's return type)."""
    return {
        name
        for name, member in vars(Settings).items()
        if isinstance(member, property)
        and member.fget is not None
        and {"int", "float"} & set(str(member.fget.__annotations__["return"]).split(" | "))
    }


def test_every_numeric_setting_is_checked() -> None:
    numeric = _numeric_settings()
    assert len(numeric) >= 20  # the test reads conf.py as intended
    assert numeric == set(checks.POSITIVE) | {
        "BROADCAST_CACHE_TIMEOUT",
        "BROADCAST_LOG_MAX_AGE",
        "BROADCAST_DELETE_CHUNK_SIZE",
    }


@pytest.mark.parametrize("value", [0, -1, "0", -0.5])
@pytest.mark.parametrize("name", checks.POSITIVE)
def test_zero_and_negative_are_e006(name: str, value: Any) -> None:
    with override_settings(**{name: value}):
        messages = checks.check_numbers(None)
    assert ids(messages) == ["broadcast_app.E006"]
    assert name in messages[0].msg


@pytest.mark.parametrize(
    "value", ["x", None, [1], True, float("inf"), float("nan"), 10**400, "1e400"]
)
@pytest.mark.parametrize(
    "name", ["BROADCAST_QUEUE_SIZE", "BROADCAST_REDIS_TIMEOUT", "BROADCAST_CONFIRM_TIMEOUT"]
)
def test_what_is_not_a_finite_number_is_e006_not_a_traceback(name: str, value: Any) -> None:
    with override_settings(**{name: value}):
        messages = checks.check_numbers(None)
    assert ids(messages) == ["broadcast_app.E006"]
    assert name in messages[0].msg


@pytest.mark.parametrize(
    ("name", "value"), [("BROADCAST_QUEUE_SIZE", "20"), ("BROADCAST_REDIS_TIMEOUT", 2)]
)
def test_numbers_given_as_other_types_pass(name: str, value: Any) -> None:
    with override_settings(**{name: value}):
        assert checks.check_numbers(None) == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BROADCAST_CACHE_TIMEOUT", 0),
        ("BROADCAST_CACHE_TIMEOUT", -1),
        ("BROADCAST_CACHE_TIMEOUT", float("inf")),
        ("BROADCAST_CACHE_TIMEOUT", True),
        ("BROADCAST_DELETE_CHUNK_SIZE", 0),
        ("BROADCAST_DELETE_CHUNK_SIZE", -1000),
        ("BROADCAST_DELETE_CHUNK_SIZE", 0.5),
        ("BROADCAST_LOG_MAX_AGE", -1),
        ("BROADCAST_LOG_MAX_AGE", "x"),
        ("BROADCAST_LOG_MAX_AGE", None),
        ("BROADCAST_LOG_MAX_AGE", float("nan")),
        ("BROADCAST_LOG_MAX_AGE", 10**400),
    ],
)
def test_negative_limits_are_e010(name: str, value: Any) -> None:
    with override_settings(**{name: value}):
        messages = checks.check_limits(None)
    assert ids(messages) == ["broadcast_app.E010"]
    assert name in messages[0].msg


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BROADCAST_CACHE_TIMEOUT", None),
        ("BROADCAST_LOG_MAX_AGE", 0),
        ("BROADCAST_DELETE_CHUNK_SIZE", None),
        ("BROADCAST_DELETE_CHUNK_SIZE", 500),
    ],
)
def test_documented_zero_and_none_pass(name: str, value: Any) -> None:
    with override_settings(**{name: value}):
        assert checks.check_limits(None) == []


@pytest.mark.parametrize("mode", ["outbox", "best_effort"])
def test_delivery_modes_pass(mode: str) -> None:
    with override_settings(BROADCAST_DELIVERY=mode):
        assert checks.check_delivery(None) == []


@override_settings(BROADCAST_DELIVERY="at_least_once")
def test_unknown_delivery_mode_is_e007() -> None:
    messages = checks.check_delivery(None)
    assert ids(messages) == ["broadcast_app.E007"]
    assert "at_least_once" in messages[0].msg


def test_check_ids_are_unique() -> None:
    import re
    from pathlib import Path

    package = Path(checks.__file__).parent
    found = [
        check_id
        for module in sorted(package.glob("*.py"))
        for check_id in re.findall(r'id="(broadcast_app\.[EW]\d{3})"', module.read_text())
    ]
    assert len(found) == len(set(found)) >= 8


@pytest.mark.parametrize(
    "value", [["session_send", "no_such_path"], "session_send", 5, [["nested"]]]
)
def test_fast_paths_of_unknown_names_or_shape_are_e011(value: Any, settings: Any) -> None:
    from broadcast_app.checks import check_fast_paths

    settings.BROADCAST_FAST_PATHS = value
    assert [error.id for error in check_fast_paths(None)] == ["broadcast_app.E011"]


@pytest.mark.parametrize("value", [True, False, [], ["session_send", "direct_queue"]])
def test_fast_paths_of_known_names_pass(value: Any, settings: Any) -> None:
    from broadcast_app.checks import check_fast_paths

    settings.BROADCAST_FAST_PATHS = value
    assert check_fast_paths(None) == []


def _broadcast_checks() -> list[Any]:
    from django.core.checks.registry import registry

    return [check for check in registry.registered_checks if check.__module__ == checks.__name__]


class _Hostile:
    """A value no setting accepts (not a bool, string, number, name or collection)."""

    def __repr__(self) -> str:
        return "<hostile>"


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_every_setting_is_validated(name: str) -> None:
    # conf.SETTINGS is the one list of settings: each kind has its check id, and a value
    # no kind accepts is reported under that id, naming the setting (not a traceback).
    expected = checks.CHECK_OF_KIND[SETTINGS[name].kind]
    with override_settings(**{name: _Hostile()}):
        messages = [m for check in _broadcast_checks() for m in check(app_configs=None)]
    assert expected in [m.id for m in messages if name in m.msg]
    assert all(m.hint for m in messages)


@pytest.mark.parametrize("value", ["False", 0, 1, None])
@pytest.mark.parametrize("name", [n for n, s in SETTINGS.items() if s.kind == "flag"])
def test_flags_that_are_not_bools_are_e012(name: str, value: Any) -> None:
    with override_settings(**{name: value}):
        messages = checks.check_flags(None)
    assert ids(messages) == ["broadcast_app.E012"]
    assert name in messages[0].msg


@pytest.mark.parametrize("value", [5, ["default"], b"default"])
@pytest.mark.parametrize(
    "name", [n for n, s in SETTINGS.items() if s.kind in ("text", "instance_id")]
)
def test_text_that_is_not_a_string_is_e013(name: str, value: Any) -> None:
    with override_settings(**{name: value}):
        messages = checks.check_text(None)
    assert ids(messages) == ["broadcast_app.E013"]
    assert name in messages[0].msg


def test_instance_id_of_none_passes() -> None:
    with override_settings(BROADCAST_INSTANCE_ID=None):
        assert checks.check_text(None) == []


@pytest.mark.parametrize(
    "value",
    ["broadcast_app.instance.presence.no_such_hook", "nodots", "broadcast_app.conf.conf", 5],
)
def test_presence_user_hook_that_is_not_a_callable_is_e030(value: Any, settings: Any) -> None:
    settings.BROADCAST_PRESENCE_USER = value
    messages = checks.check_presence_user(None)
    assert ids(messages) == ["broadcast_app.E030"]


@pytest.mark.parametrize(
    "value", ["broadcast_app.instance.presence.default_user", lambda user: {}]
)
def test_presence_user_hook_that_is_a_callable_passes(value: Any, settings: Any) -> None:
    settings.BROADCAST_PRESENCE_USER = value
    assert checks.check_presence_user(None) == []


@pytest.mark.parametrize(
    "name",
    [
        "BROADCAST_FILTER_MAX_CONDITIONS",
        "BROADCAST_FILTER_MAX_VALUES",
        "BROADCAST_FILTER_MAX_TEXT",
        "BROADCAST_SNAPSHOT_MAX_ROWS",
        "BROADCAST_SNAPSHOT_MAX_SCAN",
    ],
)
def test_filter_and_snapshot_limits_are_positive_numbers(name: str) -> None:
    with override_settings(**{name: 0}):
        assert ids(checks.check_numbers(None)) == ["broadcast_app.E006"]
    with override_settings(**{name: 3}):
        assert checks.check_numbers(None) == []


@pytest.mark.parametrize(
    ("version", "problem"),
    [("5.3.0", True), ("7.4.2", True), ("8.0.0", False), ("8.2.1", False), ("9.0.0b1", False)],
)
def test_redis_py_before_8_cannot_serve_a_cluster(version: str, problem: bool) -> None:
    assert (cluster.client_problem(version) is not None) == problem


def test_a_cluster_with_the_installed_redis_py_is_checked() -> None:
    # The declared floor (redis-py 5.3) lacks the asyncio sharded pub/sub the cluster
    # listener subscribes with: there, a well-formed cluster setting is E015.
    old = int(redis.__version__.split(".")[0]) < 8
    with override_settings(BROADCAST_REDIS_CLUSTER=["127.0.0.1:7000"]):
        messages = checks.check_cluster(None)
    assert [m.id for m in messages] == (["broadcast_app.E015"] if old else [])
    assert all("redis>=8" in (m.hint or "") for m in messages)

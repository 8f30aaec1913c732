"""The package's shape: no import cycles, a lazy public API, a light startup."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import broadcast_app

PACKAGE = Path(broadcast_app.__file__).resolve().parent
ROOT = PACKAGE.parent

#: Import edges (importer, imported) left in place on purpose. Each closes a cycle that
#: cannot go yet; the test still fails on any other cycle, and on a listed edge that no
#: longer exists (so the list only shrinks).
ALLOWED_EDGES: set[tuple[str, str]] = set()


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: at module level, in functions and classes,
    but not under ``if TYPE_CHECKING:`` (read by type checkers only, never executed)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in it, see ``_imports``)."""
    modules = _module_names()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1])
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                # ``from . import cache`` imports the submodule; ``from .x import y`` x.
                candidates = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            for target in candidates:
                # Importing a.b.c runs the __init__ of a.b first (the root's is lazy).
                parts = target.split(".")
                for end in range(2, len(parts) + 1):
                    prefix = ".".join(parts[:end])
                    if prefix in modules:
                        targets.add(prefix)
                if target in modules:
                    targets.add(target)
        targets.discard(name)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _describe(graph: dict[str, set[str]], component: list[str]) -> str:
    members = set(component)
    return "; ".join(f"{name} -> {', '.join(sorted(graph[name] & members))}" for name in component)


def test_the_graph_sees_imports_inside_functions() -> None:
    graph = import_graph()
    # registry.register() imports capture and bulk inside the function.
    assert {"broadcast_app.capture.receivers", "broadcast_app.capture.bulk"} <= graph[
        "broadcast_app.capture.registry"
    ]
    # the parent too
    assert "broadcast_app.upstream" in graph["broadcast_app.transport.redis_transport"]
    assert len(graph) >= 40


def test_no_import_cycles_inside_the_package() -> None:
    graph = import_graph()
    for importer, imported in ALLOWED_EDGES:
        assert imported in graph[importer], f"allowed edge gone, drop it: {importer}"
        graph[importer] = graph[importer] - {imported}
    found = cycles(graph)
    assert not found, "import cycles: " + " | ".join(_describe(graph, c) for c in found)


#: The stages of a change's life, and the stages each may import: arrows point one way
#: (web -> instance -> transport <- publish <- capture, every stage -> events). The
#: top-level modules (conf, stats, signals, models, django_compat, upstream) serve all.
LAYERS = {
    "events": set(),
    "transport": {"events"},
    "publish": {"transport", "events"},
    "capture": {"publish", "transport", "events"},
    "instance": {"transport", "events"},
    "web": {"instance", "transport", "events"},
    "dev": set(),
}

#: Edges across stages outside ``LAYERS``, each with its reason.
ALLOWED_CROSSINGS = {
    # The runtime owns an instance's background work, the in-process outbox relay
    # thread included: it starts and stops it.
    ("broadcast_app.instance.runtime", "broadcast_app.publish.relay"),
    ("broadcast_app.instance.runtime", "broadcast_app.publish"),
}


def _stage(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_imports_follow_the_path_of_a_change() -> None:
    crossings = set()
    for importer, targets in import_graph().items():
        stage = _stage(importer)
        if stage is None:
            continue
        for target in targets:
            other = _stage(target)
            if other is not None and other != stage and other not in LAYERS[stage]:
                crossings.add((importer, target))
    assert crossings == ALLOWED_CROSSINGS


def test_a_cycle_is_found_and_named() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert _describe(graph, ["a", "b", "c"]) == "a -> b; b -> c; c -> a"


def test_the_embedded_redis_launcher_is_imported_by_no_runtime_module() -> None:
    importers = [
        name
        for name, targets in import_graph().items()
        if "broadcast_app.dev.embedded_redis" in targets
    ]
    assert importers == []


def _run(code: str, settings: str | None = None) -> dict[str, list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    if settings:
        env["DJANGO_SETTINGS_MODULE"] = settings
    report = (
        "import json, sys; print(json.dumps(sorted(m for m in sys.modules"
        " if m.split('.')[0] in ('broadcast_app', 'redis', 'channels_redis'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", f"{code}\n{report}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    return {
        "package": [m for m in loaded if m.startswith("broadcast_app")],
        "clients": [m for m in loaded if not m.startswith("broadcast_app")],
    }


def test_importing_the_package_imports_nothing_else() -> None:
    loaded = _run("import broadcast_app")
    assert loaded == {"package": ["broadcast_app"], "clients": []}


def test_the_public_api_is_small_and_loads_on_first_use() -> None:
    assert sorted(broadcast_app.__all__) == [
        "AlreadyRegistered",
        "ModelConfig",
        "NotRegistered",
        "__version__",
        "publish_changes",
        "register",
        "unregister",
    ]
    from broadcast_app.capture import bulk, registry
    from broadcast_app.events import model_configs

    assert broadcast_app.register is registry.register
    assert broadcast_app.unregister is registry.unregister
    assert broadcast_app.publish_changes is bulk.publish_changes
    assert broadcast_app.ModelConfig is model_configs.ModelConfig is registry.ModelConfig
    assert broadcast_app.NotRegistered is registry.NotRegistered
    assert issubclass(broadcast_app.NotRegistered, LookupError)
    assert broadcast_app.AlreadyRegistered is registry.AlreadyRegistered
    assert set(broadcast_app.__all__) <= set(dir(broadcast_app))
    with pytest.raises(AttributeError, match="no_such_name"):
        broadcast_app.no_such_name  # noqa: B018


def test_names_keep_their_old_homes() -> None:
    # Moved to break import cycles; importable where they were.
    from broadcast_app.capture.outbox import LostEvents, from_payload, spill_events, to_payload
    from broadcast_app.capture.registry import all_configs, configs_for
    from broadcast_app.capture.registry import get_config as old_get_config
    from broadcast_app.events.model_configs import get_config
    from broadcast_app.instance.runtime import Backoff
    from broadcast_app.instance.status import STARTED_AT, cache_entries, instance_figures
    from broadcast_app.publish.outbox_rows import spill_events as spill

    assert old_get_config is get_config and spill is spill_events
    assert all(
        callable(thing)
        for thing in (all_configs, configs_for, LostEvents, from_payload, to_payload, Backoff)
    )
    assert STARTED_AT > 0 and callable(cache_entries) and callable(instance_figures)


@pytest.mark.slow
def test_django_setup_loads_the_saving_side_only() -> None:
    # tests.settings registers models in a ready(): what every project's setup does.
    # Nothing of an instance's (listener, runtime, channels-redis), no development
    # helper, and no Redis client: redis-py comes with the first client the publisher
    # thread makes (see the next test).
    loaded = _run("import django; django.setup()", settings="tests.settings")
    assert "broadcast_app.capture.receivers" in loaded["package"]  # the test reads a real setup
    instance_side = {
        "broadcast_app.instance.listener",
        "broadcast_app.instance.runtime",
        "broadcast_app.instance.heartbeat",
        "broadcast_app.publish.relay",
        "broadcast_app.web.consumers",
        "broadcast_app.instance.status",
        "broadcast_app.dev.embedded_redis",
    }
    assert instance_side.isdisjoint(loaded["package"])
    assert loaded["clients"] == []
    # Today's count (38 modules: the Redis transport, its interface, the outage buffer,
    # coalescing and the events' wire form are modules of their own; plus the
    # docstring-only __init__ of the six stage subpackages: 44; plus the public entry
    # points admin (admin autodiscovery) and cache (the test app's views): 46; plus
    # transport.cluster, the names on a Redis Cluster, which routes and checks read: 47);
    # a jump means something heavy joined the startup path.
    assert len(loaded["package"]) <= 47, loaded["package"]


_FIRST_SAVE = """
import sys, threading
importers = []

class Recorder:
    def find_spec(self, name, path=None, target=None):
        if name == "redis":
            importers.append(threading.current_thread().name)
        return None

sys.meta_path.insert(0, Recorder())
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from broadcast_app.publish import publisher
from tests.testapp.models import Note
Note.objects.create(text="first")
in_saving_thread = list(importers)
assert publisher.flush(10), "the publisher did not publish the first save"
print("IMPORTERS", in_saving_thread, importers)
"""


@pytest.mark.slow
def test_the_first_save_leaves_the_redis_import_to_the_publisher_thread(
    tmp_path: Path, redis_server: Any
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        REDIS_URL=redis_server.url,
    )
    result = subprocess.run(
        [sys.executable, "-c", _FIRST_SAVE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("IMPORTERS"))
    in_saving_thread, importers = (ast.literal_eval(part) for part in _split(line))
    assert in_saving_thread == []  # save() returned without importing redis-py
    assert importers and "MainThread" not in importers  # the publisher thread did


def _split(line: str) -> list[str]:
    # "IMPORTERS [..] [..]": two Python lists of thread names
    rest = line.removeprefix("IMPORTERS ").strip()
    first_end = rest.index("]") + 1
    return [rest[:first_end], rest[first_end:].strip()]

"""Run Django's own test suite (``runtests.py`` of an sdist) with every model of the
test apps either registered with broadcast_app or given bare no-op receivers
(post_save, post_delete, and m2m_changed of their many-to-many fields).

    python -m tests.django_orm_runner broadcast|noop <sdist tests dir> [runtests args]

``runtests.py`` installs the test apps itself, after loading the settings: the apps
registry's first ``set_installed_apps()`` call (runtests' own) is where broadcast_app
is added and the models are registered, before any test runs.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Any


def _noop(**kwargs: Any) -> None:
    """What any project's post_save/post_delete receiver costs Django at least."""


def _hook(mode: str, labels: set[str]) -> None:
    from django.apps import apps
    from django.apps.registry import Apps
    from django.db.models.signals import m2m_changed, post_delete, post_save

    original = Apps.set_installed_apps
    done = False

    def set_installed_apps(self: Apps, installed: Any) -> None:
        nonlocal done
        if done or self is not apps:
            original(self, installed)
            return
        done = True
        installed = list(installed)
        if mode == "broadcast":
            installed.append("broadcast_app")
        original(self, installed)
        models = [
            m
            for m in apps.get_models(include_auto_created=False)
            if m._meta.app_label in labels and not m._meta.proxy
        ]
        if mode == "broadcast":
            import broadcast_app

            for model in models:
                broadcast_app.register(model)
        else:
            for model in models:
                post_save.connect(_noop, sender=model, weak=False)
                post_delete.connect(_noop, sender=model, weak=False)
                # Any m2m_changed receiver makes Django give up its fast add().
                for f in model._meta.local_many_to_many:
                    m2m_changed.connect(_noop, sender=f.remote_field.through, weak=False)
        print(f"django_orm_runner: {mode}: {len(models)} models", file=sys.stderr)

    Apps.set_installed_apps = set_installed_apps  # type: ignore[method-assign]


def main(argv: list[str]) -> None:
    mode, tests_dir, *args = argv
    if mode not in ("broadcast", "noop"):
        raise SystemExit(f"mode must be broadcast or noop, not {mode!r}")
    labels = {a for a in args if not a.startswith("-")}
    sys.path.insert(0, tests_dir)
    _hook(mode, labels)
    script = str(Path(tests_dir) / "runtests.py")
    sys.argv = [script, "--settings=tests.django_orm_settings", *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])

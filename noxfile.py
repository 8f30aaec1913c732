"""CI's compatibility matrix, as nox sessions: each combination below gets a fresh
virtualenv with the test requirements (requirements.txt less the lint/type/browser
tools), its own versions of the stack on top, and runs the compatibility tier: the
fast tier (``-m "not slow"``, the upstream contract tests among it) and the slow tests
whose subject is a dependency's behaviour (:data:`VERSION_SENSITIVE`: Django's own ORM
tests, the four ASGI servers, the demo end to end, Sentinel and Redis Cluster through
redis-py). SQLite only: the pinned environment (``.ci/run``) runs the whole suite,
browser tier included, on the three databases.

    nox                        # every combination
    nox -s py312-dj60          # one, by name
    nox -l                     # the list

Interpreters are pyenv's (``pyenv root``/versions/X.Y.*), else ``pythonX.Y`` on PATH
when it runs: pyenv's shims are on PATH for every version but fail for those not
selected, so nox is handed the interpreter's path.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
#: outside the tree (ruff and pytest must not walk into them), one directory per
#: checkout (two checkouts' runs on one machine must not share virtualenvs)
nox.options.envdir = str(Path(tempfile.gettempdir()) / f"broadcast_app-nox-{ROOT.name}")
nox.options.error_on_missing_interpreters = True
nox.options.download_python = "never"  # a missing interpreter fails its session
# Matrix runs are on SQLite: a DATABASE_URL of the caller's must not reach the sessions.
os.environ.pop("DATABASE_URL", None)

#: name, Python version, the versions pinned on top of requirements.txt
COMBOS: list[tuple[str, str, dict[str, str]]] = [
    ("py312-dj60", "3.12", {"Django": "6.0.10"}),
    ("py313-dj61", "3.13", {"Django": "6.1.3", "redis": "8.2.0"}),
    # The floors pyproject.toml declares.
    (
        "py311-dj52-lowest",
        "3.11",
        {"Django": "5.2", "channels": "4.0.0", "channels-redis": "4.2.1", "redis": "5.3.0"},
    ),
]
#: requirements.txt lines left out: tools only the pinned environment runs, and the
#: MySQL driver (it compiles; the matrix runs on SQLite)
SKIPPED = {"playwright", "ruff", "mypy", "django-stubs", "mysqlclient"}
#: pytest, stopping at the first failure
PYTEST = ["-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
#: the slow tests that exercise a dependency's own behaviour (the other slow ones,
#: faults, stress and timing, hold the same on every combination and run pinned)
VERSION_SENSITIVE = [
    "tests/test_django_orm.py",  # Django's ORM tests with the package
    "tests/demo/test_servers.py",  # uvicorn, daphne, hypercorn, granian
    "tests/demo/test_e2e.py",  # the demo's instances end to end
    "tests/instance/test_sentinel.py",  # redis-py's Sentinel client
    "tests/transport/test_cluster.py",  # redis-py's cluster client
    "tests/instance/test_cluster_listener.py",
    "tests/demo/test_e2e_cluster.py",
]


def interpreter(version: str) -> str:
    """A path to a working Python ``version`` (pyenv's first), else ``version`` itself
    (nox then reports the interpreter missing, which fails the session)."""
    root = os.environ.get("PYENV_ROOT") or _pyenv_root()
    candidates = sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}"))
    found = shutil.which(f"python{version}")
    if found:
        candidates.append(found)
    for candidate in candidates:
        if subprocess.run([candidate, "-V"], capture_output=True, check=False).returncode == 0:
            return candidate
    return version


def _pyenv_root() -> str:
    pyenv = shutil.which("pyenv")
    if pyenv:
        done = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    return str(Path.home() / ".pyenv")


def requirements(pins: dict[str, str]) -> list[str]:
    """requirements.txt as pip arguments, less :data:`SKIPPED`, with ``pins`` instead of
    the versions it names."""
    lines = []
    overridden = {name.lower() for name in pins} | SKIPPED
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = line.split("==", 1)[0].split("[", 1)[0].strip().lower()
        if name not in overridden:
            lines.extend(line.split())  # "-e ." is two arguments
    return lines + [f"{name}=={version}" for name, version in pins.items()]


def _define(name: str, version: str, pins: dict[str, str]) -> None:
    def combination(session: nox.Session) -> None:
        session.install(*requirements(pins))
        # The Redis Cluster transport needs redis-py 8 (its async sharded pub/sub).
        without = " and not cluster" if int(pins.get("redis", "8").split(".")[0]) < 8 else ""
        session.run("python", *PYTEST, "-m", "not slow" + without)
        session.run("python", *PYTEST, "-m", "not browser" + without, *VERSION_SENSITIVE)

    combination.__doc__ = f"Python {version}, {pins}: the compatibility tier"
    # The standard library's venv, as the pinned environment's: pip as the interpreter has it.
    nox.session(name=name, python=interpreter(version), venv_backend="venv")(combination)


for _name, _version, _pins in COMBOS:
    _define(_name, _version, _pins)

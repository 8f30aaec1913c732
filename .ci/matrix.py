"""CI's compatibility matrix: each combination below gets a fresh virtualenv with the
test requirements (requirements.txt less the lint/type/browser tools), its own
versions of the stack on top, and runs the suite without the browser tier (the e2e
tests, real uvicorn/daphne/hypercorn/granian processes, are in it). SQLite only: the
pinned environment runs the three databases.

    python3 .ci/matrix.py               # every combination
    python3 .ci/matrix.py py312-dj60    # one, by name

Prints each combination's install and test times; exits non-zero if one failed.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: outside the tree: ruff and pytest must not walk into them
VENVS = Path(tempfile.gettempdir()) / "broadcast_app-matrix"

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


def python(version: str) -> str:
    """An interpreter of ``version``: one of pyenv's, or one on PATH that runs (pyenv's
    shims are on PATH for every version, but fail for those not selected)."""
    root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates = sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}"))
    found = shutil.which(f"python{version}")
    if found:
        candidates.append(found)
    for candidate in candidates:
        if subprocess.run([candidate, "-V"], capture_output=True, check=False).returncode == 0:
            return candidate
    sys.exit(f"matrix: no Python {version} (neither pyenv's nor python{version} on PATH)")


def requirements(pins: dict[str, str]) -> list[str]:
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


def run(name: str, version: str, pins: dict[str, str]) -> tuple[bool, float, float]:
    venv = VENVS / name
    shutil.rmtree(venv, ignore_errors=True)
    started = time.monotonic()
    subprocess.run([python(version), "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    if subprocess.run([*pip, *requirements(pins)], check=False, cwd=ROOT).returncode != 0:
        print(f"== matrix {name}: pip could not install these versions", flush=True)
        return False, time.monotonic() - started, 0.0
    installed = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    pytest = ["-m", "pytest", "-m", "not browser", "-x", "-q", "-p", "no:cacheprovider"]
    tests = subprocess.run(
        [str(venv / "bin" / "python"), *pytest],
        cwd=ROOT,
        env=env,
    )
    done = time.monotonic()
    return tests.returncode == 0, installed - started, done - installed


def main(names: list[str]) -> int:
    chosen = [c for c in COMBOS if not names or c[0] in names]
    if names and len(chosen) != len(names):
        sys.exit(f"matrix: unknown combination in {names}; known: {[c[0] for c in COMBOS]}")
    results = []
    for name, version, pins in chosen:
        print(f"== matrix {name}: Python {version}, {pins}", flush=True)
        ok, install, test = run(name, version, pins)
        results.append((name, ok, install, test))
        print(f"== matrix {name}: {'ok' if ok else 'FAILED'} "
              f"(install {install:.0f} s, tests {test:.0f} s)", flush=True)  # fmt: skip
    for name, ok, install, test in results:
        print(f"matrix {name:20} {'ok' if ok else 'FAILED':6} install {install:4.0f} s  "
              f"tests {test:5.0f} s")  # fmt: skip
    return 0 if all(ok for _, ok, _, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

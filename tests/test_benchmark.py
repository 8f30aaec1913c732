"""The benchmark command runs end to end (quick plan) and loses nothing.

Speed is not asserted here (benchmarks are not timed tests): this checks the command
works and that every row counted its events.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e_support import subprocess_env

BASE_DIR = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
def test_quick_benchmark_writes_results_with_nothing_lost(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = subprocess_env(DATABASE_URL=f"sqlite:///{tmp_path / 'bench.sqlite3'}")
    env.pop("REDIS_URL", None)  # the command starts its own Redis
    done = subprocess.run(
        [sys.executable, "manage.py", "broadcast_benchmark", "--quick", "--json", str(out)],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["save_overhead"]["median_on_ms"] > 0
    assert [row["clients"] for row in results["latency"]] == [1, 10]
    for row in results["latency"]:
        assert row["ours"]["lost"] == 0
        assert row["floor"]["lost"] == 0
    assert results["bulk"]["lost"] == 0
    assert results["bulk"]["published"] == results["bulk"]["rows"]
    assert results["bulk_delete"]["lost"] == 0
    assert results["bulk_delete"]["published"] == results["bulk_delete"]["rows"]
    assert "broadcast_benchmark results" in done.stdout

"""The connections-at-scale command runs end to end at a small N and loses nothing.

Speed and memory are not asserted (benchmarks are not timed tests): this checks the
command works, that its rows have their shape, and that every figure was measured.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e_support import subprocess_env

BASE_DIR = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_scale_command_measures_every_server_with_nothing_lost(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    env = subprocess_env(DATABASE_URL=f"sqlite:///{tmp_path / 'scale.sqlite3'}")
    env.pop("REDIS_URL", None)  # the command starts its own Redis
    command = [sys.executable, "manage.py", "broadcast_scale", "--scale", "100,200"]
    done = subprocess.run(
        [*command, "--events", "2", "--json", str(out)],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["meta"]["machine"]["cpus"] >= 1
    assert results["meta"]["open_files_limit"] >= 300
    assert "broadcast_scale" in results["meta"]["command"]
    assert [row["clients"] for row in results["rows"]] == [100, 200]
    for row in results["rows"]:
        for kind in ("ours", "bare", "floor"):
            assert row["rss_bytes"][kind] > 0
            assert row["connect_seconds"][kind] > 0
        # each server holds more memory with its clients than without
        assert row["rss_per_connection_kib"]["ours"] > 0
        assert row["rss_per_connection_kib"]["bare"] > 0
        assert row["rss_ratio"] > 0
        for kind in ("ours", "floor"):
            assert row["last_client_ms"][kind] > 0
            assert len(row["events"][kind]) == 2
            for event in row["events"][kind]:
                assert event["clients"] == event["received"] == row["clients"]
                assert event["missing"] == event["duplicates"] == event["resets"] == 0
        assert row["last_client_ratio"] > 0
        assert (row["lost"], row["duplicates"], row["resets"], row["extra"]) == (0, 0, 0, 0)
    assert results["meta"]["instance_warnings"] == []


@pytest.mark.e2e
def test_scale_command_spreads_the_clients_over_instances(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    env = subprocess_env(DATABASE_URL=f"sqlite:///{tmp_path / 'scale.sqlite3'}")
    env.pop("REDIS_URL", None)
    command = [sys.executable, "manage.py", "broadcast_scale", "--scale", "200"]
    done = subprocess.run(
        [*command, "--instances", "2", "--events", "2", "--json", str(out)],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    [row] = json.loads(out.read_text())["rows"]
    assert (row["clients"], row["instances"]) == (200, 2)
    assert sorted(row["rss_per_connection_kib"]) == ["ours-1", "ours-2"]
    assert all(kib > 0 for kib in row["rss_per_connection_kib"].values())
    assert row["last_client_ms"] > 0
    for event in row["events"]:
        # every client of both instances got the event, once
        assert event["clients"] == event["received"] == 200
        assert event["missing"] == event["duplicates"] == event["resets"] == 0
    assert (row["lost"], row["duplicates"], row["resets"], row["extra"]) == (0, 0, 0, 0)

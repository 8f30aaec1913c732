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

BASE_DIR = Path(__file__).resolve().parents[2]


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
        for side in (row["ours"], row["floor"]):
            # 1.5 s at 50 saves/s in 3 alternating chunks, every event to every client
            assert (side["chunks"], side["saves"]) == (3, 75)
            assert side["expected"] == side["received"] == 75 * row["clients"]
            assert side["lost"] == 0
            assert "latencies_ms" not in side
    assert results["bulk"]["lost"] == 0
    assert results["bulk"]["published"] == results["bulk"]["rows"]
    assert results["bulk_delete"]["lost"] == 0
    assert results["bulk_delete"]["published"] == results["bulk_delete"]["rows"]
    ceiling = results["ceiling"]
    assert ceiling["ours"]["lost"] == ceiling["plain_publish"]["lost"] == 0
    assert ceiling["ours"]["cpu_us"] > 0 and ceiling["ceiling_per_core"] > 0
    assert ceiling["publishers"]["received"] == ceiling["publishers"]["events"] == 4 * 2_000
    assert ceiling["publishers"]["out_of_chain"] == 0
    resume = results["resume"]
    assert resume["log_events"] >= 10_000
    assert resume["idle"]["p50_ms"] > 0
    start, limit = resume["loads"]["start"], resume["loads"]["limit"]
    # From the start of the log: more events than a resume replays, known without
    # reading them; from as far back as a resume goes: replayed (or refused by budget).
    assert start["answers"]["reset:too_many"] > 0
    assert "change" not in start["answers"]
    assert limit["answers"]["change"] > 0
    assert limit["answers"].get("reset:too_many", 0) == 0
    for load in (start, limit):
        assert load["victim"]["p50_ms"] > 0
        assert not [answer for answer in load["answers"] if answer.startswith("error")]
    assert "broadcast_benchmark results" in done.stdout
    assert "(h) victim ping" in done.stdout
    # (i): every join on instance A was seen on instance B.
    assert results["presence"]["samples"] == 20
    assert 0 < results["presence"]["p50_ms"] <= results["presence"]["p99_ms"]
    assert "(i) presence join on instance A" in done.stdout
    # (j): every variant's frames arrived (or the row raised) and B's CPU was read.
    filtered = results["filtered"]
    assert (filtered["events"], filtered["subscriptions"]) == (100, 1000)
    for variant in ("none", "plain", "filtered"):
        assert filtered[f"{variant}_us_per_event"] >= 0
    assert "(j) instance B CPU per event" in done.stdout


def test_the_resume_verdict_holds_both_targets() -> None:
    from project.demo.benchmark.report import resume_verdict

    target = {"p50_ratio": 3.0, "max_ms": 50.0}
    idle = {"p50_ms": 1.0, "max_ms": 4.0}
    assert resume_verdict(idle, {"p50_ms": 3.0, "max_ms": 49.9}, target) == {
        "p50_ratio": 3.0,
        "ok": True,
    }
    assert not resume_verdict(idle, {"p50_ms": 3.1, "max_ms": 10.0}, target)["ok"]
    assert not resume_verdict(idle, {"p50_ms": 1.0, "max_ms": 50.0}, target)["ok"]


def test_pooled_chunks_summarize_every_latency_and_sum_the_counts() -> None:
    from project.demo.benchmark.report import pooled

    def chunk(latencies: list[float], lost: int, server_ms: int) -> dict[str, object]:
        return {
            "kind": "ours", "started_at": "t", "rate": 50.0, "clients": 2,
            "saves": 2, "expected": 4, "received": len(latencies) - lost, "lost": lost,
            "duplicates": 0, "closed": 0, "resets": 0, "publish_failures": 0,
            "achieved_rate": 50.0 - lost, "kept_pace": lost == 0,
            "latencies_ms": latencies, "save_durations_ms": [1.0, 3.0],
            "cpu_ms": {"server": server_ms},
        }  # fmt: skip

    merged = pooled([chunk([1.0, 2.0, 3.0, 4.0], 0, 10), chunk([5.0, 6.0, 7.0, 8.0], 1, 20)])
    assert merged["chunks"] == 2
    assert (merged["saves"], merged["expected"], merged["lost"]) == (4, 8, 1)
    # nearest rank over all 8: the 4th and the 8th
    assert (merged["p50_ms"], merged["p99_ms"]) == (4.0, 8.0)
    assert merged["achieved_rate"] == 49.0 and merged["kept_pace"] is False
    assert merged["save_median_ms"] == 2.0
    assert merged["cpu_ms"] == {"server": 30}
    assert merged["server_cpu_us_per_frame"] == round(30 * 1000 / 7, 1)
    assert "latencies_ms" not in merged and "save_durations_ms" not in merged

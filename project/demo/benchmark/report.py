"""Numbers into results, results into a table and a JSON file (no Django here).

Latencies are in milliseconds: receipt time in the client fleet minus the event's
``ts`` (commit time in the saving process), both ``time.time()`` on one machine.
Percentiles use the nearest-rank method over every (client, event) pair.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any


def percentile(ordered: list[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile of an already sorted list (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_summary(latencies_ms: list[float]) -> dict[str, float]:
    """p50, p90, p99, max and mean of a list of latencies, rounded to microseconds."""
    ordered = sorted(latencies_ms)
    summary = {
        "p50_ms": percentile(ordered, 50),
        "p90_ms": percentile(ordered, 90),
        "p99_ms": percentile(ordered, 99),
        "max_ms": ordered[-1] if ordered else 0.0,
        "mean_ms": statistics.fmean(ordered) if ordered else 0.0,
    }
    return {key: round(value, 3) for key, value in summary.items()}


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator > 0 else None


def overhead_result(
    on: list[float], off: list[float], rate: float, target: float
) -> dict[str, Any]:
    """(a): median ``save()`` time with broadcasting on and off, and their ratio."""
    on_ms = statistics.median(on) * 1000
    off_ms = statistics.median(off) * 1000
    ratio = _ratio(on_ms, off_ms)
    return {
        "rate": rate,
        "saves_each": len(on),
        "median_on_ms": round(on_ms, 4),
        "median_off_ms": round(off_ms, 4),
        "p90_on_ms": round(percentile(sorted(on), 90) * 1000, 4),
        "p90_off_ms": round(percentile(sorted(off), 90) * 1000, 4),
        "ratio": ratio,
        "target": target,
        "ok": ratio is not None and ratio <= target,
    }


#: what each chunk of a pooled phase counts, summed over its chunks
_SUMMED = (
    "saves", "expected", "received", "lost", "duplicates", "closed", "resets",
    "publish_failures",
)  # fmt: skip


def pooled(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """One phase out of the chunks it was measured in (each with its ``latencies_ms``
    and ``save_durations_ms``, which the pooled phase summarizes and drops)."""
    first = chunks[0]
    latencies = [value for chunk in chunks for value in chunk["latencies_ms"]]
    durations = [value for chunk in chunks for value in chunk["save_durations_ms"]]
    cpu_ms: dict[str, int] = {}
    for chunk in chunks:
        for name, value in chunk["cpu_ms"].items():
            cpu_ms[name] = cpu_ms.get(name, 0) + value
    merged = {
        "kind": first["kind"],
        "started_at": first["started_at"],
        "rate": first["rate"],
        "chunks": len(chunks),
        **{key: sum(chunk[key] for chunk in chunks) for key in _SUMMED},
        # The slowest chunk: the saver kept pace only if it did in every chunk.
        "achieved_rate": min(chunk["achieved_rate"] for chunk in chunks),
        "kept_pace": all(chunk["kept_pace"] for chunk in chunks),
        "save_median_ms": round(statistics.median(durations), 3) if durations else 0.0,
        "clients": first["clients"],
        **latency_summary(latencies),
        "cpu_ms": cpu_ms,
    }
    frames = merged["received"] + merged["duplicates"]
    merged["server_cpu_us_per_frame"] = server_cpu_per_frame(cpu_ms, frames)
    return merged


def server_cpu_per_frame(cpu_ms: dict[str, int], frames: int) -> float | None:
    """The server's CPU time (µs) per websocket frame it sent, if both are known."""
    return round(cpu_ms["server"] * 1000 / frames, 1) if "server" in cpu_ms and frames else None


def latency_row(
    clients: int, ours: dict[str, Any], floor: dict[str, Any], target: float
) -> dict[str, Any]:
    """(b), (d), (e): one client count, ours against the floor."""
    ratio = _ratio(ours["p50_ms"], floor["p50_ms"])
    return {
        "clients": clients,
        "ours": ours,
        "floor": floor,
        "p50_ratio": ratio,
        "target": target,
        "ok": ratio is not None and ratio <= target and ours["lost"] == 0,
    }


def step_passed(step: dict[str, Any], p99_limit_ms: float) -> bool:
    """A step holds when p99 is under the limit, nothing is lost and the saver kept up."""
    return bool(
        step["p99_ms"] < p99_limit_ms
        and step["lost"] == 0
        and step["closed"] == 0
        and step["resets"] == 0
        and step["publish_failures"] == 0
        and step["kept_pace"]
    )


def sustained_row(
    clients: int,
    ours_steps: list[dict[str, Any]],
    floor_steps: list[dict[str, Any]],
    target: float | None,
) -> dict[str, Any]:
    """(c), (e): the highest passing rate of each, and whether ours meets its target."""
    ours = _highest_passing(ours_steps)
    floor = _highest_passing(floor_steps)
    return {
        "clients": clients,
        "ours_saves_per_s": ours,
        "floor_saves_per_s": floor,
        "ours_steps": ours_steps,
        "floor_steps": floor_steps,
        # The last rate tried passed: the true maximum is higher than the steps reach.
        "ours_capped": bool(ours_steps) and ours_steps[-1]["passed"],
        "floor_capped": bool(floor_steps) and floor_steps[-1]["passed"],
        "target": target,
        "ok": None if target is None else ours >= target,
    }


def _highest_passing(steps: list[dict[str, Any]]) -> float:
    return max((s["rate"] for s in steps if s["passed"]), default=0.0)


def resume_verdict(
    idle: dict[str, float], loaded: dict[str, float], target: dict[str, float]
) -> dict[str, Any]:
    """(h): the victim's p50 against idle, and its max, each against its target."""
    ratio = _ratio(loaded["p50_ms"], idle["p50_ms"])
    return {
        "p50_ratio": ratio,
        "ok": ratio is not None
        and ratio <= target["p50_ratio"]
        and loaded["max_ms"] < target["max_ms"],
    }


# -- text ---------------------------------------------------------------------------


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("OK" if ok else "MISS")


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def latency_line(row: dict[str, Any]) -> str:
    ours, floor = row["ours"], row["floor"]
    return (
        f"(b) {row['clients']} client(s): ours p50 {ours['p50_ms']:.2f} ms p99 "
        f"{ours['p99_ms']:.2f} ms lost {ours['lost']}; floor p50 {floor['p50_ms']:.2f} ms "
        f"p99 {floor['p99_ms']:.2f} ms lost {floor['lost']}; p50 ratio {_num(row['p50_ratio'])}"
    )


def step_line(kind: str, step: dict[str, Any]) -> str:
    return (
        f"{kind:5} {step['rate']:>6g}/s: achieved {step['achieved_rate']:>7.1f}/s "
        f"p50 {step['p50_ms']:7.2f} ms p99 {step['p99_ms']:7.2f} ms lost {step['lost']:>6} "
        f"closed {step['closed']} server {_num(step['server_cpu_us_per_frame'], 1):>5} us/frame "
        f"{'pass' if step['passed'] else 'FAIL'}{' (2nd try)' if 'first_attempt' in step else ''}"
    )


def sustained_line(row: dict[str, Any]) -> str:
    return (
        f"(c) {row['clients']} clients: ours {row['ours_saves_per_s']:g} saves/s, "
        f"floor {row['floor_saves_per_s']:g} saves/s"
    )


_LOADS = {"pings": "pings only", "start": "from the start", "limit": "from the limit"}


def resume_lines(row: dict[str, Any], target: dict[str, float]) -> list[str]:
    idle = row["idle"]
    lines = [
        f"(h) victim ping round trip, ms, one every {row['ping_interval'] * 1000:g} ms for "
        f"{row['seconds']:g} s, while "
        f"{row['clients']} clients each send one every {row['interval'] * 1000:g} ms (a "
        f"{row['log_events']}-event log; target: p50 <= {target['p50_ratio']:g} x idle, "
        f"max < {target['max_ms']:g} ms)",
        f"  {'idle':14}  p50 {idle['p50_ms']:6.2f} p99 {idle['p99_ms']:6.2f} "
        f"max {idle['max_ms']:6.2f}",
    ]
    for name, load in row["loads"].items():
        victim = load["victim"]
        answers = ", ".join(f"{k} {v}" for k, v in sorted(load["answers"].items()))
        lines.append(
            f"  {_LOADS.get(name, name):14}  p50 {victim['p50_ms']:6.2f} "
            f"p99 {victim['p99_ms']:6.2f} max {victim['max_ms']:6.2f}: "
            f"p50 ratio {_num(load['p50_ratio'])} "
            f"{_verdict(load['ok'])}, server CPU {load.get('server_cpu_ms')} ms ({answers})"
        )
    return lines


def _capped(value: float, capped: bool) -> str:
    return f"{value:g}{'+' if capped else ''}"


def _machine(meta: dict[str, Any]) -> str:
    return (
        f"Redis: {meta.get('redis', '?')}; database: {meta.get('database', '?')}; "
        f"CPUs: {meta.get('cpus', '?')}; load average before {meta.get('load_before')}, "
        f"after {meta.get('load_after')}"
    )


def format_table(results: dict[str, Any]) -> str:
    """The printed summary of a run."""
    meta, plan = results["meta"], results["plan"]
    if "save_overhead" not in results:  # (h) alone
        lines = ["", "broadcast_benchmark results", _machine(meta), ""]
        return "\n".join([*lines, *resume_lines(results["resume"], plan["targets"]["resume"]), ""])
    over = results["save_overhead"]
    lines = [
        "",
        "broadcast_benchmark results",
        meta["saver"],
        _machine(meta),
        "",
        f"(a) save() at {over['rate']:g} saves/s, {over['saves_each']} saves each: "
        f"median {over['median_on_ms']:.3f} ms broadcasting on, {over['median_off_ms']:.3f} ms "
        f"off: ratio {_num(over['ratio'], 3)} (target <= {over['target']}) "
        f"{_verdict(over['ok'])}",
        "",
        "(b, d, e) commit -> websocket receipt, ms, at "
        f"{plan['latency_rate']:g} saves/s for {plan['latency_seconds']:g} s each, in "
        f"alternating chunks of {plan['latency_chunk_seconds']:g} s",
        f"{'clients':>7} | {'ours p50':>8} {'p99':>7} {'lost':>5} | {'floor p50':>9} {'p99':>7} "
        f"{'lost':>5} | {'p50 ratio':>9}              | server CPU us/frame ours, floor",
    ]
    for row in results["latency"]:
        ours, floor = row["ours"], row["floor"]
        lines.append(
            f"{row['clients']:>7} | {ours['p50_ms']:>8.2f} {ours['p99_ms']:>7.2f} "
            f"{ours['lost']:>5} | {floor['p50_ms']:>9.2f} {floor['p99_ms']:>7.2f} "
            f"{floor['lost']:>5} | {_num(row['p50_ratio']):>9} (<= {row['target']}) "
            f"{_verdict(row['ok']):4} | {_num(ours['server_cpu_us_per_frame'], 1)}, "
            f"{_num(floor['server_cpu_us_per_frame'], 1)}"
        )
    limit = plan["p99_limit_ms"]
    lines += [
        "",
        f"(c, e) highest sustained saves/s (p99 < {limit:g} ms, nothing lost, saver on pace; "
        "a step failing on time alone is tried twice)",
        f"{'clients':>7} | {'ours':>6} | {'floor':>6} | target",
    ]
    for row in results["sustained"]:
        target = "-" if row["target"] is None else f">= {row['target']:g}"
        lines.append(
            f"{row['clients']:>7} | {_capped(row['ours_saves_per_s'], row['ours_capped']):>6} | "
            f"{_capped(row['floor_saves_per_s'], row['floor_capped']):>6} | {target} "
            f"{_verdict(row['ok'])}"
        )
    lines += ["", "(d) every step (lost = expected x clients - received):"]
    for row in results["sustained"]:
        for step in row["ours_steps"] + row["floor_steps"]:
            lines.append(f"  {row['clients']:>4} clients {step_line(step['kind'], step)}")
    bulk = results.get("bulk")
    if bulk:
        lines += [
            "",
            f"(f) bulk publication: QuerySet.update() of {bulk['rows']} rows: "
            f"{bulk['update_off_s']} s broadcasting off; {bulk['until_published_s']} s on, "
            f"until every event was published: {bulk['rows_per_s']} rows/s, "
            f"{bulk['cost_per_row_us']} us per row; lost {bulk['lost']}",
        ]
    deleted = results.get("bulk_delete")
    if deleted:
        lines += [
            f"(g) bulk publication: QuerySet.delete() of {deleted['rows']} rows: "
            f"{deleted['delete_off_s']} s broadcasting off (Django loads every row); "
            f"{deleted['in_transaction_s']} s in the transaction on, "
            f"{deleted['until_published_s']} s until every event was published: "
            f"{deleted['rows_per_s']} rows/s, {deleted['cost_per_row_us']} us per row; "
            f"lost {deleted['lost']}",
        ]
    resume = results.get("resume")
    if resume:
        lines += ["", *resume_lines(resume, plan["targets"]["resume"])]
    ceiling = results.get("ceiling")
    if ceiling:
        lines += ["", *ceiling_lines(ceiling)]
    warnings = meta.get("instance_warnings") or []
    if warnings:
        lines += ["", "Instance B logged:", *(f"  {line}" for line in warnings)]
    lines.append("")
    return "\n".join(lines)


def ceiling_lines(row: dict[str, Any]) -> list[str]:
    """(k): Redis' CPU per event against a plain PUBLISH, the ceiling, 4 publishers."""
    ours, plain, ratio, four = row["ours"], row["plain_publish"], row["ratio"], row["publishers"]
    cpu_ok = ratio["cpu_us"] is not None and ratio["cpu_us"] <= 3
    ceiling_ok = row["ceiling_per_core"] is not None and row["ceiling_per_core"] >= 50_000
    return [
        f"(k) publish ceiling, Redis' own counters over {row['events']} events "
        f"({row['payload_bytes']} B per event's message alone, {row['batch']} per round trip, "
        "1 subscriber)",
        f"Redis CPU us/event: ours {ours['cpu_us']}, plain PUBLISH {plain['cpu_us']}: "
        f"ratio {ratio['cpu_us']} (target <= 3) {_verdict(cpu_ok)}; command time us/event "
        f"{ours['command_us']} against {plain['command_us']}; lost {ours['lost']}, "
        f"{plain['lost']}",
        f"ceiling for one Redis core: {row['ceiling_per_core']} events/s "
        f"(target >= 50000) {_verdict(ceiling_ok)}",
        f"{four['processes']} publishing processes flat out: {four['events_per_s']} events/s "
        f"({four['events']} events in {four['seconds']} s), lost {four['lost']}, "
        f"out of chain {four['out_of_chain']}",
    ]


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(results, indent=2) + "\n")

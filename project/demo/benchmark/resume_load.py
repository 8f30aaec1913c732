"""Resume load: clients that resume over and over, and a victim that pings meanwhile.

``python -m project.demo.benchmark.resume_load`` (no Django here) runs the resuming
clients in a process of their own: it connects ``--clients`` websockets, prints
``ready``, waits for a line on stdin, then has each client send ``subscribe`` with
``--since`` and a ``ping`` and read every frame up to the ``pong``, again and again,
every ``--interval`` seconds (at once when the previous one took longer), for
``--seconds``; it prints one JSON line: resumes made, and the answers (``reset``
reasons, ``change`` frames replayed). With ``--since -`` the clients only ping: the
cost of as many frames without any resume, for reference. The victim
(``victim_pings``) runs in the driver:
one connection sending a ``ping`` every ``interval`` seconds and timing each ``pong``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

_CHANGE = b'{"type":"change"'
#: the ``--since`` of clients that only ping (the same frame rate, without a resume)
PINGS_ONLY = "-"


def _connect(url: str, headers: list[tuple[str, str]]) -> Any:
    origin = dict(headers).get("Origin")
    others = [(name, value) for name, value in headers if name != "Origin"]
    return connect(
        url,
        origin=origin,  # type: ignore[arg-type]
        additional_headers=others,
        compression=None,
        proxy=None,
        max_size=None,
        max_queue=None,
        ping_interval=None,
    )


#: seconds a victim's ping may wait for its ``pong``
ANSWER_TIMEOUT = 10.0


async def victim_pings(
    url: str, headers: list[tuple[str, str]], seconds: float, interval: float
) -> list[float]:
    """Round trips (ms) of one ``ping`` every ``interval`` seconds for ``seconds``.

    A ping answered with an ``error`` (past the connection's frame allowance: keep
    ``interval`` above 1 / ``BROADCAST_FRAME_RATE``) or not at all within
    ``ANSWER_TIMEOUT`` raises: it would otherwise be waited for forever."""
    times: list[float] = []
    async with _connect(url, headers) as ws:
        ping = json.dumps({"type": "ping"})
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            started = time.perf_counter()
            await ws.send(ping)
            async with asyncio.timeout(ANSWER_TIMEOUT):
                while (frame := json.loads(await ws.recv())).get("type") != "pong":
                    if frame.get("type") == "error":
                        raise RuntimeError(f"the victim's ping was refused: {frame}")
            times.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(interval)
    return times


async def _resume_loop(
    ws: ClientConnection, subscribe: str, end: float, interval: float, answers: Counter[str]
) -> None:
    ping = json.dumps({"type": "ping"})
    next_at = time.perf_counter()
    while next_at < end:
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        # Late (the previous answer took longer): at once, without catching up.
        next_at = max(next_at + interval, time.perf_counter())
        if subscribe:
            await ws.send(subscribe)
            answers["resumes"] += 1
        await ws.send(ping)
        while True:
            data = await ws.recv(decode=False)
            # Replayed events are most frames: counted unparsed, so that this process
            # takes as little as it can of the CPU the server and the victim share.
            if data.startswith(_CHANGE):
                answers["change"] += 1
                continue
            frame = json.loads(data)
            kind = frame.get("type")
            if kind == "pong":
                answers["pongs"] += 1
                break
            if kind == "reset":
                answers[f"reset:{frame['reason']}"] += 1
            elif kind == "error":
                answers[f"error:{frame['code']}"] += 1


async def _attack(args: argparse.Namespace) -> None:
    headers = [(name, value) for name, _, value in (h.partition(": ") for h in args.header)]
    subscribe = ""
    if args.since != PINGS_ONLY:
        subscribe = json.dumps({"type": "subscribe", "model": args.model, "since": args.since})
    clients = [await _connect(args.url, headers) for _ in range(args.clients)]
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    answers: Counter[str] = Counter()
    end = time.perf_counter() + args.seconds
    await asyncio.gather(
        *(_resume_loop(ws, subscribe, end, args.interval, answers) for ws in clients)
    )
    for ws in clients:
        await ws.close()
    print(json.dumps(dict(answers)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--model", default="demo.product")
    parser.add_argument("--since", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--interval", type=float, required=True)
    asyncio.run(_attack(parser.parse_args()))


if __name__ == "__main__":
    main()

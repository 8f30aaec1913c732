"""A local subscriber of every product event, recording the frames the listener hands it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

TIMEOUT = 5
LABEL = "testapp.product"


class Recorder:
    """Subscribed to the hub like a websocket connection (no change_received receiver)."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    def deliver(self, frame: str, event: dict[str, Any]) -> None:
        self.frames.append(json.loads(frame))
        self.arrived.set()

    def reset(self, label: str, pk: str | None, reason: str) -> None:
        raise AssertionError(f"unexpected reset of {label} ({reason})")

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(TIMEOUT):
            while len(self.frames) < count:
                self.arrived.clear()
                await self.arrived.wait()

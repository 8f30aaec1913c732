"""Stopping child processes the same way everywhere the demo starts them."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable
from typing import Any


def stop_processes(processes: Iterable[subprocess.Popen[Any]], timeout: float) -> None:
    """SIGTERM every running process, then SIGKILL those still up after ``timeout``."""
    running = [p for p in processes if p.poll() is None]
    for process in running:
        process.terminate()
    deadline = time.monotonic() + timeout
    for process in running:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

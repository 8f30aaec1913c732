"""The demo project's settings, plus the knobs the fault tests turn (tests/demo/test_faults.py).

Instances of the fault tests run the demo exactly as users do, bar the limits below,
made small enough to hit quickly.
"""

from __future__ import annotations

from project.settings import *  # noqa: F403

# A client more than 200 frames behind gets reset (default 1000); one that takes no data
# for 2 seconds is closed (default 10).
BROADCAST_SEND_QUEUE_SIZE = 200
BROADCAST_SEND_TIMEOUT = 2.0
# Gaps nothing else reveals are looked for every second (default 5).
BROADCAST_RECOVERY_INTERVAL = 1.0

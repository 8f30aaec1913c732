"""The publish scripts for a Redis Cluster: the same as :mod:`.scripts`, publishing
with ``SPUBLISH`` on the model's sharded channel.

The channel carries the model's hash tag (see :mod:`.cluster`), so the script, which
runs on the master of the slot of its keys, publishes in that same slot: Redis refuses a
script that reaches outside its slot. The scripts' text is otherwise the same, so the
batches are packed and their replies read as on one Redis.
"""

from __future__ import annotations

from typing import Any

from .scripts import BATCH_SCRIPT, PUBLISH_SCRIPT, RESET_SCRIPT, Shas


def _sharded(script: str) -> str:
    sharded = script.replace("call('PUBLISH',", "call('SPUBLISH',")
    if "'PUBLISH'" in sharded:  # a publish written another way would fail in a cluster only
        raise RuntimeError("a publish script has a PUBLISH this module does not replace")
    return sharded


SHARDED_BATCH_SCRIPT = _sharded(BATCH_SCRIPT)
SHARDED_PUBLISH_SCRIPT = _sharded(PUBLISH_SCRIPT)
SHARDED_RESET_SCRIPT = _sharded(RESET_SCRIPT)


def load(client: Any) -> Shas:
    """Load the sharded publish scripts into every master of ``client``'s cluster."""
    return Shas(
        client.script_load(SHARDED_BATCH_SCRIPT), client.script_load(SHARDED_PUBLISH_SCRIPT)
    )

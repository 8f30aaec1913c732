"""The publisher's client for a Redis Cluster: batches through the sharded publish
scripts (:mod:`.cluster_scripts`), each script call routed to the master of its
model's slot.

One cluster client per publishing thread, as for one Redis host (see
:mod:`.redis_transport`, which makes it): a failed batch (a master gone, a slot moved,
``NOSCRIPT`` on a promoted replica) closes it, and the retry makes a new one, which
reads the slot map afresh and loads the scripts into every master.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .cluster_scripts import SHARDED_RESET_SCRIPT, load


class ClusterClient:
    """A cluster client of the publisher's, with the sharded scripts loaded."""

    #: what sends a reset (dropping the model's epoch, publishing on its sharded channel)
    reset_script = SHARDED_RESET_SCRIPT

    def __init__(self, client: Any) -> None:
        self.redis = client
        self.shas = load(client)

    def call(
        self, commands: list[tuple[Any, ...]], pause: Callable[[], None] | None = None
    ) -> list[Any]:
        """Send ``commands`` (script calls, each of one model's slot) in one cluster
        pipeline, which writes each node its own, and return the replies in order;
        raises on the first error. ``pause`` is not used: the pipeline writes and reads
        each node in one step."""
        pipe = self.redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(pipe.execute(raise_on_error=True))

    def layer_send(self, messages: list[tuple[str, dict[str, Any]]]) -> None:
        """Never needed: the cluster's scripts publish every event themselves."""
        raise RuntimeError("a Redis Cluster is not reached through the channel layer")

    def close(self) -> None:
        self.redis.close()

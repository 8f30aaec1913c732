"""The websocket server's own frame limit, which must sit near the protocol's.

broadcast_app refuses client frames over ``BROADCAST_MAX_FRAME_BYTES`` with a
``too_large`` error, but only once the server has read the whole frame into memory:
uvicorn's default ``--ws-max-size`` is 16 MiB, so without a lower one a client can
make an instance buffer 16 MiB per frame. The server must close bigger frames itself
(code 1009) while reading them. :func:`ws_max_size` is the limit the demo, the
benchmark and the README's commands give it: the protocol's, with a margin so that a
frame a little too large still gets the polite error.

How the running server was configured is not visible to the application (ASGI does not
carry it), so :func:`check_server` reads the command line of the servers whose flags
it knows (uvicorn, daphne) and warns when they allow far more; for any other server it
logs, once, the value to configure.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from ..conf import conf

logger = logging.getLogger(__name__)

#: the server's limit, as a multiple of BROADCAST_MAX_FRAME_BYTES
MARGIN = 4
#: a server limit beyond this multiple of BROADCAST_MAX_FRAME_BYTES is warned about
FAR_MORE = 16

#: per server: the option that sets the limit, and its default when not given
_SERVERS = {
    "uvicorn": ("--ws-max-size", 16 * 1024 * 1024),
    "daphne": ("--websocket-max-message-size", 1024 * 1024),
}


def ws_max_size() -> int:
    """The websocket message size limit to give the server, in bytes."""
    return conf.BROADCAST_MAX_FRAME_BYTES * MARGIN


def _server(argv: Sequence[str]) -> str | None:
    """Which known server this command line runs, if any."""
    if not argv:
        return None
    program = os.path.normpath(argv[0])
    for name in _SERVERS:
        # `uvicorn ...` and `python -m uvicorn ...` (argv[0] is then uvicorn/__main__.py)
        if os.path.basename(program) == name or program.endswith(f"{name}/__main__.py"):
            return name
    return None


def _option(argv: Sequence[str], flag: str) -> str | None:
    value = None
    for index, item in enumerate(argv):
        if item == flag and index + 1 < len(argv):
            value = argv[index + 1]
        elif item.startswith(flag + "="):
            value = item.split("=", 1)[1]
    return value  # the last one given wins, as with click and argparse


def server_limit_problem(argv: Sequence[str]) -> str | None:
    """A warning when ``argv`` runs a known server that accepts far larger frames."""
    server = _server(argv)
    if server is None:
        return None
    flag, default = _SERVERS[server]
    given = _option(argv, flag)
    try:
        limit = int(given) if given is not None else default
    except ValueError:
        return None  # the server itself refuses a value it cannot read
    if limit <= conf.BROADCAST_MAX_FRAME_BYTES * FAR_MORE:
        return None
    return (
        f"{server} accepts websocket messages of up to {limit} bytes "
        f"({'its default' if given is None else flag}) and buffers each in memory before "
        f"broadcast_app refuses those over BROADCAST_MAX_FRAME_BYTES="
        f"{conf.BROADCAST_MAX_FRAME_BYTES}: run it with {flag} {ws_max_size()}."
    )


_checked = False


def check_server(argv: Sequence[str] | None = None) -> None:
    """Warn (once per process) when the server allows far larger frames than needed."""
    global _checked
    if _checked:
        return
    _checked = True
    argv = sys.argv if argv is None else argv
    problem = server_limit_problem(argv)
    if problem is not None:
        logger.warning("broadcast_app: %s", problem)
    elif _server(argv) is None:
        logger.info(
            "broadcast_app: clients may send frames of up to %d bytes; set your websocket "
            "server's message size limit to about %d (see the README's run commands)",
            conf.BROADCAST_MAX_FRAME_BYTES,
            ws_max_size(),
        )

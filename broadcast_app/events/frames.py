"""Client frames: read as JSON objects the server can answer, or refused with an error.

Everything a hostile client can put in a frame's text is refused here as a
:class:`ProtocolError` (answered with an ``error`` frame), never raised as anything
else: nesting deeper than the parser goes, ``NaN``, ``Infinity`` and numbers that
overflow to them (the server would echo them as invalid JSON), and strings holding a
lone surrogate (valid JSON escapes that no UTF-8 encoder takes).
"""

from __future__ import annotations

import json
import math
from typing import Any

#: deepest nesting of arrays and objects a client frame may have
MAX_DEPTH = 32
#: the answer to a frame nested deeper, whether or not this Python's parser reads it
_TOO_DEEP = f"Frames nest at most {MAX_DEPTH} levels deep."


class ProtocolError(Exception):
    """A client frame we answer with an ``error`` frame."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 would be echoed as Infinity, which is not JSON
        raise ValueError("out of range")
    return value


def _nested_deeper(value: Any, limit: int) -> bool:
    """Whether arrays and objects in ``value`` nest more than ``limit`` levels (without
    recursion: the value may nest as deep as the parser allowed)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def parse_frame(text: str) -> dict[str, Any]:
    """A client's text frame as a JSON object, or a :class:`ProtocolError`."""
    try:
        message = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:  # nested deeper than this Python's parser goes
        raise ProtocolError("bad_request", _TOO_DEEP) from None
    except ValueError:
        raise ProtocolError("bad_json", "The frame is not valid JSON.") from None
    if not isinstance(message, dict):
        raise ProtocolError("bad_request", "A frame must be a JSON object.")
    if text.count("[") + text.count("{") > MAX_DEPTH and _nested_deeper(message, MAX_DEPTH):
        raise ProtocolError("bad_request", _TOO_DEEP)
    return message


def valid_text(value: str, name: str) -> str:
    """``value``, if it can be encoded as UTF-8 (else a :class:`ProtocolError`)."""
    # A lone surrogate (sent escaped, "\ud800") cannot be encoded for Redis or a database.
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ProtocolError("bad_request", f"{name!r} is not valid Unicode text.") from None
    return value

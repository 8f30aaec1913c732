"""Which subscription a client's ``subscribe`` or ``unsubscribe`` frame names.

A subscription is keyed ``(label, pk)``: ``pk`` is None for a whole model, the object's
primary key as a string, or, for a filtered subscription, a :class:`~.filters.Where`
(a string no primary key can equal).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError

from ..events.filters import compile_where
from ..events.frames import ProtocolError, valid_text
from ..events.model_configs import ModelConfig, NotRegistered, get_config


def target(message: dict[str, Any]) -> tuple[ModelConfig, str | None]:
    """The model of a frame and its subscription's key, or a :class:`ProtocolError`."""
    label = message.get("model")
    if not isinstance(label, str) or not label:
        raise ProtocolError("bad_request", "'model' must be a string like 'app_label.model'.")
    valid_text(label, "model")
    try:
        config = get_config(label)
    except NotRegistered:
        raise ProtocolError("unknown_model", f"No broadcasting model {label[:100]!r}.") from None
    pk = message.get("pk")
    where = message.get("where")
    if where is not None:
        if pk is not None:
            raise ProtocolError("bad_request", "'where' filters a whole model: omit 'pk'.")
        return config, compile_where(config, where)
    if pk is None:
        return config, None
    if isinstance(pk, bool) or not isinstance(pk, str | int):
        raise ProtocolError("bad_request", "'pk' must be a string.")
    if isinstance(pk, str):
        valid_text(pk, "pk")
    try:
        field = config.model._meta.pk
        value = field.to_python(pk)
        field.run_validators(value)  # the field's range and length, as a form would
    except ValidationError:
        raise ProtocolError("bad_request", f"{str(pk)[:100]!r} is not a valid pk.") from None
    return config, str(value)

"""Which models broadcast, and how: the opt-in registry.

A project calls :func:`register` (usually in its ``AppConfig.ready()``) once per model.
Registration connects the capture signal receivers for that model only, so models that
do not broadcast pay nothing. The configs themselves, and looking them up, are
:mod:`.model_configs` (re-exported here), which the capture pipeline imports: this
module sits above it.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import models

from ..events import model_configs
from ..events.model_configs import (
    AlreadyRegistered,
    CapturedField,
    ModelConfig,
    NotRegistered,
    ObjectCheck,
    Serializer,
    all_configs,
    configs_for,
    get_config,
    model_for_label,
)

__all__ = [
    "AlreadyRegistered",
    "CapturedField",
    "ModelConfig",
    "NotRegistered",
    "ObjectCheck",
    "Serializer",
    "all_configs",
    "configs_for",
    "get_config",
    "model_for_label",
    "register",
    "unregister",
]


def register(
    model: type[models.Model],
    *,
    fields: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    serializer: Serializer | None = None,
    permission: str | None = None,
    object_check: ObjectCheck | None = None,
    previous: bool = False,
    max_rate: float | None = None,
    to_others: bool = False,
) -> ModelConfig:
    """Make ``model`` broadcast its saves and deletes.

    ``fields`` / ``exclude`` choose the broadcast fields (the primary key is always
    included); ``serializer(instance) -> dict`` replaces the default field dump (its
    output is still stripped of every non-broadcast field); ``permission`` is the
    Django permission needed to subscribe (default ``<app>.view_<model>``);
    ``object_check(user, data) -> bool`` is asked before each object's event is sent
    to a user (it runs in the event loop: keep it fast and free of queries).
    ``previous`` adds the old values of the changed fields to ``updated`` events;
    ``max_rate`` caps the events of one object per second in each publishing process
    (the latest state wins and is published at most ``1 / max_rate`` s late);
    ``to_others`` never sends a change to the websocket whose page made it.
    """
    # Imported here: a look-up through this module needs none of the capture pipeline.
    from . import bulk
    from . import receivers as capture

    config = ModelConfig(
        model=model,
        fields=tuple(fields) if fields is not None else None,
        exclude=tuple(exclude),
        serializer=serializer,
        permission=permission,
        object_check=object_check,
        previous=previous,
        max_rate=max_rate,
        to_others=to_others,
    )
    model_configs.add(config)
    capture.connect(config)
    bulk.install()
    return config


def unregister(model: type[models.Model]) -> None:
    """Stop broadcasting ``model`` (mainly for tests)."""
    from . import receivers as capture

    capture.disconnect(model_configs.remove(model))

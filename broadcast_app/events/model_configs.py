"""How each registered model broadcasts: its :class:`ModelConfig`, and the table of them.

The lowest layer of the package after the events: capture, publishing, the instance
and the websocket side all look models up here. Registering (which also connects the
capture receivers) is :mod:`.registry`'s job, the layer above.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from django.apps import apps
from django.db import models

from ..django_compat import plain_attribute
from .change import NORMAL_TYPES

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser

    User = AbstractBaseUser | AnonymousUser

#: ``serializer(instance) -> dict`` returning the broadcast data of one object.
Serializer = Callable[[models.Model], dict[str, Any]]
#: ``object_check(user, data) -> bool``: may this user see this object's event?
ObjectCheck = Callable[["User", Mapping[str, Any]], bool]


class CapturedField(NamedTuple):
    """What capturing a save needs to know of one broadcast field, worked out once."""

    field: models.Field[Any, Any]
    name: str
    attname: str
    #: the type its value has after a database round trip, when ``to_python()`` keeps it
    normal: type | None
    #: its value is the instance's ``__dict__`` entry (a plain attribute, no descriptor
    #: or ``value_from_object()`` of its own to go through)
    direct: bool
    #: it can be listed in ``changed`` (not the primary key, not ``auto_now``)
    tracked: bool


class AlreadyRegistered(Exception):
    """The model was registered for broadcasting twice."""


class NotRegistered(LookupError):
    """The model (or label) is not registered for broadcasting."""


@dataclass(eq=False)
class ModelConfig:
    """How one model broadcasts. Built by :func:`.registry.register`; read-only afterwards."""

    model: type[models.Model]
    fields: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    serializer: Serializer | None = None
    permission: str | None = None
    object_check: ObjectCheck | None = None
    #: include ``previous`` (old values of the changed fields) in ``updated`` events
    previous: bool = False
    #: at most this many events per second for one object (None: no limit)
    max_rate: float | None = None
    #: never echo a change to the websocket that made it (see ``X-Socket-ID``)
    to_others: bool = False
    #: concrete fields that are broadcast, in model order
    broadcast_fields: tuple[models.Field[Any, Any], ...] = field(init=False, default=())
    #: names of fields that must never leave the process (model fields not broadcast)
    private_names: frozenset[str] = field(init=False, default=frozenset())
    #: broadcast fields that change by themselves on every save (``auto_now``)
    volatile_names: frozenset[str] = field(init=False, default=frozenset())
    #: many-to-many fields that are broadcast (their data is the sorted list of pks)
    m2m_fields: tuple[models.ManyToManyField[Any, Any], ...] = field(init=False, default=())
    #: position of each broadcast field name (``changed`` lists follow it)
    field_order: dict[str, int] = field(init=False, default_factory=dict)
    #: the model's lower-case label, ``app_label.model_name``: its name on the wire
    label: str = field(init=False, default="")
    #: ``broadcast_fields`` as capture reads them, in the same order
    captured_fields: tuple[CapturedField, ...] = field(init=False, default=())
    #: attribute names of ``broadcast_fields``
    attnames: frozenset[str] = field(init=False, default=frozenset())
    #: an event's data comes from attribute values alone (no serializer hook, no
    #: many-to-many, no field read through its own ``value_from_object()``)
    needs_no_instance: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        opts = self.model._meta
        self.label = opts.label_lower
        concrete = [f for f in opts.concrete_fields]
        wanted = set(self.fields) if self.fields is not None else None
        excluded = set(self.exclude)
        chosen = tuple(
            f
            for f in concrete
            if (wanted is None or f.name in wanted or f.primary_key) and f.name not in excluded
        )
        self.broadcast_fields = chosen
        self.m2m_fields = tuple(
            f
            for f in opts.many_to_many
            if (wanted is None or f.name in wanted) and f.name not in excluded
        )
        chosen_names = {f.name for f in chosen} | {f.name for f in self.m2m_fields}
        self.field_order = {
            name: index for index, name in enumerate([f.name for f in chosen + self.m2m_fields])
        }
        private: set[str] = set()
        for f in opts.get_fields():
            if getattr(f, "concrete", False) and f.name not in chosen_names:
                private.add(f.name)
                private.add(getattr(f, "attname", f.name))
        self.private_names = frozenset(private)
        self.volatile_names = frozenset(f.name for f in chosen if getattr(f, "auto_now", False))
        self.captured_fields = tuple(
            CapturedField(
                field=f,
                name=f.name,
                attname=f.attname,
                normal=NORMAL_TYPES.get(type(f)),
                direct=plain_attribute(self.model, f),
                tracked=not f.primary_key and f.name not in self.volatile_names,
            )
            for f in chosen
        )
        self.attnames = frozenset(f.attname for f in chosen)
        self.needs_no_instance = (
            self.serializer is None
            and not self.m2m_fields
            # A file's value is its name, which its snapshot holds (see events.kept).
            and all(
                f.direct or isinstance(f.field, models.FileField) for f in self.captured_fields
            )
        )

    @property
    def view_permission(self) -> str:
        """The permission a user needs to subscribe (default: the model's ``view``)."""
        if self.permission is not None:
            return self.permission
        opts = self.model._meta
        return f"{opts.app_label}.view_{opts.model_name}"

    def unknown_field_names(self) -> list[str]:
        """Names in ``fields``/``exclude`` that are not fields of the model."""
        opts = self.model._meta
        names = {f.name for f in opts.concrete_fields} | {f.name for f in opts.many_to_many}
        given = list(self.fields or ()) + list(self.exclude)
        return [n for n in given if n not in names]


_registry: dict[str, ModelConfig] = {}
#: configs_for()'s answers, forgotten whenever the registry changes
_by_model: dict[type[models.Model], tuple[ModelConfig, ...]] = {}


def add(config: ModelConfig) -> None:
    """Put ``config`` in the table (:func:`.registry.register` does, and connects it)."""
    if config.label in _registry:
        raise AlreadyRegistered(f"{config.label} is already registered for broadcasting.")
    _registry[config.label] = config
    _by_model.clear()


def remove(model: type[models.Model]) -> ModelConfig:
    """Take ``model``'s config out of the table and return it."""
    config = _registry.pop(model._meta.label_lower, None)
    if config is None:
        raise NotRegistered(model._meta.label_lower)
    _by_model.clear()
    return config


def get_config(model_or_label: type[models.Model] | str) -> ModelConfig:
    """Return the config of a registered model, by class or ``app_label.model`` label.

    A proxy class gives its concrete model's config: its rows are that model's.
    """
    if isinstance(model_or_label, str):
        found = _registry.get(model_or_label)  # labels on the wire are lower case already
        if found is not None:
            return found
        label = model_or_label.lower()
    else:
        label = _concrete(model_or_label)._meta.label_lower
    try:
        return _registry[label]
    except KeyError:
        raise NotRegistered(label) from None


def configs_for(model: type[models.Model]) -> tuple[ModelConfig, ...]:
    """The configs a write through ``model`` publishes under, nearest first: its own (a
    proxy's is its concrete model's) and those of its registered multi-table ancestors,
    whose rows a write through a child writes too. Empty: nothing to publish."""
    found = _by_model.get(model)
    if found is None:
        concrete = _concrete(model)
        labels = dict.fromkeys(
            m._meta.label_lower for m in (concrete, *concrete._meta.get_parent_list())
        )
        found = _by_model[model] = tuple(_registry[n] for n in labels if n in _registry)
    return found


def _concrete(model: type[models.Model]) -> type[models.Model]:
    # None only while Django builds the class, before any write can go through it.
    return model._meta.concrete_model or model


def all_configs() -> list[ModelConfig]:
    """Every registered model's config, in registration order."""
    return list(_registry.values())


def model_for_label(label: str) -> type[models.Model] | None:
    """The model class for a label, registered or not (None when unknown)."""
    try:
        return apps.get_model(label)
    except (LookupError, ValueError):
        return None

"""The private parts of Django that broadcast_app uses, each in one place.

Every use here has a contract test (``tests/test_django_contracts.py``) that fails with
a clear message when Django changes it, and a public fallback that keeps events correct
(perhaps at some cost) when the private path is unavailable. docs/architecture.md
("Private Django APIs we use") says what each buys.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.deletion import Collector
from django.db.models.fields.related_descriptors import ForeignKeyDeferredAttribute
from django.db.models.query_utils import DeferredAttribute


def prefetched(instance: models.Model) -> dict[str, Any]:
    """The relations ``prefetch_related()`` loaded into ``instance``, by name.

    Django keeps them in ``instance._prefetched_objects_cache`` (undocumented). Without
    it, nothing counts as prefetched: a save with many-to-many fields is then read back
    at commit, a delete's event omits them.
    """
    cache = getattr(instance, "_prefetched_objects_cache", None)
    return cache if isinstance(cache, dict) else {}


def loaded_values(instance: models.Model) -> dict[str, Any]:
    """The field values ``instance`` has loaded (or been assigned), by attname: its
    ``__dict__``, where a deferred field has no entry (what ``get_deferred_fields()``
    itself reads). Read on every load and save, so no call per field."""
    return instance.__dict__


def plain_attribute(model: type[models.Model], f: models.Field[Any, Any]) -> bool:
    """Whether reading ``f`` from an instance of ``model`` is just reading its
    :func:`loaded_values` entry: the field's descriptor is Django's own
    (``DeferredAttribute``, ``ForeignKeyDeferredAttribute``: undocumented classes) and
    its ``value_from_object()`` is not overridden. False (events then read the value
    through ``value_from_object()``: correct, slower) for any other descriptor."""
    if type(f).value_from_object is not models.Field.value_from_object:
        return False
    try:
        descriptor = inspect.getattr_static(model, f.attname)
    except AttributeError:
        return False
    return type(descriptor) in (DeferredAttribute, ForeignKeyDeferredAttribute)


def admin_unquote(object_id: str) -> str:
    """An admin URL's object id as the pk it quotes: ``django.contrib.admin.utils.unquote``
    (public name, undocumented; the inverse of the admin's ``quote()``). Without it, the
    id as given (pks with characters the admin quotes then match nothing)."""
    try:
        from django.contrib.admin.utils import unquote
    except ImportError:
        return object_id
    return str(unquote(object_id))


#: False when the installed Django's ``run_on_commit`` is not a list of
#: ``(savepoint ids, callable, robust)`` tuples (as since Django 4.2); the public
#: fallbacks below then apply. Tests set it to exercise them.
HOOK_TUPLES = True


def commit_hooks(conn: BaseDatabaseWrapper) -> list[Any] | None:
    """The connection's pending commit hooks, or None where their shape is not known."""
    hooks = getattr(conn, "run_on_commit", None)
    if not HOOK_TUPLES or not isinstance(hooks, list):
        return None
    if hooks and not (isinstance(hooks[-1], tuple) and len(hooks[-1]) == 3):
        return None
    return hooks


def hook_pending(conn: BaseDatabaseWrapper, func: Callable[[], Any]) -> bool:
    """Whether ``func`` is still among the commit hooks of ``conn``'s transaction (gone:
    that transaction ended, or the savepoint that registered it was rolled back).

    Fallback: False, so callers start afresh (a hook per item: correct, coalesces less).
    """
    hooks = commit_hooks(conn)
    # Django rebuilds the tuples on savepoint rollback, so match on the function.
    return hooks is not None and any(entry[1] == func for entry in reversed(hooks))


def keep_last(conn: BaseDatabaseWrapper, func: Callable[[], Any]) -> bool:
    """Make ``func`` the last commit hook of ``conn``'s transaction, adding it if absent
    (so it runs after every hook registered so far). False where hooks cannot be
    reordered: the caller must not rely on a hook that runs after all others."""
    hooks = commit_hooks(conn)
    if hooks is None:
        return False
    if len(hooks) >= 2 and hooks[-2][1] == func:
        hooks[-2], hooks[-1] = hooks[-1], hooks[-2]
        return True
    for index in range(len(hooks) - 1, -1, -1):
        if hooks[index][1] == func:
            hooks.append(hooks.pop(index))
            return True
    # Empty sids: no savepoint rollback may discard it; only a full rollback does.
    hooks.append((set(), func, True))
    return True


#: False to take the public paths of the QuerySet internals below (chunked deletes,
#: the lock test), as on a Django where they are not as known. Tests set it.
QUERYSET_INTERNALS = True

_UNKNOWN: Any = object()
# Collector(origin=) since Django 4.1: what pre_delete/post_delete receivers get as origin.
_COLLECTOR_TAKES_ORIGIN = "origin" in inspect.signature(Collector.__init__).parameters


def write_db(qs: models.QuerySet[Any]) -> str:
    """The database a write through ``qs`` goes to, chosen as Django's own ``update()``,
    ``delete()`` and bulk methods choose it (``qs.using()``, else the routers'
    ``db_for_write`` with the queryset's hints).

    Public calls only (instead of setting ``QuerySet._for_write``): Django routes
    ``select_for_update()`` querysets to the write database (ticket #19918, since 1.6;
    not documented, hence the contract test). Nothing is evaluated.
    """
    return qs.select_for_update().db


def deletes_in_chunks(qs: models.QuerySet[Any]) -> bool:
    """Whether ``qs.delete()`` may be run by broadcast_app itself, in chunks (capture/bulk.py).

    Reads ``query.is_sliced``, ``combinator``, ``distinct_fields`` and
    ``QuerySet._fields`` (values()): Django refuses such deletes, and must say so with its
    own message. The chunked delete also needs :func:`deletion_collector` and
    :func:`forget_results`. False on a Django where any of them is not as known (or with
    :data:`QUERYSET_INTERNALS` off): Django's own ``delete()`` then runs it (the public
    path: its checks, its collector, every matching row loaded at once).
    """
    if not QUERYSET_INTERNALS or not _COLLECTOR_TAKES_ORIGIN:
        return False
    query = qs.query
    sliced = getattr(query, "is_sliced", _UNKNOWN)
    combinator = getattr(query, "combinator", _UNKNOWN)
    distinct_fields = getattr(query, "distinct_fields", _UNKNOWN)
    fields = getattr(qs, "_fields", _UNKNOWN)
    if _UNKNOWN in (sliced, combinator, distinct_fields, fields) or not hasattr(
        qs, "_result_cache"
    ):
        return False
    return not (sliced or combinator or distinct_fields or fields is not None)


def deletion_collector(using: str, origin: models.QuerySet[Any]) -> Collector:
    """Django's deletion collector (``django.db.models.deletion``, undocumented), with the
    user's queryset as the ``origin`` its receivers get, as in Django's ``delete()``.
    Only called where :func:`deletes_in_chunks` allowed it."""
    return Collector(using=using, origin=origin)


def forget_results(qs: models.QuerySet[Any]) -> None:
    """Empty ``qs``'s result cache (``QuerySet._result_cache``), as Django's ``delete()``
    does: the deleted queryset is evaluated afresh if used again. Only called where
    :func:`deletes_in_chunks` allowed it."""
    qs._result_cache = None


def may_lock(qs: models.QuerySet[Any]) -> bool | None:
    """Whether ``FOR UPDATE`` may be added to ``qs``'s SELECT: not with ``GROUP BY`` (a
    filter on an aggregate annotation), which the databases refuse. Reads
    ``query.group_by``; None where it cannot (the caller then locks the rows through a
    subquery of their pks, valid either way)."""
    if not QUERYSET_INTERNALS:
        return None
    group_by = getattr(qs.query, "group_by", _UNKNOWN)
    if group_by is _UNKNOWN:
        return None
    return group_by is None


class NotAnded(ValueError):
    """A queryset's filter is more than lookups ANDed together; the message says why."""


def filter_lookups(
    qs: models.QuerySet[Any],
) -> list[tuple[models.Field[Any, Any] | None, str, Any]] | None:
    """The lookups ANDed in ``qs``'s filter, as ``(field, lookup name, right-hand side)``
    where ``field`` is the model's own field the lookup reads (None when it reads
    something else: a related model's column, an expression); None when ``qs`` matches
    nothing (``none()``). Raises :class:`NotAnded`, also when Django's query tree is
    not as read here (then no filter is followed rather than a wrong one)."""
    from django.db.models.expressions import Col
    from django.db.models.lookups import Lookup
    from django.db.models.sql.where import AND, NothingNode, WhereNode

    query = qs.query
    try:
        if query.is_empty():
            return None
        alias = query.get_initial_alias()
        found: list[tuple[models.Field[Any, Any] | None, str, Any]] = []
        pending: list[Any] = [query.where]
        while pending:
            node = pending.pop()
            if not isinstance(node, WhereNode):
                raise NotAnded(f"it holds a {type(node).__name__}")
            if node.negated:
                raise NotAnded("it negates a condition (exclude() or ~Q)")
            if node.connector != AND and len(node.children) > 1:
                raise NotAnded(f"it joins conditions with {node.connector}, not AND")
            for child in node.children:
                if isinstance(child, NothingNode):
                    return None
                if not isinstance(child, Lookup):
                    pending.append(child)
                    continue
                lhs = child.lhs
                own = isinstance(lhs, Col) and lhs.alias == alias
                field = lhs.target if own else None
                found.append((field, str(child.lookup_name), child.rhs))
    except AttributeError as exc:
        raise NotAnded(f"Django's query is not as broadcast_app reads it ({exc})") from None
    return found


def known_pks(qs: models.QuerySet[Any]) -> list[str] | None:
    """The pks (as events carry them) of the rows ``qs`` can match, where its filter
    names them and nothing else: ``filter(pk=...)`` or ``filter(pk__in=[...])`` with
    plain values (what Django's generic relations' ``add(bulk=True)`` runs, and most
    updates by pk); some may not exist. None where that is not read off the query
    (another condition, an expression or a subquery, a query tree not as
    :func:`filter_lookups` reads it, :data:`QUERYSET_INTERNALS` off): the caller then
    selects the rows (the public path)."""
    if not QUERYSET_INTERNALS:
        return None
    try:
        lookups = filter_lookups(qs)
    except NotAnded:
        return None
    if lookups is None:
        return []  # none(): matches nothing
    pk = qs.model._meta.pk
    if len(lookups) != 1 or pk is None:
        return None
    ((field, lookup_name, rhs),) = lookups
    if field is None or field is not pk or lookup_name not in ("exact", "in"):
        return None
    values = [rhs] if lookup_name == "exact" else rhs
    if not isinstance(values, list | tuple | set | frozenset):
        return None  # a subquery or an expression
    pks: dict[str, None] = {}
    for value in values:
        if value is None:
            continue  # matches no row (SQL's NULL), as Django drops it from IN
        if isinstance(value, models.Model) or hasattr(value, "resolve_expression"):
            return None
        try:
            pks[str(field.to_python(value))] = None
        except Exception:
            return None  # Django refuses it, or converts it otherwise: not ours to guess
    return list(pks)

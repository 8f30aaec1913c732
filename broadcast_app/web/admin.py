"""A live Django admin, opt in per ``ModelAdmin``::

    from broadcast_app.admin import LiveAdminMixin

    @admin.register(Product)
    class ProductAdmin(LiveAdminMixin, admin.ModelAdmin):
        ...

The changelist then follows changes made elsewhere without a reload (changed cells
highlighted, new rows inserted, deleted rows marked) and the change form shows a banner
when its object is changed or deleted elsewhere, and who else has it open. Nothing is
overridden but the views' ``media``: the mixin adds one stylesheet and one ES module,
so the project's own admin templates keep working. The model must be registered with
``broadcast_app.register`` (checked: ``broadcast_app.E101``).
"""

from __future__ import annotations

import json
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from django.core import checks
from django.core.exceptions import ValidationError
from django.forms import Media
from django.forms.widgets import Script
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse

from ..django_compat import admin_unquote
from ..events.model_configs import NotRegistered, get_config
from .positions import render_since

__all__ = ["LiveAdminMixin"]

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin

    _Base = ModelAdmin[Any]
else:
    _Base = object

ADMIN_SCRIPT = "broadcast_app/js/admin.js"
ADMIN_STYLESHEETS = ["broadcast_app/css/live.css", "broadcast_app/css/admin.css"]


class LiveAdminMixin(_Base):
    """Keeps this ``ModelAdmin``'s changelist and change form live; put it before ``ModelAdmin``.

    How it works, briefly: the page subscribes to the model over the websocket. On the
    changelist, each event makes the page fetch itself again (same URL: same filters,
    search, ordering and page) and merge the fresh rows into the table, so rows are
    rendered exactly as the admin renders them and action checkboxes keep their state.
    """

    #: follow changes on the changelist
    live_changelist: bool = True
    #: warn on the change form when its object is changed or deleted elsewhere
    live_change_form: bool = True

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        if self.live_changelist:
            where = changelist_where(self.model, response)
            media = self.live_media(request, "changelist", None, where=where)
            self._add_live_media(response, media)
        return response

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        response = super().change_view(request, object_id, form_url, extra_context)
        pk = self._live_pk(object_id)
        if self.live_change_form and pk is not None:
            self._add_live_media(response, self.live_media(request, "change", pk))
        return response

    def live_media(
        self,
        request: HttpRequest,
        view: str,
        pk: str | None,
        *,
        where: dict[str, Any] | None = None,
    ) -> Media:
        """Hook: the assets that make ``view`` (``"changelist"`` or ``"change"``) live;
        ``where``: the changelist's filters, when they translate (``changelist_where``)."""
        opts = self.model._meta
        label = opts.label_lower
        attributes = {
            "type": "module",
            "data-broadcast-admin": view,
            "data-model": label,
            "data-verbose-name": str(opts.verbose_name),
        }
        if where is not None:
            attributes["data-where"] = json.dumps(where, sort_keys=True)
        if pk is not None:
            attributes["data-pk"] = pk
            # Presence: who else has the object open ("<name> is also editing"), not us.
            attributes["data-user-id"] = str(request.user.pk)
        since = render_since(label)
        if since is not None:
            # The page shows the state as of this event: a resuming server can replay
            # whatever happens between this render and the subscription.
            attributes["data-since"] = since
        with suppress(NoReverseMatch):
            attributes["data-changelist-url"] = reverse(
                f"{self.admin_site.name}:{opts.app_label}_{opts.model_name}_changelist"
            )
        # A Script, not a path: the module needs type="module" and its data attributes.
        js: list[Any] = [Script(ADMIN_SCRIPT, **attributes)]
        return Media(css={"all": ADMIN_STYLESHEETS}, js=js)

    def _live_pk(self, object_id: str) -> str | None:
        try:
            return str(self.model._meta.pk.to_python(admin_unquote(object_id)))
        except ValidationError:
            return None

    def _add_live_media(self, response: HttpResponse, media: Media) -> None:
        # Only pages the admin renders from a template (not redirects after a save).
        if not isinstance(response, TemplateResponse) or response.is_rendered:
            return
        context = response.context_data
        if context is None or "media" not in context:
            return
        context["media"] = context["media"] + media

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        errors = list(super().check(**kwargs))
        try:
            get_config(self.model)
        except NotRegistered:
            errors.append(
                checks.Error(
                    f"{type(self).__name__} uses LiveAdminMixin, but "
                    f"{self.model._meta.label} does not broadcast.",
                    hint=(
                        f"Call broadcast_app.register({self.model.__name__}) in your "
                        "AppConfig.ready(), or remove LiveAdminMixin."
                    ),
                    obj=type(self),
                    id="broadcast_app.E101",
                )
            )
        return errors


def changelist_where(model: type[Any], response: HttpResponse) -> dict[str, Any] | None:
    """The ``where`` of a changelist's current filters (``list_filter``, lookups in the
    URL, ``date_hierarchy``, the admin's ``get_queryset()``), or None — follow the whole
    model — when it has none or they do not translate (a search, an ``exclude()``, a
    filter across a relation or on a field that is not broadcast: see querysets.py)."""
    # (Imported here: admin.py loads with every project's setup, filters with the first
    # changelist; tests/test_package_shape.py keeps the setup small.)
    from ..events.filters import compile_where
    from ..events.frames import ProtocolError
    from .querysets import UntranslatableFilter, where_of

    context = getattr(response, "context_data", None) or {}
    changelist = context.get("cl")
    queryset = getattr(changelist, "queryset", None)
    if queryset is None:
        return None
    try:
        where = where_of(queryset)
        if where is not None:
            compile_where(get_config(model), where)
    except (UntranslatableFilter, ProtocolError, NotRegistered):
        return None
    return where

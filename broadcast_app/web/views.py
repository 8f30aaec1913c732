"""The staff dashboard and ``status.json``: what every instance is doing, live."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_safe

from ..conf import conf
from ..instance import status


@require_safe
@staff_member_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """The dashboard page; its script fills it from ``status.json`` and keeps it current."""
    context = {
        # The admin's header, sidebar and theme toggle, so the page looks like the admin.
        **admin.site.each_context(request),
        "title": "Broadcast",
        "status_url": reverse("broadcast_app:status"),
        "refresh_ms": int(conf.BROADCAST_DASHBOARD_REFRESH * 1000),
        "models": status.models(status.visible_labels(request.user)),
    }
    return render(request, "broadcast_app/dashboard.html", context)


@require_safe
async def status_json(request: HttpRequest) -> JsonResponse:
    """This instance's figures, every live instance, models and Redis health (staff only;
    a model's row and events only with its view permission).

    Async so that, under ASGI, it reads the counters in the event loop that updates
    them, and waits on Redis without holding a thread.
    """
    user = await request.auser()
    # 403 rather than a redirect to the login page: this is an API, polled by a script.
    if not (user.is_active and user.is_staff):
        return JsonResponse({"detail": "Staff only."}, status=403)
    visible = await sync_to_async(status.visible_labels)(user)
    response = JsonResponse(await status.gather(visible))
    response["Cache-Control"] = "no-store"
    return response

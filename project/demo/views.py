"""The live product list, and one product's broadcast data as JSON."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from broadcast_app import cache

from .models import Product

#: what a user needs to see products, here and over the websocket
VIEW_PERMISSION = "demo.view_product"


@require_safe
def index(request: HttpRequest) -> HttpResponse:
    """The product list, kept live by broadcast_app's template tags (no page script)."""
    can_view = request.user.has_perm(VIEW_PERMISSION)
    products = Product.objects.order_by("pk")
    if not can_view:
        products = products.none()
    # The tags render broadcast data only: cost_price is refused, never shown.
    return render(
        request,
        "demo/index.html",
        {"products": products, "spotlight": products.first(), "can_view": can_view},
    )


#: below this stock a product is listed on the low-stock page (and the admin's filter)
LOW_STOCK = 20


@require_safe
def low_stock(request: HttpRequest) -> HttpResponse:
    """The products running low: a filtered queryset that ``live_table`` keeps true
    (a product whose stock drops below the line appears, one restocked goes)."""
    can_view = request.user.has_perm(VIEW_PERMISSION)
    products = Product.objects.filter(stock__lt=LOW_STOCK).order_by("pk")
    if not can_view:
        products = products.none()
    return render(
        request,
        "demo/low_stock.html",
        {"products": products, "can_view": can_view, "low_stock": LOW_STOCK},
    )


@require_safe
def product_json(request: HttpRequest, pk: int) -> JsonResponse:
    """One product as broadcast, served from this instance's broadcast cache.

    ``X-Cache`` says whether the cache had it, so the coherence of the two instances'
    caches can be watched with curl.
    """
    # A JSON endpoint answers 403 rather than redirecting anonymous users to a login page.
    if not request.user.has_perm(VIEW_PERMISSION):
        return JsonResponse({"detail": "Permission denied."}, status=403)
    lookup = cache.fetch("demo.product", pk)
    if lookup.data is None:
        response = JsonResponse({"detail": "Not found."}, status=404)
    else:
        response = JsonResponse(lookup.data)
    response["X-Cache"] = "hit" if lookup.hit else "miss"
    response["Cache-Control"] = "no-store"
    return response

"""URLs of the demo app."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "demo"

urlpatterns = [
    path("", views.index, name="index"),
    path("demo/low-stock/", views.low_stock, name="low-stock"),
    path("demo/products/<int:pk>.json", views.product_json, name="product-json"),
]

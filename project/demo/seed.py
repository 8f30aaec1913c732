"""Demo data: a dozen products and an admin account, created only when missing."""

from __future__ import annotations

from decimal import Decimal

from django.contrib.auth import get_user_model
from django.db import transaction

from .models import Product

#: (sku, name, price, stock, cost price)
PRODUCTS: list[tuple[str, str, str, int, str]] = [
    ("MUG-001", "Enamel mug", "12.50", 40, "4.10"),
    ("TEE-002", "Organic T-shirt", "24.00", 120, "9.80"),
    ("CAP-003", "Baseball cap", "18.90", 35, "6.25"),
    ("BAG-004", "Canvas tote bag", "15.00", 80, "3.90"),
    ("NBK-005", "Dot-grid notebook", "9.75", 200, "2.40"),
    ("PEN-006", "Fountain pen", "39.00", 15, "14.00"),
    ("STK-007", "Sticker pack", "4.50", 500, "0.60"),
    ("BTL-008", "Steel water bottle", "27.00", 60, "11.20"),
    ("HDY-009", "Hooded sweatshirt", "49.00", 25, "21.50"),
    ("SCK-010", "Striped socks", "11.00", 90, "2.75"),
    ("PST-011", "Screen-printed poster", "30.00", 12, "7.00"),
    ("KEY-012", "Mechanical keyboard", "129.00", 8, "72.00"),
]


def seed_products() -> int:
    """Create the demo products when there are none; return how many were created."""
    if Product.objects.exists():
        return 0
    created = 0
    with transaction.atomic():
        for sku, name, price, stock, cost_price in PRODUCTS:
            _, was_created = Product.objects.get_or_create(
                sku=sku,
                defaults={
                    "name": name,
                    "price": Decimal(price),
                    "stock": stock,
                    "cost_price": Decimal(cost_price),
                },
            )
            created += was_created
    return created


def ensure_superuser(username: str, password: str) -> bool:
    """Make ``username`` an active superuser whose password is ``password``.

    Returns True when the account was created. An existing account is repaired rather
    than left as is, so the credentials the demo prints always work.
    """
    User = get_user_model()
    user = User._default_manager.filter(**{User.USERNAME_FIELD: username}).first()
    if user is None:
        User._default_manager.db_manager().create_superuser(username, email="", password=password)
        return True
    changed = not (user.is_active and user.is_staff and user.is_superuser)
    user.is_active = user.is_staff = user.is_superuser = True
    if not user.check_password(password):
        user.set_password(password)
        changed = True
    if changed:
        user.save()
    return False

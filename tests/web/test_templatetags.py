"""The ``{% load broadcast %}`` tags: live markup, broadcast values only, never excluded ones."""

from __future__ import annotations

import json
import re
import socket
import time
from decimal import Decimal
from html import unescape
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db.models import F, Q
from django.template import Context, Template, TemplateSyntaxError
from django.test import Client, override_settings

from broadcast_app.capture.registry import get_config
from broadcast_app.events.change import field_values, to_json_data
from broadcast_app.events.filters import compile_where
from broadcast_app.instance.hub import hub
from broadcast_app.publish import publisher
from broadcast_app.templatetags.broadcast import NotBroadcastField, UntranslatableQueryset
from broadcast_app.transport.routes import route
from tests.conftest import layers_for
from tests.testapp.models import Product

pytestmark = pytest.mark.django_db

#: a cost price no page may ever show
SECRET = "31337.00"


def render(source: str, **context: Any) -> str:
    return Template("{% load broadcast %}" + source).render(Context(context))


@pytest.fixture
def product() -> Product:
    with override_settings(BROADCAST_ENABLED=False):
        return Product.objects.create(
            name="Anvil <b>heavy</b>", sku="AN-1", price=Decimal("12.5"), stock=3,
            cost_price=Decimal(SECRET),
        )  # fmt: skip


def test_live_field_renders_the_broadcast_value_in_a_bound_element(product: Product) -> None:
    html = render('{% live_field product "price" %}', product=product)
    assert html.startswith('<span class="broadcast-field" data-broadcast-model="testapp.product"')
    assert f'data-broadcast-pk="{product.pk}"' in html
    assert 'data-broadcast-field="price" data-broadcast-kind="number"' in html
    # As the event carries it: two decimal places, not the "12.5" that was assigned.
    assert html.endswith(">12.50</span>")


def test_live_field_escapes_and_takes_an_element_and_a_class(product: Product) -> None:
    html = render('{% live_field product "name" element="td" css_class="x" %}', product=product)
    assert html.startswith('<td class="broadcast-field x" ')
    assert "Anvil &lt;b&gt;heavy&lt;/b&gt;</td>" in html
    with pytest.raises(TemplateSyntaxError, match="not an element name"):
        render('{% live_field product "name" element="td onclick=x" %}', product=product)


def test_live_field_renders_datetimes_as_time_elements(product: Product) -> None:
    html = render('{% live_field product "updated_at" %}', product=product)
    iso = re.search(r'<time datetime="([^"]+)">', html)
    assert iso is not None, html
    assert iso.group(1).endswith("Z")
    assert 'data-broadcast-kind="datetime"' in html


def test_live_field_refuses_an_excluded_field(product: Product) -> None:
    with pytest.raises(NotBroadcastField, match=r"testapp\.product\.cost_price is not broadcast"):
        render('{% live_field product "cost_price" %}', product=product)


def test_live_field_refuses_unknown_fields_and_models(product: Product) -> None:
    with pytest.raises(NotBroadcastField, match="no broadcast field 'colour'"):
        render('{% live_field product "colour" %}', product=product)
    user = User.objects.create_user("someone")
    with pytest.raises(NotBroadcastField, match=r"auth\.user is not registered"):
        render('{% live_field user "username" %}', user=user)
    with pytest.raises(TemplateSyntaxError, match="needs a model instance"):
        render('{% live_field data "price" %}', data={"price": 1})


def test_live_table_renders_rows_cells_and_a_row_template(product: Product) -> None:
    html = render(
        '{% live_table products "name" "price" "updated_at" order="pk" table_id="t" %}',
        products=Product.objects.all(),
    )
    assert 'data-broadcast-table data-broadcast-model="testapp.product"' in html
    assert 'data-broadcast-order="pk"' in html
    assert '<table id="t" class="broadcast-table">' in html
    assert f'<tr data-broadcast-pk="{product.pk}">' in html
    assert re.search(
        r'data-broadcast-field="price" data-broadcast-kind="number">12\.50</td>', html
    )
    assert ">Name</th>" in html and ">Price</th>" in html
    assert "<template data-broadcast-row>" in html
    assert re.search(r"<p [^>]*data-broadcast-empty hidden>", html)
    assert SECRET not in html and "cost" not in html.lower()


def test_live_table_refuses_an_excluded_column_even_when_loaded(product: Product) -> None:
    with pytest.raises(NotBroadcastField, match="cost_price is not broadcast"):
        render('{% live_table products "name" "cost_price" %}', products=Product.objects.all())


def test_live_table_default_columns_are_the_broadcast_fields() -> None:
    html = render("{% live_table products %}", products=Product.objects.none())
    columns = re.findall(r"<th scope=\"col\"[^>]*>([^<]+)</th>", html)
    assert columns == ["Name", "SKU", "Price", "Stock", "Updated at"]
    assert re.search(r"<p [^>]*data-broadcast-empty>Nothing here yet\.</p>", html)


def test_live_table_takes_dicts_with_a_model_and_drops_their_private_keys(
    product: Product,
) -> None:
    rows = Product.objects.values("id", "name", "cost_price")
    html = render('{% live_table rows "name" model="testapp.product" %}', rows=rows)
    assert f'data-broadcast-pk="{product.pk}"' in html
    assert SECRET not in html
    with pytest.raises(TemplateSyntaxError, match="needs a queryset"):
        render('{% live_table rows "name" %}', rows=list(rows))
    with pytest.raises(TemplateSyntaxError, match="order must be one of"):
        render('{% live_table products order="random" %}', products=Product.objects.all())


def test_a_custom_serializer_keys_are_live_but_private_names_are_not(
    product: Product, reregister: Any
) -> None:
    reregister(
        exclude=["cost_price"],
        serializer=lambda p: {"id": p.pk, "label": f"{p.name}!", "cost_price": p.cost_price},
    )
    html = render('{% live_field product "label" %}', product=product)
    assert "Anvil &lt;b&gt;heavy&lt;/b&gt;!</span>" in html
    with pytest.raises(NotBroadcastField):
        render('{% live_field product "cost_price" %}', product=product)


def test_client_and_status_tags() -> None:
    html = render("{% broadcast_client %}{% broadcast_status %}")
    assert '<script type="module" src="/static/broadcast_app/js/page.js"></script>' in html
    assert '<link rel="stylesheet" href="/static/broadcast_app/css/live.css">' in html
    assert 'data-broadcast-status data-status="connecting"' in html


# -- the first render's since ---------------------------------------------------------

SINCE = re.compile(r'data-(?:broadcast-)?since="([^"]*)"')


@pytest.fixture
def no_event_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    """This instance's listener has received no event yet (a freshly started instance)."""
    monkeypatch.setattr(hub, "last_ids", {})


@pytest.mark.django_db(transaction=True)
def test_first_render_since_is_read_from_the_log_on_an_instance_that_saw_no_event(
    no_event_seen: None, redis_client: Any, client: Client
) -> None:
    product = Product.objects.create(
        name="Anvil", sku="AN-9", price=Decimal("1.00"), stock=1, cost_price=Decimal("0.5")
    )
    publisher.flush(5)
    last = redis_client.hget(route("testapp.product").meta, "last").decode()
    field = render('{% live_field product "name" %}', product=product)
    table = render("{% live_table products %}", products=Product.objects.all())
    assert SINCE.findall(field) == [last]
    assert SINCE.findall(table) == [last]
    # The live admin too.
    client.force_login(User.objects.create_superuser("boss", "b@example.com", "x"))
    page = client.get("/admin/testapp/product/").content.decode()
    assert SINCE.findall(page) == [last]
    # What the instance received itself, when it has, is used without asking Redis.
    hub.last_ids["testapp.product"] = "1-0:seen"
    assert SINCE.findall(render('{% live_field product "name" %}', product=product)) == [
        "1-0:seen"
    ]


@pytest.mark.django_db(transaction=True)
def test_first_render_since_is_bounded_when_redis_does_not_answer(
    no_event_seen: None, product: Product
) -> None:
    # A Redis that accepts connections and never answers (a blackhole).
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        layers = layers_for(f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        with override_settings(CHANNEL_LAYERS=layers, BROADCAST_REDIS_TIMEOUT=0.2):
            started = time.monotonic()
            first = render('{% live_field product "name" %}', product=product)
            waited = time.monotonic() - started
            started = time.monotonic()
            second = render('{% live_field product "name" %}', product=product)
            again = time.monotonic() - started
    # No since (the subscription starts from the server's position), after one bounded
    # wait; the next pages do not wait at all.
    assert SINCE.findall(first) == SINCE.findall(second) == [""]
    assert 0.2 <= waited < 1.0
    assert again < 0.1


# -- live_table of a filtered queryset ------------------------------------------------


def where_attribute(html: str) -> dict[str, Any] | None:
    found = re.search(r'data-broadcast-where="([^"]*)"', html)
    return None if found is None else json.loads(unescape(found.group(1)))


@pytest.mark.parametrize(
    ("queryset", "where"),
    [
        (lambda: Product.objects.all(), None),
        (lambda: Product.objects.order_by("-pk"), None),
        (lambda: Product.objects.filter(stock__lt=5), {"stock__lt": 5}),
        (
            lambda: Product.objects.filter(stock__lt=5).filter(name__icontains="pro"),
            {"name__icontains": "pro", "stock__lt": 5},
        ),
        (lambda: Product.objects.filter(price=Decimal("12.5")), {"price": "12.5"}),
        (lambda: Product.objects.filter(pk__in=[3, 1]), {"id__in": [3, 1]}),
        (lambda: Product.objects.filter(name=None), {"name__isnull": True}),
        (
            lambda: Product.objects.filter(stock__gte=1, sku__startswith="AN"),
            {"sku__startswith": "AN", "stock__gte": 1},
        ),
        (lambda: Product.objects.none(), {"pk__in": []}),
    ],
)
def test_live_table_follows_a_filtered_querysets_filter(
    product: Product, queryset: Any, where: dict[str, Any] | None
) -> None:
    html = render("{% live_table products %}", products=queryset())
    assert where_attribute(html) == where


def test_the_where_of_a_queryset_matches_the_rows_the_queryset_returns() -> None:
    with override_settings(BROADCAST_ENABLED=False):
        products = [
            Product.objects.create(name=name, sku=f"S{stock}", price=Decimal(price), stock=stock)
            for name, price, stock in [
                ("Pro anvil", "12.50", 4), ("anvil", "5.00", 0), ("Professional", "99", 9),
                ("Hammer", "12.5", 2),
            ]
        ]  # fmt: skip
    config = get_config(Product)
    for queryset in [
        Product.objects.filter(stock__lt=5, name__icontains="pro"),
        Product.objects.filter(price=Decimal("12.5")).filter(stock__gt=0),
        Product.objects.filter(pk__in=[products[0].pk, products[2].pk], stock__lte=4),
    ]:
        where = where_attribute(render("{% live_table products %}", products=queryset))
        assert where is not None
        compiled = compile_where(config, where).compiled
        shown = set(queryset.values_list("pk", flat=True))
        for row in products:
            data = to_json_data(field_values(config, row))
            assert compiled.test(data, {}, False) == (row.pk in shown), (where, row)


@pytest.mark.parametrize(
    ("queryset", "reason"),
    [
        (lambda: Product.objects.exclude(stock=0), "negates a condition"),
        (lambda: Product.objects.filter(Q(stock=0) | Q(stock=5)), "with OR, not AND"),
        (lambda: Product.objects.filter(stock__lt=F("price")), "an expression or a subquery"),
        (lambda: Product.objects.filter(name__iexact="x"), "live filters have no 'iexact'"),
        (lambda: Product.objects.filter(pk__in=Product.objects.filter(stock=1)), "subquery"),
    ],
)
def test_live_table_refuses_a_filter_no_where_can_express(queryset: Any, reason: str) -> None:
    with pytest.raises(UntranslatableQueryset, match=re.escape(reason)):
        render("{% live_table products %}", products=queryset())


def test_live_table_refuses_a_filter_on_a_field_that_is_not_broadcast() -> None:
    # Following it would tell which rows hold which cost price.
    with pytest.raises(NotBroadcastField, match="'cost_price' is not broadcast"):
        render(
            '{% live_table products "name" %}',
            products=Product.objects.filter(cost_price__lt=10),
        )

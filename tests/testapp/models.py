from __future__ import annotations

from decimal import Decimal

from django.db import models


class Product(models.Model):
    """The shape of a typical broadcast model (the demo's too): saves and deletes are
    broadcast, ``cost_price`` excepted."""

    name = models.CharField(max_length=200)
    sku = models.CharField("SKU", max_length=64, unique=True)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    stock = models.IntegerField(default=0)
    cost_price = models.DecimalField(max_digits=10, decimal_places=2, default=Decimal("0"))
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return f"{self.name} ({self.sku})"


class Tag(models.Model):
    name = models.CharField(max_length=50)

    def __str__(self) -> str:
        return self.name


class Article(models.Model):
    title = models.CharField(max_length=100)
    hits = models.IntegerField(default=0)
    secret = models.CharField(max_length=50, default="")
    tags = models.ManyToManyField(Tag, blank=True, related_name="articles")

    def __str__(self) -> str:
        return self.title


class Comment(models.Model):
    """Deletes of an article cascade here; deletes of a comment cascade to its children
    and set its replies' ``reply_to`` to null."""

    article = models.ForeignKey(Article, on_delete=models.CASCADE, related_name="comments")
    parent = models.ForeignKey(
        "self", on_delete=models.CASCADE, null=True, blank=True, related_name="children"
    )
    reply_to = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="replies"
    )
    body = models.CharField(max_length=200, default="")

    def __str__(self) -> str:
        return self.body


class Attachment(models.Model):
    """Field kinds whose attribute is not a plain immutable value: a file, JSON, a key."""

    article = models.ForeignKey(Article, on_delete=models.CASCADE, related_name="attachments")
    file = models.FileField(upload_to="attachments/", blank=True)
    meta = models.JSONField(default=dict)

    def __str__(self) -> str:
        return self.file.name or "attachment"


class ArticleProxy(Article):
    """Writes through a proxy publish as the concrete model (``testapp.article``)."""

    class Meta:
        proxy = True


class Place(models.Model):
    """A registered multi-table parent; ``Restaurant`` is registered too, ``Bar`` not."""

    name = models.CharField(max_length=50)
    city = models.CharField(max_length=50, default="")

    def __str__(self) -> str:
        return self.name


class Restaurant(Place):
    seats = models.IntegerField(default=0)


class Bar(Place):
    happy_hour = models.BooleanField(default=False)


class NoteQuerySet(models.QuerySet["Note"]):
    """Overrides that must keep working with the bulk methods wrapped: each write stamps
    ``by`` with the queryset's class name, and ``open()`` is a custom filter."""

    def open(self) -> NoteQuerySet:
        return self.filter(closed=False)

    def update(self, **kwargs: object) -> int:
        kwargs.setdefault("by", type(self).__name__)
        return super().update(**kwargs)

    def bulk_create(self, objs, *args, **kwargs):  # type: ignore[no-untyped-def]
        objs = list(objs)
        for obj in objs:
            obj.by = type(self).__name__
        return super().bulk_create(objs, *args, **kwargs)

    def delete(self) -> tuple[int, dict[str, int]]:
        # A soft delete, as many projects do: an update, never a DELETE.
        return self.update(closed=True), {}


class NoteManager(models.Manager["Note"]):
    def get_queryset(self) -> NoteQuerySet:
        return super().get_queryset().exclude(text="hidden")  # type: ignore[return-value]


class Note(models.Model):
    text = models.CharField(max_length=50)
    closed = models.BooleanField(default=False)
    by = models.CharField(max_length=50, default="")

    objects = NoteQuerySet.as_manager()
    visible = NoteManager.from_queryset(NoteQuerySet)()

    def __str__(self) -> str:
        return self.text

from __future__ import annotations

from django.db import models


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

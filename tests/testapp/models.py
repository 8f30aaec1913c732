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

"""Settings of the demo project, configured from the environment.

``REDIS_URL``             Redis the instances share (default ``redis://127.0.0.1:6379/0``).
``REDIS_SENTINELS``       ``host:port,host:port,...``: Redis Sentinel instead of ``REDIS_URL``,
                          for the master ``REDIS_MASTER_NAME`` (default ``mymaster``).
``REDIS_CLUSTER_NODES``   ``host:port,host:port,...``: a Redis Cluster (or Valkey cluster mode)
                          carries the events instead (``BROADCAST_REDIS_CLUSTER``);
                          ``REDIS_URL`` is then not used.
``DATABASE_URL``          any URL dj-database-url reads (default: SQLite beside manage.py).
``DJANGO_ALLOWED_HOSTS``  comma-separated (default ``localhost,127.0.0.1``).
``DJANGO_SECRET_KEY``     required in any real deployment; a development key otherwise.
``DJANGO_DEBUG``          ``1`` or ``true`` turns debug on (default off).
``BROADCAST_DELIVERY``    ``best_effort`` (default) or ``outbox``.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import dj_database_url

from broadcast_app.dev.databases import tuned

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY", "django-insecure-broadcast-demo-only-never-use-in-production"
)
DEBUG = _env_flag("DJANGO_DEBUG")
ALLOWED_HOSTS = [
    host.strip()
    for host in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1").split(",")
    if host.strip()
]

INSTALLED_APPS = [
    # Above django.contrib.admin: its admin/index.html (a link to the dashboard) wins.
    "broadcast_app",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "project.demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Right after SecurityMiddleware, as WhiteNoise documents; serves static files
    # with DEBUG off too, so the demo runs the same way under uvicorn either way.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # X-Socket-ID / X-Broadcast-To-Others: which websocket a request's changes came from.
    "broadcast_app.middleware.SocketIdMiddleware",
]

ROOT_URLCONF = "project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "project.wsgi.application"
ASGI_APPLICATION = "project.asgi.application"

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_SENTINELS = [
    (host, int(port))
    for host, _, port in (
        address.strip().rpartition(":")
        for address in os.environ.get("REDIS_SENTINELS", "").split(",")
        if address.strip()
    )
]
REDIS_HOST: str | dict[str, Any] = REDIS_URL
if REDIS_SENTINELS:
    REDIS_HOST = {
        "sentinels": REDIS_SENTINELS,
        "master_name": os.environ.get("REDIS_MASTER_NAME", "mymaster"),
        "socket_connect_timeout": 1,
        "sentinel_kwargs": {"socket_timeout": 1, "socket_connect_timeout": 1},
    }
REDIS_CLUSTER_NODES = [
    address.strip()
    for address in os.environ.get("REDIS_CLUSTER_NODES", "").split(",")
    if address.strip()
]
if REDIS_CLUSTER_NODES:
    BROADCAST_REDIS_CLUSTER = REDIS_CLUSTER_NODES
    # broadcast_app does not use the channel layer on a cluster (channels-redis cannot).
    # The layer entry stays for the project's own consumers: channels-redis' pub/sub
    # layer uses no keys, which one node of a cluster serves (but only that node).
    REDIS_HOST = f"redis://{REDIS_CLUSTER_NODES[0]}/0"

# The demo runs two server processes on one SQLite file (see broadcast_app.dev.databases).
DATABASES = {
    "default": tuned(
        dj_database_url.parse(
            os.environ.get("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
        )
    )
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [REDIS_HOST]},
    },
}

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "demo-default",
    },
    # Per-instance on purpose: broadcast_app keeps it coherent across instances.
    "broadcast": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "demo-broadcast",
    },
}
BROADCAST_CACHE_ALIAS = "broadcast"
BROADCAST_DELIVERY = os.environ.get("BROADCAST_DELIVERY", "best_effort")
# Other libraries' undocumented fast paths (docs/architecture.md): "none", or a
# comma-separated list of those to keep; unset: all of them.
_fast_paths = os.environ.get("BROADCAST_FAST_PATHS", "").strip()
if _fast_paths:
    BROADCAST_FAST_PATHS = [] if _fast_paths == "none" else _fast_paths.split(",")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# Serve straight from the apps' static/ directories: no collectstatic step for the demo.
WHITENOISE_USE_FINDERS = True
# Without collectstatic STATIC_ROOT does not exist, which WhiteNoise would warn about
# in every process it starts in.
warnings.filterwarnings("ignore", message=f"No directory at: {re.escape(str(STATIC_ROOT))}")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "broadcast_app": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "project": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}

"""Settings of the library's tests: Django's contrib apps, channels, broadcast_app and the
test app (tests.testapp), nothing of the demo project's.

The environment picks the servers, as in the demo: ``DATABASE_URL`` (SQLite in memory by
default; PostgreSQL or MySQL/MariaDB URLs as dj-database-url reads them) and
``REDIS_URL`` (the suite's fixtures point the channel layer at the redis-server they
start; a subprocess of a test is given that server's URL).
"""

from __future__ import annotations

import os

import dj_database_url

from broadcast_app.dev.databases import tuned

SECRET_KEY = "broadcast-app-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]

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
    "tests.testapp",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # X-Socket-ID / X-Broadcast-To-Others: which websocket a request's changes came from.
    "broadcast_app.middleware.SocketIdMiddleware",
]

ROOT_URLCONF = "tests.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
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

# Tests write from several threads (see broadcast_app.dev.databases).
DATABASES = {
    "default": tuned(dj_database_url.parse(os.environ.get("DATABASE_URL", "sqlite://:memory:")))
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")]},
    },
}

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "tests-default",
    },
    # Per-instance, as broadcast_app expects of the cache it keeps coherent.
    "broadcast": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "tests-broadcast",
    },
}
BROADCAST_CACHE_ALIAS = "broadcast"

# The suite's own tests publish to the redis-server its fixtures start (never to a real
# one); a user's tests publish nothing unless they set this (see broadcast_app.transport.testenv).
BROADCAST_PUBLISH_IN_TESTS = True

# Tests run relays themselves, at known points (and a thread querying the database
# would do so in tests that have none).
BROADCAST_OUTBOX_RELAY = False

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Fast hashing: the suite creates many users, and no password here guards anything.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

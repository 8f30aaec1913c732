"""ASGI entry point: Django over HTTP, broadcast_app's consumer over websockets.

``with_broadcast`` handles the lifespan protocol, which starts and stops this
instance's listener, so run uvicorn with ``--lifespan on``.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

# Set up Django (apps, models) before anything below imports models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from broadcast_app.asgi import with_broadcast  # noqa: E402
from broadcast_app.routing import websocket_urlpatterns  # noqa: E402

application = with_broadcast(
    ProtocolTypeRouter(
        {
            "http": django_asgi_app,
            "websocket": AllowedHostsOriginValidator(
                AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
            ),
        }
    )
)

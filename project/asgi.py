"""ASGI entry point: Django over HTTP, broadcast_app's consumer over websockets.

``with_broadcast`` handles the lifespan protocol, which starts and stops this
instance's listener, so run uvicorn with ``--lifespan on``. ``websocket_application()``
is the broadcast route behind Origin checking and session authentication.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

# Set up Django (apps, models) before anything below imports models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402

from broadcast_app.asgi import with_broadcast  # noqa: E402
from broadcast_app.routing import websocket_application  # noqa: E402

application = with_broadcast(
    ProtocolTypeRouter({"http": django_asgi_app, "websocket": websocket_application()})
)

"""The demo project of broadcast_app: settings, URLs and the ASGI/WSGI entry points."""

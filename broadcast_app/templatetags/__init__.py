"""Template tags of broadcast_app (``{% load broadcast %}``)."""

"""Tests of broadcast_app.events (the package layout, mirrored)."""

"""Tests of broadcast_app.instance (the package layout, mirrored)."""

"""Tests of broadcast_app.dev (the package layout, mirrored)."""

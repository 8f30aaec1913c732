"""Tests of broadcast_app.capture (the package layout, mirrored)."""

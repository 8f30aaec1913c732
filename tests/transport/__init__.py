"""Tests of broadcast_app.transport (the package layout, mirrored)."""

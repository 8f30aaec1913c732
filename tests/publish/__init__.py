"""Tests of broadcast_app.publish (the package layout, mirrored)."""

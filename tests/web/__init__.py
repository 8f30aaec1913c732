"""Tests of broadcast_app.web (the package layout, mirrored)."""

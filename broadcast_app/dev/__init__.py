"""Development-only helpers (the demo, the tests, the benchmark); never imported by
the runtime package."""

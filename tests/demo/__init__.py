"""The demo project's own tests: they run the demo (its manage.py, its ASGI application)
in subprocesses, on its own settings; the library's tests are the rest of tests/."""

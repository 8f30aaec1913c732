"""The work behind ``manage.py broadcast_benchmark``: broadcast_app against its floor.

``runner`` drives one run: it starts Redis, a uvicorn instance of the project, the
floor relay and the client fleet, makes the saves itself, and collects the numbers.
``clients`` is the websocket client fleet (its own process, no Django), ``floor_relay``
the bare ASGI relay the fleet also connects to, ``processes`` starts and stops the
child processes, ``environment`` provides Redis, the database, a user and products,
``saves`` paces the save loops, ``report`` prints and writes results.

The modules the child processes import (``clients``, ``floor_relay``, ``report``) must
not import Django: keep this file free of imports.
"""

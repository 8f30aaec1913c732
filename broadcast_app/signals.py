"""Signals broadcast_app sends, for projects to hook into."""

from __future__ import annotations

from django.dispatch import Signal

#: Sent on every instance, in its event loop, for each change event it receives (also
#: for events this instance published). ``sender`` is the model class; ``event`` is the
#: event dict of ``docs/protocol.md`` (``id``, ``op``, ``model``, ``pk``, ``data``,
#: ``changed``, ``ts``, ``origin``). Use it to drop your own cache keys. Receivers may
#: be ``async def`` (cheapest); sync receivers run in a thread via ``sync_to_async``.
#: Sent after the broadcast cache was updated and before websocket clients get the event.
change_received = Signal()

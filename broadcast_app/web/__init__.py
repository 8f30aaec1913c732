"""How a change reaches people: the websocket consumer and its sender, the dashboard,
the live admin (the template tags are in ``broadcast_app/templatetags/``, where Django
looks)."""

"""How a change reaches people: the websocket consumer, views, admin, template tags."""

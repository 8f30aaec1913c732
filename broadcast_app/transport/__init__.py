"""Redis: the routes and key names, the Lua scripts, the log reader, the clients."""

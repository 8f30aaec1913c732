"""How a change travels: the transport's narrow interface (:mod:`.interface`) and its
Redis implementation (publishing, routes and key names, Lua scripts, the log reader,
clients)."""

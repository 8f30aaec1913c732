"""Where a change lands: the runtime, the listener, gap repair, cache, heartbeat."""

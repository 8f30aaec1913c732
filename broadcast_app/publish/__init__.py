"""How a change leaves the process: the publisher thread, the outbox and its relay."""

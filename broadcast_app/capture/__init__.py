"""Where a change is born: signal receivers, the per-transaction buffer, bulk writes."""

"""Exchange protocols: subscribe messages, frame parsers, keepalive rules, REST backfill (pure, no I/O)."""

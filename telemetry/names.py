"""The names people see for the supervision tree's actors: in reports, `health`, `top` and metric labels.

A feed's child id is feed-<name> and a buffer's buffer-<table> (cli/service.py), unique among siblings and
internal; everything a person reads names a feed as configured (`binance-sim`) and a buffer by its table
(`trades`, without questdb.table_prefix), as the `feed` and `table` metric labels and the log lines do.
"""
from __future__ import annotations

FEED_CHILD_PREFIX = "feed-"
BUFFER_CHILD_PREFIX = "buffer-"


def known_name(child_id: str) -> str:
    """A feed's configured name, a buffer's table; any other actor (health, ledger, a supervisor) its child id."""
    for prefix in (FEED_CHILD_PREFIX, BUFFER_CHILD_PREFIX):
        if child_id.startswith(prefix):
            return child_id.removeprefix(prefix)
    return child_id

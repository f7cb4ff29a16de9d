"""Trade-id sequence tracking: where ids are contiguous, a jump is a gap to backfill."""
from __future__ import annotations

from feeds.base import Gap


class SequenceTracker:
    """Last id seen per symbol. State survives reconnects, so the outage itself shows up as a gap."""

    def __init__(self, last_ids: dict[str, int] | None = None):
        self.last_ids: dict[str, int] = dict(last_ids or {})

    def observe(self, rows: list) -> list[Gap]:
        """Advance over live rows (in arrival order); return the gaps they reveal."""
        gaps = []
        last_ids = self.last_ids
        for row in rows:
            symbol, trade_id = row[2], row[3]
            last = last_ids.get(symbol)
            if last is None or trade_id == last + 1:
                last_ids[symbol] = trade_id
            elif trade_id > last + 1:
                gaps.append(Gap(symbol, last + 1, trade_id - 1))
                last_ids[symbol] = trade_id
            # trade_id <= last: a late or repeated id; the dedup window has already judged it
        return gaps

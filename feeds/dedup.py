"""Sliding-window duplicate filter keyed by (exchange, symbol, trade id)."""
from __future__ import annotations

from collections import OrderedDict


class DedupWindow:
    """Remembers keys seen within the last `window_s` seconds, at most `max_entries` of them."""

    def __init__(self, window_s: float, max_entries: int):
        self.window_s, self.max_entries = window_s, max_entries
        self._seen: OrderedDict[tuple, float] = OrderedDict()
        self.dropped = 0

    def fresh(self, rows: list, now: float) -> list:
        """The rows not seen before (in order); remembers them."""
        if self.max_entries == 0:
            return rows
        self._expire(now)
        seen = self._seen
        kept = []
        for row in rows:
            key = (row[1], row[2], row[3])  # Trade: exchange, symbol, trade_id
            if key in seen:
                self.dropped += 1
                continue
            seen[key] = now
            kept.append(row)
        self._expire(now)
        return kept

    def _expire(self, now: float) -> None:
        seen, horizon = self._seen, now - self.window_s
        while seen and (len(seen) > self.max_entries or next(iter(seen.values())) < horizon):
            seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)

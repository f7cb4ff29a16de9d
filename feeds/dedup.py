"""Sliding-window duplicate filter keyed by (exchange, symbol, trade id)."""
from __future__ import annotations

from operator import itemgetter

KEY = itemgetter(1, 2, 3)  # Trade: exchange, symbol, trade_id


class DedupWindow:
    """Remembers the keys seen in the last `window_s` seconds (up to twice that), at most `max_entries` of them.

    Two generations of keys: new keys go to the current one, which becomes the previous one once it
    is window_s old or holds half of max_entries; the previous one is then forgotten whole. A lookup
    is two set probes and expiry costs nothing per key, where a per-key timestamp queue cost more than
    the rest of a trade's handling.
    """

    def __init__(self, window_s: float, max_entries: int):
        self.window_s, self.max_entries = window_s, max_entries
        self._capacity = max(1, max_entries // 2)
        self._current: set[tuple] = set()
        self._previous: set[tuple] = set()
        self._started = 0.0  # when the current generation began
        self.dropped = 0

    def fresh(self, rows: list, now: float) -> list:
        """The rows not seen before (in order); remembers them."""
        if self.max_entries == 0:
            return rows
        if now - self._started >= self.window_s:
            self._rotate(now)
        current, previous, capacity = self._current, self._previous, self._capacity
        # The common batch, all new, in set operations that loop in C: a third of the cost. One that fills the
        # current generation starts the next one where the loop below would (at the default 10,000 entries a busy
        # feed fills a generation every few dozen batches).
        batch = set(map(KEY, rows))
        if len(batch) == len(rows) and batch.isdisjoint(current) and batch.isdisjoint(previous):
            if len(current) + len(batch) <= capacity:
                current |= batch
                return rows
            keys, taken = list(map(KEY, rows)), 0
            while taken < len(keys):
                if len(self._current) >= capacity:
                    self._rotate(now)
                room = capacity - len(self._current)
                self._current.update(keys[taken:taken + room])
                taken += room
            return rows
        kept = []
        for row in rows:
            key = KEY(row)
            if key in current or key in previous:
                self.dropped += 1
                continue
            if len(current) >= capacity:
                self._rotate(now)
                current, previous = self._current, self._previous
            current.add(key)
            kept.append(row)
        return kept

    def _rotate(self, now: float) -> None:
        # Keys older than two windows are forgotten with both generations.
        self._previous = self._current if now - self._started < 2 * self.window_s else set()
        self._current, self._started = set(), now

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

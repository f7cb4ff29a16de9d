"""The flush policy, in one place: flush when max_rows wait, or when the oldest has waited flush_interval."""
from __future__ import annotations


class Batcher:
    """Rows waiting for the next flush. Pure: the caller passes the clock and owns the timer."""

    def __init__(self, max_rows: int, flush_interval_s: float):
        self.max_rows, self.flush_interval_s = max_rows, flush_interval_s
        self.rows: list = []
        self.oldest_at: float | None = None

    def add(self, rows: list, now: float) -> None:
        if not rows:
            return
        if not self.rows:
            self.oldest_at = now
        self.rows.extend(rows)

    def full(self) -> bool:
        return len(self.rows) >= self.max_rows

    def deadline(self) -> float | None:
        """When the oldest waiting row must be flushed at the latest."""
        return None if self.oldest_at is None else self.oldest_at + self.flush_interval_s

    def due(self, now: float) -> bool:
        return self.full() or (self.oldest_at is not None and now >= self.oldest_at + self.flush_interval_s)

    def take(self, limit: int | None = None) -> list:
        """Remove and return up to `limit` rows (all by default), oldest first."""
        limit = len(self.rows) if limit is None else limit
        taken, self.rows = self.rows[:limit], self.rows[limit:]
        self.oldest_at = None if not self.rows else self.oldest_at
        return taken

    def __len__(self) -> int:
        return len(self.rows)

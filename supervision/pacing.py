"""Connection attempts kept below an exchange's documented rate. Pure: the clock is passed in.

Binance allows 300 connection attempts per 5 minutes per IP; a network cut of every connection of a whole-market
feed (and of every other feed to the same host) must not reconnect faster than that, or the IP is banned. Each
attempt asks the pacer first and, when the window is full, waits as long as it says.
"""
from __future__ import annotations

from collections import deque

BUDGET_SHARE = 0.8  # stay this far inside the documented limit: clocks and other clients on the IP differ


class ConnectPacer:
    """A sliding window of attempts: at most `max_attempts` × BUDGET_SHARE within any `window_s` (0: unpaced)."""

    def __init__(self, max_attempts: int, window_s: float):
        self.window_s = window_s
        self.budget = max(1, int(max_attempts * BUDGET_SHARE)) if max_attempts and window_s else 0
        self.attempts: deque[float] = deque()

    def delay(self, now: float) -> float:
        """Seconds until an attempt is allowed (0: now)."""
        if not self.budget:
            return 0.0
        self._forget(now)
        if len(self.attempts) < self.budget:
            return 0.0
        return max(0.0, self.attempts[0] + self.window_s - now)

    def take(self, now: float) -> None:
        """An attempt is made now."""
        if self.budget:
            self._forget(now)
            self.attempts.append(now)

    def attempt(self, now: float) -> float:
        """Take an attempt now if the window allows (0), else how long to wait for one (nothing taken)."""
        wait = self.delay(now)
        if not wait:
            self.take(now)
        return wait

    def _forget(self, now: float) -> None:
        while self.attempts and self.attempts[0] <= now - self.window_s:
            self.attempts.popleft()


def message_interval_s(max_messages_per_s: float) -> float:
    """The spacing of a connection's own messages (subscribes) under a per-connection message limit: the budget's
    share, less one message a second for the pongs and pings the limit also counts (Binance: 5 per second)."""
    if not max_messages_per_s:
        return 0.0
    return 1.0 / max(0.5, max_messages_per_s * BUDGET_SHARE - 1.0)

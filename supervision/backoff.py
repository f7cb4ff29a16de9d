"""Exponential backoff with jitter and restart intensity: pure policy objects, no clocks of their own."""
from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable


class Backoff:
    """Delays min, min·f, min·f², … capped at max, each scaled by a random factor in [1-j, 1+j]."""

    def __init__(
        self,
        min_s: float,
        max_s: float,
        factor: float = 2.0,
        jitter: float = 0.2,
        rng: Callable[[], float] = random.random,
    ):
        if min_s < 0 or max_s < min_s:
            raise ValueError(f"backoff needs 0 <= min ({min_s}) <= max ({max_s})")
        self.min_s, self.max_s, self.factor, self.jitter, self._rng = min_s, max_s, factor, jitter, rng
        self.attempt = 0

    def next_delay(self) -> float:
        base = min(self.max_s, self.min_s * self.factor**self.attempt)
        self.attempt += 1
        scaled = base * (1 - self.jitter + 2 * self.jitter * self._rng())
        return min(self.max_s, scaled)

    def reset(self) -> None:
        self.attempt = 0


class RestartIntensity:
    """OTP's MaxR/MaxT: more than max_restarts within a sliding window of within_s means give up."""

    def __init__(self, max_restarts: int, within_s: float):
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
            raise ValueError(f"restart intensity needs an integer max_restarts >= 0, got {max_restarts!r}")
        if not within_s > 0:
            raise ValueError(f"restart intensity needs within_s > 0, got {within_s!r}")
        self.max_restarts, self.within_s = max_restarts, within_s
        self._times: deque[float] = deque()

    def record(self, now: float) -> bool:
        """Count a restart at `now`; False once the limit is exceeded."""
        self._times.append(now)
        while self._times and self._times[0] <= now - self.within_s:
            self._times.popleft()
        return len(self._times) <= self.max_restarts

    def __len__(self) -> int:
        return len(self._times)

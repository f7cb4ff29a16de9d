"""Circuit breaker: closed → open after N consecutive failures → half-open after a cool-down → closed on success."""
from __future__ import annotations

from marketfeed.telemetry.report import BreakerState


class CircuitBreaker:
    def __init__(self, failure_threshold: int, reset_after_s: float):
        if failure_threshold < 1 or reset_after_s < 0:
            raise ValueError("breaker needs failure_threshold >= 1 and reset_after_s >= 0")
        self.failure_threshold, self.reset_after_s = failure_threshold, reset_after_s
        self.failures = 0
        self.opened_at: float | None = None

    def state(self, now: float) -> BreakerState:
        if self.opened_at is None:
            return BreakerState.CLOSED
        return BreakerState.HALF_OPEN if now - self.opened_at >= self.reset_after_s else BreakerState.OPEN

    def allow(self, now: float) -> bool:
        """May we try now? In half-open, one trial is allowed; its outcome closes or re-opens."""
        return self.state(now) != BreakerState.OPEN

    def seconds_until_trial(self, now: float) -> float:
        return 0.0 if self.opened_at is None else max(0.0, self.opened_at + self.reset_after_s - now)

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.opened_at is not None or self.failures >= self.failure_threshold:
            self.opened_at = now  # a failed half-open trial re-opens for a full cool-down

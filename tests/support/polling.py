"""Waiting on a condition in tests: poll it, never sleep a fixed time as synchronization."""
from __future__ import annotations

import time


def poll(predicate, timeout: float = 30.0, what: str = "condition", interval: float = 0.02):
    """Call predicate() until it returns something truthy (returned); AssertionError after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if value := predicate():
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(interval)

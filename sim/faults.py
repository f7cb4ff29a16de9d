"""Fault plans: what a connection should do to its next messages. Pure; the server applies them."""
from __future__ import annotations

ANY_SYMBOL = None


class FaultPlan:
    """Pending per-connection faults on the trade stream: skips and duplicates, counted down."""

    def __init__(self) -> None:
        self._skips: dict[str | None, int] = {}  # symbol (or ANY_SYMBOL) → trades still to skip
        self._duplicates = 0

    def skip(self, k: int, symbol: str | None = ANY_SYMBOL) -> None:
        self._skips[symbol] = self._skips.get(symbol, 0) + k

    def duplicate(self, k: int) -> None:
        self._duplicates += k

    def copies(self, symbol: str) -> int:
        """How many times to send the next trade of `symbol`: 0 (lost in transit), 1, or 2."""
        for key in (symbol, ANY_SYMBOL):
            if self._skips.get(key):
                self._skips[key] -= 1
                return 0
        if self._duplicates:
            self._duplicates -= 1
            return 2
        return 1


def garbage_frames(k: int, sample: bytes) -> list[bytes]:
    """k malformed frames, cycling through the kinds a parser must survive.

    `sample` is a real frame of the exchange; cutting it gives realistic truncated JSON.
    """
    kinds = (
        b"\x7fnot json at all {",  # invalid JSON
        sample[: max(1, len(sample) // 2)],  # truncated JSON
        b'{"unexpected":["valid","json"],"of":"the wrong shape"}',  # valid JSON, wrong shape
    )
    return [kinds[n % len(kinds)] for n in range(k)]

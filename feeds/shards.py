"""How a feed's symbols are spread over its connections. Pure: no threads, no I/O.

An exchange caps the streams one connection may carry (Binance: 1024); a feed with more opens as many connections
as that requires, each with an even share, so that each has room for listings added later. When the universe
changes, only the connections whose symbols change are touched: a delisted symbol leaves its connection, a new one
joins the connection with the most room, or a new connection when none has any.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field


class ShardError(Exception):
    """The universe cannot be carried within the exchange's limits (e.g. more connections than it allows)."""


def symbols_per_connection(max_streams: int, streams_per_symbol: int, configured_max_streams: int = 0) -> int:
    """How many symbols one connection may carry: the documented stream limit (0: none), lowered by
    feeds.max_streams_per_connection (0: not lowered), over the streams each symbol costs. 0: unlimited."""
    limits = [n for n in (max_streams, configured_max_streams) if n]
    if not limits:
        return 0
    per_symbol = max(1, streams_per_symbol)
    capacity = min(limits) // per_symbol
    if capacity < 1:
        raise ShardError(f"one symbol costs {per_symbol} streams, more than the {min(limits)} a connection carries")
    return capacity


@dataclass(frozen=True)
class ShardChange:
    """What one update asks of the feed's connections (by connection index)."""

    opened: dict[int, tuple[str, ...]] = field(default_factory=dict)  # new connections and their symbols
    changed: dict[int, tuple[str, ...]] = field(default_factory=dict)  # connections whose symbols change: the new set
    closed: tuple[int, ...] = ()  # connections left with no symbol
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.opened or self.changed or self.closed)


class ShardPlan:
    """The feed's connections and the symbols each carries; indexes are never reused within one plan."""

    def __init__(self, capacity: int, max_connections: int = 0):
        self.capacity = capacity  # symbols per connection, 0: unlimited
        self.max_connections = max_connections  # connections the exchange allows at once, 0: unlimited
        self.shards: dict[int, tuple[str, ...]] = {}
        self._next_index = 0

    def symbols(self) -> frozenset[str]:
        return frozenset(s for shard in self.shards.values() for s in shard)

    def connections_needed(self, count: int) -> int:
        return 1 if not self.capacity else max(1, math.ceil(count / self.capacity))

    def update(self, universe: Iterable[str]) -> ShardChange:
        """Make the plan carry exactly `universe`; ShardError (the plan unchanged) if the limits cannot."""
        universe = list(universe)
        wanted = set(universe)
        held = self.symbols()
        added = [s for s in dict.fromkeys(universe) if s not in held]  # in listing order
        removed = sorted(held - wanted)
        shards = {i: tuple(s for s in shard if s in wanted) for i, shard in self.shards.items()}
        changed = {i: shard for i, shard in shards.items() if shard != self.shards[i]}
        placing = list(added)
        if self.capacity:
            for i in sorted(shards, key=lambda k: (len(shards[k]), k)):
                room = self.capacity - len(shards[i])
                if room > 0 and placing:
                    changed[i] = shards[i] = shards[i] + tuple(placing[:room])
                    placing = placing[room:]
        elif shards and placing:
            first = min(shards)
            changed[first] = shards[first] = shards[first] + tuple(placing)
            placing = []
        closed = tuple(i for i, shard in shards.items() if not shard)
        live = len(shards) - len(closed)
        opened: dict[int, tuple[str, ...]] = {}
        if placing:
            count = self.connections_needed(len(placing))
            if self.max_connections and live + count > self.max_connections:
                raise ShardError(f"{len(wanted)} symbols need {live + count} connections; the exchange allows "
                                 f"{self.max_connections}")
            size = math.ceil(len(placing) / count)
            for start in range(0, len(placing), size):
                opened[self._next_index] = tuple(placing[start:start + size])
                self._next_index += 1
        for i in closed:
            del shards[i]
            changed.pop(i, None)
        shards.update(opened)
        self.shards = shards
        return ShardChange(opened, changed, closed, tuple(added), tuple(removed))


@dataclass(frozen=True)
class InstanceShard:
    """This instance's share of every feed's symbols (service.shard "K/N"): those whose stable hash mod N is K, so
    N instances with shards 0/N … N-1/N carry each symbol exactly once, whatever their hosts or start order."""

    k: int
    n: int

    @classmethod
    def parse(cls, spec: str, hostname: str) -> InstanceShard | None:
        """"K/N", or "auto/N" (K: the ordinal a StatefulSet puts at the end of the host name, marketfeed-2 → 2); ""
        is the whole market (None). ValueError names what is wrong."""
        if not spec:
            return None
        k_text, _, n_text = spec.partition("/")
        if k_text == "auto":
            ordinal = hostname.rsplit("-", 1)[-1]
            if not ordinal.isdigit():
                raise ValueError(f"auto takes the ordinal at the end of the host name, and {hostname!r} has none")
            k_text = ordinal
        if not (k_text.isdigit() and n_text.isdigit()) or not 0 <= int(k_text) < int(n_text):
            raise ValueError(f"{spec!r} is not K/N with 0 <= K < N (K may be auto)")
        return cls(int(k_text), int(n_text))

    def takes(self, symbol: str) -> bool:
        digest = hashlib.blake2b(symbol.upper().encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.n == self.k

    def share(self, symbols: Iterable[str]) -> tuple[str, ...]:
        return tuple(s for s in symbols if self.takes(s))

    def __str__(self) -> str:
        return f"{self.k}/{self.n}"

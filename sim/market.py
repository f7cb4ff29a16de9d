"""Deterministic ground truth: what trades "happened" on an exchange, computed, never stored.

Trade i of a symbol is a pure function of (seed, exchange, symbol, i) plus the market's rate and
start time: prices walk from a seeded PRNG, so the same seed gives the same trades in every run
and in every call. Pure: no clock, no I/O. The simulator decides how many trades have happened:
its clock counts ticks for the whole exchange, and a symbol listed at tick L (0 for those listed
from the start) has its trade i at tick L + i, until it is delisted.
"""
from __future__ import annotations

import random
import threading
from array import array
from collections.abc import Iterable
from dataclasses import dataclass

DECIMALS = 8  # prices and quantities are rendered with 8 decimals, as Binance spot does
_SCALE = 10**DECIMALS
TICK = 1_000_000  # price tick in 1e-8 units: 0.01
ID_BLOCK = 1_000_000  # symbol k's first trade id is (k + 1) * ID_BLOCK
DEFAULT_START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
GENERATE_AHEAD = 255  # generate in blocks: one lock and loop setup per block, not per trade…
MIN_GENERATE_AHEAD = 15  # …but a slow symbol's block is about a second of its trades: 3,000 symbols at 0.5/s
# generating 255 each on their first trade held the clock's first tick for seconds
MAX_MS_RATE = 1000.0  # above this many trades/s, event times stay 1 ms apart (market time runs ahead)

# Plausible opening prices so demo dashboards look like a market; other bases get a seeded price.
_OPENING_PRICE = {"BTC": 60_000, "ETH": 3_000, "SOL": 150, "BNB": 550, "XRP": 0.5, "DOGE": 0.15}


@dataclass(frozen=True, slots=True)
class Trade:
    symbol: str
    index: int  # 0-based position in the symbol's history
    trade_id: int
    price: str  # decimal string, DECIMALS places
    qty: str  # decimal string, DECIMALS places, > 0
    time_ms: int  # strictly increasing per symbol
    buyer_is_maker: bool


def fixed(units: int) -> str:
    """1e-8 units → '123.45000000' (exact: no float on the way)."""
    return f"{units // _SCALE}.{units % _SCALE:0{DECIMALS}d}"


class SymbolMarket:
    """The trade history of one symbol. Generated lazily in index order, kept as compact arrays."""

    def __init__(self, exchange: str, symbol: str, *, seed: int, rate: float, start_ms: int, first_id: int,
                 listed_at: int = 0):
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.exchange = exchange
        self.symbol = symbol
        self.first_id = first_id
        self.start_ms = start_ms
        self.listed_at = listed_at  # the exchange clock's tick of trade 0
        self.delisted_at: int | None = None  # from this tick on, no trade of this symbol happens
        self._ms_per_trade = 1000.0 / min(rate, MAX_MS_RATE)  # ≥ 1 ms: times strictly increase
        self._ahead = max(MIN_GENERATE_AHEAD, min(GENERATE_AHEAD, int(rate)))
        self._rng = random.Random(f"{seed}:{exchange}:{symbol}")
        opening = _OPENING_PRICE.get(_base_asset(symbol)) or self._rng.uniform(5, 500)
        self._price = max(TICK, round(opening * _SCALE / TICK) * TICK)
        self._sigma_ticks = max(1.0, self._price / TICK * 0.0002)  # ~2 bp per trade
        self._notional_units = 500 * _SCALE * _SCALE // self._price  # ~500 quote units per trade
        self._prices = array("q")
        self._qtys = array("q")
        self._maker = bytearray()
        self._lock = threading.Lock()  # generation may be driven by the loop and a test thread

    def trade(self, i: int) -> Trade:
        if i < 0:
            raise IndexError(i)
        if i >= len(self._maker):
            self._generate_through(i + self._ahead)
        return Trade(
            self.symbol,
            i,
            self.first_id + i,
            fixed(self._prices[i]),
            fixed(self._qtys[i]),
            self.start_ms + int(i * self._ms_per_trade),
            bool(self._maker[i]),
        )

    @property
    def listed(self) -> bool:
        return self.delisted_at is None

    def happened(self, emitted: int) -> int:
        """How many trades of this symbol have happened once the exchange clock has emitted `emitted` ticks."""
        end = emitted if self.delisted_at is None else min(emitted, self.delisted_at)
        return max(0, end - self.listed_at)

    def trades(self, start: int, stop: int) -> list[Trade]:
        return [self.trade(i) for i in range(max(start, 0), stop)]

    def first_since(self, time_ms: int, index: int) -> int:
        """The first trade at or after `time_ms`, scanning back from trade `index` (not before it): where a
        candle holding trade `index` begins."""
        first = index
        while first > 0 and self.trade(first - 1).time_ms >= time_ms:
            first -= 1
        return first

    def index_of(self, trade_id: int) -> int:
        return trade_id - self.first_id

    def _generate_through(self, i: int) -> None:
        with self._lock:
            rng, price = self._rng, self._price
            for _ in range(len(self._maker), i + 1):
                price = max(TICK, price + round(rng.gauss(0.0, self._sigma_ticks)) * TICK)
                self._prices.append(price)
                self._qtys.append(max(1, int(rng.expovariate(1.0) * self._notional_units)))
                self._maker.append(rng.random() < 0.5)
            self._price = price


class ExchangeMarket:
    """All symbols of one exchange, sharing seed, rate and start time; symbols may be listed and delisted.

    `symbols` holds every symbol ever listed (a delisted one keeps its history, for REST and the ground
    truth); `listed` the ones trading now. Symbol k (in listing order) has trade ids from (k + 1) * id_block.
    """

    def __init__(
        self,
        exchange: str,
        symbols: Iterable[str],
        *,
        seed: int = 0,
        rate: float = 10.0,
        start_ms: int = DEFAULT_START_MS,
        id_block: int = ID_BLOCK,
    ):
        self.exchange = exchange
        self.rate = rate
        self._seed, self._start_ms, self._id_block = seed, start_ms, id_block
        self.symbols: dict[str, SymbolMarket] = {}
        self.listed: dict[str, SymbolMarket] = {}
        for symbol in symbols:
            self.list_symbol(symbol, 0)

    def list_symbol(self, symbol: str, at: int) -> SymbolMarket:
        """List `symbol` at clock tick `at`: its trade 0 happens then, with ids of a block of its own."""
        if symbol in self.symbols:
            raise ValueError(f"{self.exchange} {symbol!r} is listed already, or was (relisting is not simulated)")
        ms_per_tick = 1000.0 / min(self.rate, MAX_MS_RATE)
        market = SymbolMarket(self.exchange, symbol, seed=self._seed, rate=self.rate,
                              start_ms=self._start_ms + int(at * ms_per_tick),
                              first_id=(len(self.symbols) + 1) * self._id_block, listed_at=at)
        self.symbols[symbol] = self.listed[symbol] = market
        return market

    def delist_symbol(self, symbol: str, at: int) -> None:
        """Delist `symbol` at clock tick `at`: its last trade is the one of tick at - 1."""
        if symbol not in self.listed:
            raise ValueError(f"{self.exchange} {symbol!r} is not listed")
        self.listed.pop(symbol).delisted_at = at

    def __getitem__(self, symbol: str) -> SymbolMarket:
        return self.symbols[symbol]

    def __contains__(self, symbol: str) -> bool:
        return symbol in self.symbols


def _base_asset(symbol: str) -> str:
    for quote in ("USDT", "USDC", "USD", "EUR", "BTC"):
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)].rstrip("-/")
    return symbol.split("/")[0].split("-")[0]

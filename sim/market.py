"""Deterministic ground truth: what trades "happened" on an exchange, computed, never stored.

Trade i of a symbol is a pure function of (seed, exchange, symbol, i) plus the market's rate and
start time: prices walk from a seeded PRNG, so the same seed gives the same trades in every run
and in every call. Pure: no clock, no I/O. The simulator decides how many trades have happened.
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
GENERATE_AHEAD = 255  # generate in blocks: one lock and loop setup per block, not per trade
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

    def __init__(self, exchange: str, symbol: str, *, seed: int, rate: float, start_ms: int, first_id: int):
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.exchange = exchange
        self.symbol = symbol
        self.first_id = first_id
        self.start_ms = start_ms
        self._ms_per_trade = 1000.0 / min(rate, MAX_MS_RATE)  # ≥ 1 ms: times strictly increase
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
            self._generate_through(i + GENERATE_AHEAD)
        return Trade(
            self.symbol,
            i,
            self.first_id + i,
            fixed(self._prices[i]),
            fixed(self._qtys[i]),
            self.start_ms + int(i * self._ms_per_trade),
            bool(self._maker[i]),
        )

    def trades(self, start: int, stop: int) -> list[Trade]:
        return [self.trade(i) for i in range(max(start, 0), stop)]

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
    """All symbols of one exchange, sharing seed, rate and start time."""

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
        self.symbols: dict[str, SymbolMarket] = {
            symbol: SymbolMarket(
                exchange, symbol, seed=seed, rate=rate, start_ms=start_ms, first_id=(k + 1) * id_block
            )
            for k, symbol in enumerate(symbols)
        }

    def __getitem__(self, symbol: str) -> SymbolMarket:
        return self.symbols[symbol]

    def __contains__(self, symbol: str) -> bool:
        return symbol in self.symbols


def _base_asset(symbol: str) -> str:
    for quote in ("USDT", "USDC", "USD", "EUR", "BTC"):
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)].rstrip("-/")
    return symbol.split("/")[0].split("-")[0]

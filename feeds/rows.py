"""Normalized rows: what every exchange parser produces and every buffer actor writes."""
from __future__ import annotations

from typing import NamedTuple


class Trade(NamedTuple):
    ts_ns: int  # exchange event time, designated timestamp
    exchange: str
    symbol: str
    trade_id: int
    price: float
    amount: float
    side: str  # taker side: "buy" or "sell"
    received_ns: int  # our receive time


class Candle(NamedTuple):
    ts_ns: int  # candle open time
    exchange: str
    symbol: str
    interval: str
    open: float
    high: float
    low: float
    close: float
    volume: float
    closed: bool
    received_ns: int


TABLE_OF = {Trade: "trades", Candle: "candles"}

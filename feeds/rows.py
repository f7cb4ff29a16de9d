"""Normalized rows: what every exchange parser produces and every buffer actor writes."""
from __future__ import annotations

from decimal import Decimal
from functools import partial
from typing import NamedTuple, final


# Final: validation tells the row types apart by exact type (type(row) is Trade), the cheapest check.
@final
class Trade(NamedTuple):
    ts_ns: int  # exchange event time, designated timestamp
    exchange: str
    symbol: str
    trade_id: int
    price: float | Decimal  # Decimal with questdb.decimals: exactly the exchange's text
    amount: float | Decimal
    side: str  # taker side: "buy" or "sell"
    received_ns: int  # our receive time


@final
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


Row = Trade | Candle  # a row of any table

# The streaming parsers' hot path: new_trade((ts_ns, exchange, …)) is the same Trade without the Python-level
# __new__ a NamedTuple call runs, at a third of the cost per row.
new_trade = partial(tuple.__new__, Trade)


def exact_text(value: object) -> str:
    """orjson's `default` for rows (spool, dead letters): a Decimal price or amount as its exact text."""
    if type(value) is Decimal:
        return str(value)
    raise TypeError(f"{type(value).__name__} is not a row value")

"""What no exchange can make us store, and how fast it may talk: pure policies of the feed actor.

A frame that parses can still carry rows QuestDB must never see: a NaN or negative price, a zero
size, a price of 1e308 or 5e-324 (it would dominate every OHLCV bar of its series, and take a real trade's
id), a timestamp in 2077 or 1970, a symbol we never subscribed to, a megabyte of "symbol".
Validation comes before dedup (feeds/pipeline.py), so a rejected row never claims its id.
RowValidator splits a batch into rows to store and (row, reason) pairs to reject; the actor counts
the reasons and writes samples to the dead-letter file. No clock of its own, no I/O.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from marketfeed.feeds.rows import Candle, Row, Trade
from marketfeed.storage.deadletter import Record

if TYPE_CHECKING:
    from marketfeed.feeds.base import FeedProtocol

MIN_TS_NS = 1_230_768_000 * 10**9  # 2009-01-01T00:00:00Z: no exchange we ingest traded before
INT64_MAX = 2**63 - 1  # QuestDB LONG
SIDES = frozenset(("buy", "sell", "unknown"))  # unknown: the exchange does not name the aggressor (Polygon)
# Sane magnitudes, prices per unit in the quote currency. The dearest quotes we could meet are BTC in currencies
# like IDR or VND (~2e9) and the cheapest meme coins in BTC (~1e-10); exchanges tick at 1e-8 or coarser, so
# 1e12 leaves ×400 of headroom above and 1e-12 ×100 below. Sizes: no coin's whole supply reaches 1e15 units
# (SHIB ~6e14), and no lot is below 1e-12 (satoshi-sized lots are 1e-8). Subnormals (5e-324) fall below the
# minimum. A candle's volume sums many trades, hence its own ceiling; 0 there is a bar with no trades.
MIN_PRICE, MAX_PRICE = 1e-12, 1e12
MIN_AMOUNT, MAX_AMOUNT = 1e-12, 1e15
MAX_VOLUME = 1e18
# The same trade bounds as Decimals, for trades parsed exactly (questdb.decimals): a Decimal compares with a float
# ~15× slower than with a Decimal, which the hot path below would pay four times a row.
EXACT_TRADE_BOUNDS = (Decimal("1e-12"), Decimal("1e12"), Decimal("1e-12"), Decimal("1e15"))

# Every reason a row can be rejected for: metric label values and health report keys.
BAD_TYPE = "bad_type"  # a field of the wrong type (a parser let a JSON string or list through)
BAD_PRICE = "bad_price"  # non-finite or non-positive
BAD_SIZE = "bad_size"  # trades: non-finite or non-positive amount; candles: negative or non-finite volume
PRICE_OUT_OF_RANGE = "price_out_of_range"  # finite and positive, but outside MIN_PRICE..MAX_PRICE
SIZE_OUT_OF_RANGE = "size_out_of_range"  # finite and positive, but outside MIN_AMOUNT..MAX_AMOUNT (or MAX_VOLUME)
FUTURE_TS = "future_timestamp"  # later than now + max_future_skew_s
ANCIENT_TS = "timestamp_before_2009"
UNKNOWN_SYMBOL = "unknown_symbol"  # not one of the feed's configured symbols (unless it subscribes to any)
OVERSIZED_STRING = "oversized_string"
BAD_TRADE_ID = "bad_trade_id"  # negative or beyond a 64-bit integer
BAD_SIDE = "bad_side"
UNSUBSCRIBED = "unsubscribed"  # a trade sequence or candle interval the feed did not subscribe to
IMPLAUSIBLE_ID = "implausible_trade_id"  # further ahead than feeds.max_id_jump, not (yet) confirmed over REST
REASONS = (BAD_TYPE, BAD_PRICE, BAD_SIZE, PRICE_OUT_OF_RANGE, SIZE_OUT_OF_RANGE, FUTURE_TS, ANCIENT_TS,
           UNKNOWN_SYMBOL, OVERSIZED_STRING, BAD_TRADE_ID, BAD_SIDE, UNSUBSCRIBED, IMPLAUSIBLE_ID)


@dataclass(frozen=True)
class Subscribed:
    """What a feed asked its exchange for, that rows are checked against exactly (None: not checked)."""

    trade_labels: frozenset[str] | None = None  # the `exchange` values of its trade sequences
    candle_intervals: frozenset[str] | None = None
    any_symbol: bool = False  # the exchange's wildcard (Polygon T.*): rows of every symbol are the feed's
    decimals: bool = False  # trade prices and amounts are Decimals (FeedConfig.decimals)

    @classmethod
    def of(cls, protocol: FeedProtocol) -> Subscribed:
        return cls(frozenset(protocol.trade_labels()), frozenset(protocol.candle_intervals()), protocol.any_symbol(),
                   protocol.feed.decimals)


class RowValidator:
    """Checks rows against one feed's configured symbols, clock skew and string limit.

    Symbols match as configured, upper- or lower-case (exchanges echo them in their own case); a feed subscribed to
    any symbol (Subscribed.any_symbol) takes every string within max_string_len.
    """

    def __init__(self, symbols: Iterable[str], max_future_skew_s: float, max_string_len: int,
                 subscribed: Subscribed | None = None):
        self.symbols = frozenset(v for s in symbols for v in (s, s.upper(), s.lower()))
        self.max_future_skew_ns = int(max_future_skew_s * 1e9)
        self.max_string_len = max_string_len
        self.subscribed = subscribed or Subscribed()

    def split(self, rows: list, now_ns: int) -> tuple[list, list[tuple[Row, str]]]:
        """(rows to store, [(row, reason)] rejected); the input list itself when every row is valid."""
        latest = now_ns + self.max_future_skew_ns
        if self._all_good_trades(rows, latest):
            return rows, []
        rejected: list[tuple[Row, str]] = []
        for row in rows:
            reason = self.reason(row, latest)
            if reason is not None:
                rejected.append((row, reason))
        if not rejected:
            return rows, rejected
        bad = {id(row) for row, _ in rejected}
        return [row for row in rows if id(row) not in bad], rejected

    def _all_good_trades(self, rows: list, latest_ns: int) -> bool:
        """The hot path: a batch of good trades in one tight loop (a row that is no trade, or fails, says False)."""
        symbols, labels, any_symbol = self.symbols, self.subscribed.trade_labels, self.subscribed.any_symbol
        longest = self.max_string_len
        min_price, max_price, min_amount, max_amount = (EXACT_TRADE_BOUNDS if self.subscribed.decimals else
                                                        (MIN_PRICE, MAX_PRICE, MIN_AMOUNT, MAX_AMOUNT))
        try:
            for ts, exchange, symbol, trade_id, price, amount, side, _ in rows:
                if not (type(ts) is int and MIN_TS_NS <= ts <= latest_ns
                        and (symbol in symbols or (any_symbol and type(symbol) is str and len(symbol) <= longest))
                        and (labels is None or exchange in labels)
                        and min_price <= price <= max_price and min_amount <= amount <= max_amount
                        and type(trade_id) is int and 0 <= trade_id <= INT64_MAX and side in SIDES):
                    return False
        except (TypeError, ValueError):  # a candle (11 fields), an unhashable symbol, a string price
            return False
        return True

    def reason(self, row: Row, latest_ns: int) -> str | None:
        """Why `row` must not be stored (None: it may), given the latest acceptable event time."""
        try:
            ts = row.ts_ns
            if type(ts) is not int:
                return BAD_TYPE
            if ts < MIN_TS_NS:
                return ANCIENT_TS
            if ts > latest_ns:
                return FUTURE_TS
            symbol = row.symbol
            if type(symbol) is not str or type(row.exchange) is not str:
                return BAD_TYPE
            if len(symbol) > self.max_string_len or len(row.exchange) > self.max_string_len:
                return OVERSIZED_STRING
            if symbol not in self.symbols and not self.subscribed.any_symbol:
                return UNKNOWN_SYMBOL
            if type(row) is Trade:
                labels = self.subscribed.trade_labels
                return UNSUBSCRIBED if labels is not None and row.exchange not in labels else self._trade_reason(row)
            reason = self._candle_reason(row)
            intervals = self.subscribed.candle_intervals
            if reason is None and intervals is not None and row.interval not in intervals:
                return UNSUBSCRIBED
            return reason
        except (AttributeError, TypeError):  # not a row at all, or a field that cannot be compared
            return BAD_TYPE

    @staticmethod
    def _trade_reason(row: Trade) -> str | None:
        if not 0.0 < row.price < math.inf:  # NaN fails every comparison
            return BAD_PRICE
        if not MIN_PRICE <= row.price <= MAX_PRICE:
            return PRICE_OUT_OF_RANGE
        if not 0.0 < row.amount < math.inf:
            return BAD_SIZE
        if not MIN_AMOUNT <= row.amount <= MAX_AMOUNT:
            return SIZE_OUT_OF_RANGE
        trade_id = row.trade_id
        if type(trade_id) is not int:
            return BAD_TYPE
        if not 0 <= trade_id <= INT64_MAX:
            return BAD_TRADE_ID
        if row.side not in SIDES:
            return BAD_SIDE
        return None

    def _candle_reason(self, row: Candle) -> str | None:
        prices = (row.open, row.high, row.low, row.close)
        if not all(0.0 < p < math.inf for p in prices):
            return BAD_PRICE
        if not all(MIN_PRICE <= p <= MAX_PRICE for p in prices):
            return PRICE_OUT_OF_RANGE
        if not 0.0 <= row.volume < math.inf:
            return BAD_SIZE
        if row.volume and not MIN_AMOUNT <= row.volume <= MAX_VOLUME:
            return SIZE_OUT_OF_RANGE
        if type(row.interval) is not str:
            return BAD_TYPE
        if len(row.interval) > self.max_string_len:
            return OVERSIZED_STRING
        return None


class SampleGate:
    """At most one dead-letter sample per reason per interval: a flood of bad rows cannot flood the disk."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self.last: dict[str, float] = {}

    def due(self, reason: str, now: float) -> bool:
        last = self.last.get(reason)
        if last is not None and now - last < self.interval_s:
            return False
        self.last[reason] = now
        return True


class RateCeiling:
    """Messages per second on one connection against a ceiling: flagged while the last interval was above it.

    The actor observes its running message count once per tick; a new connection starts afresh.
    """

    def __init__(self, max_per_s: float):
        self.max_per_s = max_per_s  # 0: no ceiling
        self.flagged = False
        self.rate = 0.0
        self._count = 0
        self._at: float | None = None

    def restart(self, count: int, now: float) -> None:
        self.flagged, self.rate, self._count, self._at = False, 0.0, count, now

    def observe(self, count: int, now: float) -> bool:
        """Take the running count at `now`; True when the flag changed."""
        if self._at is None:
            self.restart(count, now)
            return False
        elapsed = now - self._at
        if elapsed <= 0:
            return False
        self.rate = (count - self._count) / elapsed
        self._count, self._at = count, now
        flagged = bool(self.max_per_s) and self.rate > self.max_per_s
        changed, self.flagged = flagged != self.flagged, flagged
        return changed


def sample_row(row: Row) -> Record:
    """A rejected row made fit for the dead-letter file: long strings cut, values JSON cannot hold shown as text."""
    def fit(value: object) -> object:
        if isinstance(value, str):
            return value[:200]
        if isinstance(value, (bool, float)) or (isinstance(value, int) and -2**63 <= value <= INT64_MAX):
            return value
        return repr(value)[:200]

    return type(row)._make(fit(v) for v in row)

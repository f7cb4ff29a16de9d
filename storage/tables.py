"""The tables: one descriptor each, holding everything that differs between them.

Every table is WAL with DEDUP UPSERT KEYS, so a replayed batch never duplicates a row. Trades come with
materialized views of 1-minute and 1-hour OHLCV bars (SAMPLE BY). Creating them in QuestDB is
storage/schema.py; this module only says what they are and how a row of each is encoded over ILP.

With questdb.decimals a trade's price and amount are DECIMAL columns, filled from the Decimals the parsers made
of the exchange's text (the client sends a Decimal as an ILP v3 decimal, a float as a double: the appender is the
same). The views' first/max/min/last keep the column's type and sum() widens it (DECIMAL(38, s) → DECIMAL(76, s)).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from questdb import QuestDBError, TimestampNanos

from marketfeed.config.schema import TABLE_PREFIX_CHOICES, SinkConfig
from marketfeed.feeds.rows import Candle, Trade

# The client refuses a row it cannot encode and leaves the buffer as before that row.
ENCODING_ERRORS = (QuestDBError, TypeError, ValueError, OverflowError)


# The appenders are written out by hand, not derived from the columns: they are the hot path of every flush.
def append_trades(buffer, name: str, rows: list[Trade]) -> list[str]:
    """Encode rows into the buffer; returns the errors of rows the client refused (left out)."""
    row, refused, nanos = buffer.row, [], TimestampNanos
    for ts, exchange, symbol, trade_id, price, amount, side, received_ns in rows:
        try:
            row(
                name,
                symbols={"exchange": exchange, "symbol": symbol, "side": side},
                columns={"trade_id": trade_id, "price": price, "amount": amount, "received_at": nanos(received_ns)},
                at=nanos(ts),
            )
        except ENCODING_ERRORS as exc:
            refused.append(f"{type(exc).__name__}: {exc}")
    return refused


def append_candles(buffer, name: str, rows: list[Candle]) -> list[str]:
    row, refused = buffer.row, []
    for c in rows:
        try:
            row(
                name,
                symbols={"exchange": c.exchange, "symbol": c.symbol, "interval": c.interval},
                columns={"open": c.open, "high": c.high, "low": c.low, "close": c.close, "volume": c.volume,
                         "closed": c.closed, "received_at": TimestampNanos(c.received_ns)},
                at=TimestampNanos(c.ts_ns),
            )
        except ENCODING_ERRORS as exc:
            refused.append(f"{type(exc).__name__}: {exc}")
    return refused


# One trades table holds every exchange, so its DECIMAL scale is the finest any of them documents: Binance 8
# (exchangeInfo baseAssetPrecision and quotePrecision), Coinbase 8 (products' smallest base_increment and
# quote_increment, "0.00000001"), Kraken per pair (AssetPairs pair_decimals and lot_decimals: 8 for lots, more for
# the prices of low-priced coins), Polygon 4 (sub-penny prices; whole-share sizes). 12 covers them all and is the
# floor of what validation lets through (feeds/validation.py MIN_PRICE, MIN_AMOUNT: 1e-12), and precision 38
# leaves 26 digits before the point, above MAX_AMOUNT (1e15): a valid row always fits. Any precision above 18
# takes 16 bytes, so 38 costs nothing more than 20. A value with more decimals is refused by QuestDB ("loss of
# precision") and dead-lettered, never rounded.
EXACT_TYPE = "DECIMAL(38,12)"

OHLCV_VIEW = """CREATE MATERIALIZED VIEW IF NOT EXISTS {view} {refresh} AS (
        SELECT ts, exchange, symbol, first(price) AS open, max(price) AS high, min(price) AS low,
               last(price) AS close, sum(amount) AS volume, count() AS trades
        FROM {name} SAMPLE BY {interval}
    ) PARTITION BY {partition}"""


def quoted(name: str) -> str:
    """A table or view name as a quoted identifier in DDL: names are checked (TABLE_PREFIX_CHOICES) before they
    get here; the quotes keep DDL a statement about that one name whatever a future check lets through."""
    if '"' in name:
        raise ValueError(f"{name!r}: a table name cannot hold a double quote")
    return f'"{name}"'


@dataclass(frozen=True)
class OhlcvView:
    """OHLCV bars of a trades table (price, amount) as a materialized view."""

    interval: str  # SAMPLE BY
    partition: str  # PARTITION BY: bars of an hour fill a day partition slowly

    def name_in_db(self, table_in_db: str) -> str:
        return f"{table_in_db}_ohlcv_{self.interval}"

    def ddl(self, table_in_db: str, refresh: str) -> str:
        """`refresh`: the REFRESH clause (storage.schema.refresh_clause)."""
        return OHLCV_VIEW.format(view=quoted(self.name_in_db(table_in_db)), refresh=refresh, name=quoted(table_in_db),
                                 interval=self.interval, partition=self.partition)


@dataclass(frozen=True)
class Table:
    name: str  # the key of buffer actors, SinkDirectory, metrics labels; in QuestDB behind the table prefix
    row_type: type  # the NamedTuple of feeds/rows.py the feeds produce and the spool stores
    columns: tuple[tuple[str, str], ...]  # (column, QuestDB type); ts, the designated timestamp, first
    dedup_keys: tuple[str, ...]  # DEDUP UPSERT KEYS, ts first
    append: Callable[[object, str, list], list[str]]  # ILP encoder: (buffer, name in db, rows) → refused rows' errors
    views: tuple[OhlcvView, ...] = ()
    # This table's own sink keys (max_rows, flush_interval_s); 0 in either: the sink-wide value.
    own_flush_policy: Callable[[SinkConfig], tuple[int, float]] | None = None
    exact_columns: tuple[str, ...] = ()  # DOUBLE columns that questdb.decimals makes EXACT_TYPE

    def __repr__(self) -> str:  # in Gap reprs and logs: the name says it all
        return f"Table({self.name!r})"

    def name_in_db(self, prefix: str) -> str:
        """The table's name in QuestDB, which DDL, queries and spool paths use as is: hence checked here too, not
        only by the loader (a prefix from code, a test, a tool)."""
        if prefix not in TABLE_PREFIX_CHOICES:
            raise ValueError(f"table prefix {prefix!r} is not one of {', '.join(TABLE_PREFIX_CHOICES)}")
        return f"{prefix}{self.name}"

    def column_types(self, decimals: bool = False) -> tuple[tuple[str, str], ...]:
        """(column, QuestDB type) in the questdb.decimals mode given."""
        if not decimals:
            return self.columns
        return tuple((column, EXACT_TYPE if column in self.exact_columns else kind) for column, kind in self.columns)

    def ddl(self, name_in_db: str, decimals: bool = False) -> str:
        columns = ", ".join(f"{column} {kind}" for column, kind in self.column_types(decimals))
        return (f"CREATE TABLE IF NOT EXISTS {quoted(name_in_db)} ({columns}) TIMESTAMP(ts) PARTITION BY DAY WAL "
                f"DEDUP UPSERT KEYS({', '.join(self.dedup_keys)})")

    def flush_policy(self, sink: SinkConfig) -> tuple[int, float]:
        """(max_rows, flush_interval_s) of this table's buffer actor."""
        rows, interval = self.own_flush_policy(sink) if self.own_flush_policy is not None else (0, 0.0)
        return rows or sink.max_rows, interval or sink.flush_interval_s


TRADES = Table(
    name="trades",
    row_type=Trade,
    columns=(("ts", "TIMESTAMP_NS"), ("exchange", "SYMBOL"), ("symbol", "SYMBOL"), ("trade_id", "LONG"),
             ("price", "DOUBLE"), ("amount", "DOUBLE"), ("side", "SYMBOL"), ("received_at", "TIMESTAMP_NS")),
    dedup_keys=("ts", "exchange", "symbol", "trade_id"),
    append=append_trades,
    views=(OhlcvView("1m", "DAY"), OhlcvView("1h", "MONTH")),
    exact_columns=("price", "amount"),
)

CANDLES = Table(
    name="candles",
    row_type=Candle,
    columns=(("ts", "TIMESTAMP_NS"), ("exchange", "SYMBOL"), ("symbol", "SYMBOL"), ("interval", "SYMBOL"),
             ("open", "DOUBLE"), ("high", "DOUBLE"), ("low", "DOUBLE"), ("close", "DOUBLE"), ("volume", "DOUBLE"),
             ("closed", "BOOLEAN"), ("received_at", "TIMESTAMP_NS")),
    dedup_keys=("ts", "exchange", "symbol", "interval"),
    append=append_candles,
    # The low-volume table: sink.candles_max_rows / candles_flush_interval_s may batch it differently.
    own_flush_policy=lambda sink: (sink.candles_max_rows, sink.candles_flush_interval_s),
)

TABLES: dict[str, Table] = {t.name: t for t in (TRADES, CANDLES)}

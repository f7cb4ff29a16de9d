"""The contract every exchange module fulfils: pure functions from config and bytes to rows.

A protocol object knows the wire format of one exchange and holds configuration only: it is read by
the reader threads (one per connection, two during a make-before-break roll) and the backfill thread
at once. Parse state that must outlive one frame lives in a session, one per connection
(`open_session()`). Neither touches a socket: the reader thread hands frames to its session, the
backfill thread hands REST bodies to the protocol.
"""
from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import orjson

from marketfeed.feeds.rest_policy import RestVerdict, http_verdict
from marketfeed.feeds.rows import Candle, Trade
from marketfeed.feeds.universe import Listing
from marketfeed.storage.tables import TRADES, Table

if TYPE_CHECKING:
    from marketfeed.config.schema import FeedConfig

# A JSON frame's top-level shape; its contents are untrusted and checked where read (KeyError, TypeError).
_Shape = TypeVar("_Shape", dict[str, Any], list[Any])


class Control(enum.Enum):
    """What a non-data frame meant. Only data frames reset the stale-feed watchdog."""

    HEARTBEAT = "heartbeat"
    SUBSCRIBED = "subscribed"
    PONG = "pong"
    INFO = "info"
    RECONNECT = "reconnect"  # the server announced it will close (maintenance, 24 h cut)


class MalformedFrame(Exception):
    """A frame we cannot turn into rows; counted, logged with a sample, dropped."""

    def __init__(self, reason: str, sample: bytes | str = b""):
        super().__init__(reason)
        self.reason = reason
        self.sample = sample[:200] if sample else b""


class BeyondRetention(Exception):
    """The exchange no longer serves part of a gap (e.g. Kraken's 720 most recent candles): asking again cannot
    bring it back. The rows of the page that it still serves come with it."""

    def __init__(self, reason: str, rows: list):
        super().__init__(reason)
        self.reason, self.rows = reason, rows


class SubscriptionRejected(Exception):
    """The exchange refused a subscription (bad symbol, bad channel, bad key)."""


class ParsedRows:
    """Rows parsed from a burst of frames, by table; reused across frames to avoid allocations."""

    __slots__ = ("candles", "live_candles", "trades")

    def __init__(self) -> None:
        self.trades: list[Trade] = []
        self.candles: list[Candle] = []  # closed candles: every one must be stored
        self.live_candles: list[Candle] = []  # in-progress candles: latest state wins

    def __len__(self) -> int:
        return len(self.trades) + len(self.candles) + len(self.live_candles)


@dataclass(frozen=True)
class HttpRequest:
    url: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ConnectionLimits:
    """What the exchange documents about its WebSocket connections (0: nothing documented, or no limit).

    Sharding and pacing stay below these: a connection carries at most max_streams subscriptions, sends at most
    max_client_messages_per_s messages, and the feed opens at most max_connects connections per connect_window_s
    (per IP) and max_connections at once."""

    max_streams: int = 0  # subscriptions one connection may carry (0: unlimited)
    max_client_messages_per_s: int = 0  # messages the client may send per connection per second (0: none documented)
    max_connects: int = 0  # connection attempts per connect_window_s per IP (0: none documented)
    connect_window_s: float = 0.0
    max_connections: int = 0  # simultaneous connections allowed (0: unlimited)


@dataclass(frozen=True)
class Gap:
    """Trade ids missing for one symbol: first..last inclusive (last None: up to the live stream).

    Exchanges without contiguous ids describe an outage by time instead: since_ns..until_ns.
    """

    symbol: str
    first_id: int = 0
    last_id: int | None = None
    since_ns: int = 0  # for exchanges without contiguous ids: the outage start…
    until_ns: int = 0  # …and its end (event time of the newest trade of the first burst after it)
    stream: str = ""  # which id sequence (FeedProtocol.stream_key) the ids belong to
    # Event time of the last trade seen ahead of first_id (0: unknown): REST paged by time starts there.
    before_ns: int = 0
    table: Table = TRADES  # what is missing: trades, or (outage_gaps) the candles that closed meanwhile
    page: str = ""  # cursor-paged REST APIs: where the next page is (e.g. Polygon's next_url path)


class FeedSession(Protocol):
    """The parse state of one connection: a new connection starts with a new session."""

    def subscribe_messages(self) -> list[str]:
        """Messages to send right after the connection opens (auth, subscribe)."""
        ...

    def parse(self, frame: bytes | str, received_ns: int, out: ParsedRows) -> Control | None:
        """Append the rows of one frame to `out`; return a Control for non-data frames (FeedProtocol.parse)."""
        ...


class StatelessSession:
    """The session of an exchange whose frames parse on their own: the protocol's own methods, bound once
    (no extra call per frame)."""

    def __init__(self, protocol: FeedProtocol):
        self.subscribe_messages = protocol.subscribe_messages
        self.parse = protocol.parse


class FeedProtocol:
    """Base class of one exchange's protocol. Subclasses live in feeds/<exchange>.py, named in feeds/registry.py."""

    exchange: ClassVar[str]
    contiguous_ids: ClassVar[bool] = False  # trade ids without holes: gaps are detectable
    ping_message: ClassVar[str | None] = None  # application-level ping, if the protocol has one
    ping_interval_s: ClassVar[float] = 0.0
    pong_timeout_s: ClassVar[float] = 0.0  # no Control.PONG this long after a ping: reconnect (0: not enforced)
    max_connection_age_s: ClassVar[float] = 0.0  # the exchange ends connections this old: roll over before (0: never)
    backfill_min_interval_s: ClassVar[float] = 0.2  # the REST API's rate limit: at least this long between requests
    rest_limited_wait_s: ClassVar[float] = 1.0  # after a rate-limit answer that names no Retry-After, wait this long
    rest_weight_limit: ClassVar[int] = 0  # request weight per clock minute the host allows (0: requests not weighed)
    rest_weight_header: ClassVar[str] = ""  # the answer header (lower case) with the weight used this minute
    connection_limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    # The symbol that alone subscribes to every symbol through the exchange's own wildcard (Polygon "*": T.*); "":
    # none, a pattern needs the listing.
    wildcard_symbol: ClassVar[str] = ""

    def __init__(self, feed: FeedConfig):
        self.feed = feed
        # A trade's price and amount: floats, or with questdb.decimals Decimals exactly as the exchange sent them.
        # trade_decimal reads a decimal string, trade_number a JSON number.
        self.trade_decimal: Callable[[object], float | Decimal] = exact_decimal if feed.decimals else decimal
        self.trade_number: Callable[[object], float | Decimal] = exact_number if feed.decimals else json_number

    @classmethod
    def config_problems(cls, feed: FeedConfig) -> list[str]:
        """What this exchange refuses in a feed's config (channels, options), each as "<key>: <why>"; the
        loader prefixes the file or environment variable the key came from. Default: nothing."""
        return []

    def candle_intervals(self) -> tuple[str, ...]:
        """The candle intervals (the rows' `interval`) this feed subscribes to; a candle of any other is refused."""
        return ()

    def url(self, base: str) -> str:
        """The WebSocket URL to open, given one of the configured base URLs."""
        return base

    def streams_per_symbol(self) -> int:
        """The subscriptions one symbol costs on a connection (counted against connection_limits.max_streams)."""
        return 1

    def any_symbol(self) -> bool:
        """The feed subscribes to every symbol through the exchange's wildcard (symbols = [wildcard_symbol]): rows
        of any symbol are its own, and there is no list of symbols to resolve, shard or backfill by."""
        return bool(self.wildcard_symbol) and self.feed.symbols == (self.wildcard_symbol,)

    def listing_request(self) -> HttpRequest | None:
        """The exchange's listing endpoint, from which a universe (feeds/universe.py) is selected; None: it has
        none (a pattern in symbols is then refused, but for wildcard_symbol)."""
        return None

    def parse_listing(self, body: bytes) -> list[Listing]:
        """The markets a listing_request answer lists. Whatever the body holds, it raises MalformedFrame, never
        anything else."""
        raise MalformedFrame(f"{self.exchange} has no listing endpoint", body)

    def open_session(self) -> FeedSession:
        """The parse state of a new connection; exchanges whose frames parse on their own need none."""
        return StatelessSession(self)

    def subscribe_messages(self) -> list[str]:
        """Messages to send right after the connection opens (auth, subscribe)."""
        return []

    def parse(self, frame: bytes | str, received_ns: int, out: ParsedRows) -> Control | None:
        """Append the rows of one frame to `out`; return a Control for non-data frames.

        Raises MalformedFrame for frames that cannot be understood, SubscriptionRejected when the
        exchange refuses a subscription (the feed is then reported failed, not retried in a loop).
        """
        raise NotImplementedError

    def trade_labels(self) -> tuple[str, ...]:
        """The `exchange` values this feed's trade rows carry (recovery reads the last stored ids of each)."""
        return (self.exchange,)

    @classmethod
    def stored_labels(cls) -> tuple[str, ...]:
        """Every `exchange` value trade rows of this protocol may carry, whatever a feed subscribes to (verify
        checks the ids of each, where they are contiguous, without a feed config)."""
        return (cls.exchange,)

    def stream_key(self, row: Trade) -> str:
        """The id sequence a trade belongs to: ids are contiguous within one stream (default: per symbol)."""
        return row.symbol

    def outage_gaps(self, symbols: tuple[str, ...], since_ns: int, until_ns: int) -> list[Gap]:
        """Time windows to backfill after a reconnect, for exchanges whose ids cannot reveal the outage."""
        return []

    def history_gaps(self, symbols: tuple[str, ...], since_ns: int, until_ns: int) -> list[Gap]:
        """What fetches every row of the feed's channels stamped since..until (`marketfeed backfill`, feeds.history):
        by default the outage windows of that span; exchanges with trade ids add their trades by time."""
        return self.outage_gaps(symbols, since_ns, until_ns)

    def backfill_request(self, gap: Gap) -> HttpRequest | None:
        """The first REST request that fetches the gap, or None if the exchange cannot backfill."""
        return None

    def parse_backfill(self, gap: Gap, body: bytes, received_ns: int) -> tuple[list[Trade], Gap | None]:
        """Rows from one REST page, and the gap still left to fetch (None when done), which asks for another page.

        Whatever the body holds, it raises MalformedFrame (the page cannot be understood, or would page nowhere)
        or BeyondRetention, never anything else: rows are well-typed, values the validator judges."""
        raise NotImplementedError

    def rest_verdict(self, status: int, headers: Mapping[str, str], body: bytes) -> RestVerdict:
        """What a REST answer means (headers: names in lower case): by default by its HTTP status, Retry-After
        honoured (feeds/rest_policy.py); exchanges whose errors say more (or arrive with 200) refine it."""
        return http_verdict(status, headers, body, self.rest_limited_wait_s)

    def request_weight(self, request: HttpRequest) -> int:
        """What the request counts against rest_weight_limit (the exchange's documented weight)."""
        return 1


def load_json(frame: bytes | str, shape: type[_Shape]) -> _Shape:
    """The frame as a JSON value of the given shape (dict or list), else MalformedFrame."""
    try:
        value = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise MalformedFrame(f"invalid JSON: {exc}", frame) from None
    if not isinstance(value, shape):
        raise MalformedFrame(f"not a JSON {'object' if shape is dict else 'array'}", frame)
    return value


def decimal(value: object) -> float:
    """A price or size the exchange documents as a decimal string ("0.01633102"). A JSON number or `true` where a
    string is documented, or text only Python reads as a number ("1_000"), is malformed (a TypeError or
    ValueError to the parser, which raises MalformedFrame); "nan" and "inf" are left to validation."""
    if type(value) is not str or "_" in value:
        raise ValueError(f"not a decimal string: {value!r}")
    return float(value)


def json_number(value: object) -> float:
    """A price or size the exchange documents as a JSON number: `true` (a number to Python) and strings are not."""
    if type(value) is float or type(value) is int:
        return float(value)
    raise TypeError(f"not a number: {value!r}")


def exact_decimal(value: object) -> Decimal:
    """decimal() without a float in between (questdb.decimals): "70329669.63383683" stays those digits. The same
    strings are malformed, and so are "nan" and "inf": a Decimal NaN cannot even be compared, so validation could
    not judge it."""
    if type(value) is not str or "_" in value:
        raise ValueError(f"not a decimal string: {value!r}")
    try:
        exact = Decimal(value)
    except InvalidOperation:  # an ArithmeticError: the parsers catch ValueError
        raise ValueError(f"not a decimal string: {value!r}") from None
    if not exact.is_finite():
        raise ValueError(f"not a finite decimal: {value!r}")
    return exact


def exact_number(value: object) -> Decimal:
    """json_number() as a Decimal (questdb.decimals). The exchange documents a double (Kraken's v2 price and qty,
    Polygon's p and s), and the JSON parser read one: the shortest text that reads back as that double (repr) is
    the number as sent whenever it had at most 15 significant digits, which a double always keeps. Polygon's
    prices have at most 4 decimals (sub-penny ticks, SEC Rule 612) and its sizes are whole shares."""
    if type(value) is int:
        return Decimal(value)
    if type(value) is float and math.isfinite(value):
        return Decimal(repr(value))
    raise TypeError(f"not a finite number: {value!r}")


def ms_to_ns(ms: int) -> int:
    return ms * 1_000_000

"""Polygon.io stocks and options trades (WebSocket clusters /stocks and /options) and REST v3 backfill.

Wire format, from Polygon's docs:
- connect to wss://socket.polygon.io/stocks (or /options); the server says
  [{"ev":"status","status":"connected","message":…}];
- send {"action":"auth","params":"<key>"} → [{"ev":"status","status":"auth_success",…}] or "auth_failed";
- send {"action":"subscribe","params":"T.AAPL,T.MSFT"} (options: T.O:SPY251219C00650000)
  → one {"ev":"status","status":"success","message":"subscribed to: T.AAPL"} per channel;
- every data frame is a JSON array of events. A stocks trade is {"ev":"T","sym","x" exchange id,
  "i" trade id (string),"z" tape,"p" price,"s" size,"c" [conditions],"t" SIP ms,"q" sequence,
  "trfi"/"trft" on off-exchange prints}; an options trade has no "i" (ev, sym, x, p, s, c, t, q).
- REST GET /v3/trades/{ticker}?timestamp.gte=&timestamp.lte=&limit=&sort=timestamp&order=asc
  &apiKey= answers {"results":[{sip_timestamp ns, exchange, id, price, size, conditions,
  sequence_number, trf_id, …}], "next_url": absolute URL of the next page, without the key}.

How that maps onto a Trade (choices, because Polygon's model differs from a crypto exchange's):
- trade_id: Polygon's "i" is unique only per (ticker, exchange, TRF) and `q` has holes, so ids are
  not contiguous and gaps cannot be seen in the stream (contiguous_ids = False: outages are
  backfilled by time window, see outage_gaps). The stored id is a stable 63-bit hash
  (blake2b) of (exchange id, TRF id, trade id): the same on WebSocket and REST, in every process,
  and unique per symbol, so the dedup keys stay unique. Options trades carry no trade id at all;
  their id hashes (exchange, SIP millisecond, price, size, conditions) — two identical prints on one
  venue within one millisecond are indistinguishable there and are stored once.
- ts: the SIP timestamp at millisecond precision (the stream's `t`; REST's nanosecond
  sip_timestamp is cut to its millisecond), so a trade seen both live and over REST has one key.
- side: Polygon does not say who the aggressor was: "unknown".
- amount: the size in shares or contracts; the optional minimum trade value compares
  price × size × multiplier (100 for O: tickers unless contract_multiplier says otherwise).
The whole market: symbols = ["*"] subscribes T.*, every trade of the cluster ("use * to subscribe to all option
contracts", Options > Trades; likewise stocks), each row carrying its own ticker; min_trade_value keeps the
large ones. Its outages are not backfilled (outage_gaps).
The API key (PolygonOptions.api_key) is resolved by the config loader: the feed's api_key, else
api_key_file, else $POLYGON_API_KEY, else the file $POLYGON_API_KEY_FILE names. It is sent in the
auth message and the REST query only: no log line, status, metric or exception text built here
contains it.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from urllib.parse import quote, urlencode, urlsplit

import orjson

from marketfeed.config.schema import ExchangeOptions, FeedConfig, bounded, secret
from marketfeed.feeds.base import (
    ConnectionLimits,
    Control,
    FeedProtocol,
    Gap,
    HttpRequest,
    MalformedFrame,
    ParsedRows,
    SubscriptionRejected,
    json_number,
    load_json,
)
from marketfeed.feeds.rows import Trade, new_trade

EXCHANGE = "polygon"
UNKNOWN_SIDE = "unknown"  # Polygon's trades do not name the aggressor
OPTIONS_PREFIX = "O:"
OPTIONS_MULTIPLIER = 100.0  # one US equity option contract = 100 shares
BACKFILL_PAGE = 50_000  # v3 trades' maximum limit
KEY_ENV = "POLYGON_API_KEY"
NO_KEY = f"no API key: set api_key, api_key_file, ${KEY_ENV} or ${KEY_ENV}_FILE"
_MS = 1_000_000


def stock_trade_id(exchange_id: int, trf_id: int | None, trade_id: str) -> int:
    """Polygon's trade id is unique per (ticker, exchange, TRF): hash all three into a LONG ≥ 0."""
    return _hash63(f"{exchange_id}|{trf_id or 0}|{trade_id}")


def option_trade_id(exchange_id: int, sip_ms: int, price: float | Decimal, size: float | Decimal, conditions) -> int:
    """Options trades have no trade id: identify a print by venue, millisecond, price, size, conditions (as floats:
    the same id with questdb.decimals, whose Decimals read back as the same doubles)."""
    return _hash63(f"{exchange_id}|{sip_ms}|{float(price)!r}|{float(size)!r}|{','.join(map(str, conditions or ()))}")


def _hash63(text: str) -> int:
    # Stable across processes and versions (unlike hash()); 63 bits keep QuestDB's LONG non-negative.
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def event_trade(event: dict, received_ns: int, number: Callable[[object], float | Decimal] = json_number) -> Trade:
    """One WebSocket trade event {"ev":"T",…} as a Trade (no value filter); `number`: the protocol's trade_number."""
    symbol, exchange_id, sip_ms = event["sym"], event["x"], event["t"]
    price, size = number(event["p"]), number(event["s"])
    if type(sip_ms) is not int or type(exchange_id) is not int or not isinstance(symbol, str):
        raise TypeError("sym, x and t must be a string and integers")
    trade_id = event.get("i")
    if trade_id:
        key = stock_trade_id(exchange_id, event.get("trfi"), str(trade_id))
    else:
        key = option_trade_id(exchange_id, sip_ms, price, size, event.get("c"))
    return new_trade((sip_ms * _MS, EXCHANGE, symbol, key, price, size, UNKNOWN_SIDE, received_ns))


def rest_trade(symbol: str, result: dict, received_ns: int,
               number: Callable[[object], float | Decimal] = json_number) -> Trade:
    """One v3 trades result as a Trade: the same ts and id the live stream gives that trade."""
    exchange_id, sip_ns = result["exchange"], result["sip_timestamp"]
    price, size = number(result["price"]), number(result["size"])
    if type(sip_ns) is not int or type(exchange_id) is not int:
        raise TypeError("exchange and sip_timestamp must be integers")
    sip_ms = sip_ns // _MS
    trade_id = result.get("id")
    if trade_id:
        key = stock_trade_id(exchange_id, result.get("trf_id"), str(trade_id))
    else:
        key = option_trade_id(exchange_id, sip_ms, price, size, result.get("conditions"))
    return Trade(sip_ms * _MS, EXCHANGE, symbol, key, price, size, UNKNOWN_SIDE, received_ns)


class PolygonProtocol(FeedProtocol):
    exchange = EXCHANGE
    contiguous_ids = False  # ids are per venue and `q` has holes: outages are found by time
    # A plan's request limit is per minute (polygon.io/pricing: 5 on the free plan) and its 429 names no
    # Retry-After: wait one request's share of the minute. Errors are {"status": "ERROR", "error"|"message"}
    # with a 4xx/5xx status (the default verdict: 401/403 for a bad key or plan are not asked again).
    rest_limited_wait_s = 12.0
    # "Each account comes with access to one simultaneous WebSocket connection per cluster" (knowledge base, "How
    # many Polygon WebSocket connections can I use at one time?"; more are bought per connection), and "there is
    # no limitation on our side to the number of tickers you can subscribe to" on one connection.
    connection_limits = ConnectionLimits(max_connections=1)
    wildcard_symbol = "*"  # T.*: every trade of the cluster

    def __init__(self, feed: FeedConfig):
        super().__init__(feed)
        self.options = feed.options_of(PolygonOptions)
        self._key, self._key_problem = self.options.api_key, "" if self.options.api_key else NO_KEY
        self.min_value = self.options.min_trade_value
        self.page_limit = BACKFILL_PAGE

    def __repr__(self) -> str:
        return f"<PolygonProtocol feed={self.feed.name!r}>"  # never the key

    @classmethod
    def config_problems(cls, feed: FeedConfig) -> list[str]:
        """The whole market is one cluster's: "*" cannot pick /stocks or /options from its symbols."""
        if feed.symbols == (cls.wildcard_symbol,) and not urlsplit(feed.url).path.strip("/"):
            return [(f"url: {cls.wildcard_symbol!r} subscribes every trade of one cluster: name it in the url "
                    f"({feed.url.rstrip('/')}/stocks or /options)")]
        return []

    def url(self, base: str) -> str:
        """The configured cluster URL; a bare host gets /options when every symbol is an option, else /stocks."""
        if urlsplit(base).path.strip("/"):
            return base
        cluster = "options" if all(s.startswith(OPTIONS_PREFIX) for s in self.feed.symbols) else "stocks"
        return f"{base.rstrip('/')}/{cluster}"

    def subscribe_messages(self) -> list[str]:
        # The server handles messages in order: the subscription is read once the auth has succeeded.
        channels = ",".join(f"T.{symbol}" for symbol in self.feed.symbols)
        return [
            orjson.dumps({"action": "auth", "params": self._key}).decode(),
            orjson.dumps({"action": "subscribe", "params": channels}).decode(),
        ]

    def parse(self, frame: bytes | str, received_ns: int, out: ParsedRows) -> Control | None:
        events = load_json(frame, list)
        control, trades, problem, sample = Control.INFO, 0, "", None  # the first bad event, and what is wrong
        for event in events:
            kind = event.get("ev") if isinstance(event, dict) else None
            if kind == "T":
                try:
                    trade = event_trade(event, received_ns, self.trade_number)
                except (KeyError, TypeError, ValueError) as exc:
                    if not problem:
                        problem, sample = f"bad trade event: {exc!r}", event
                    continue
                trades += 1
                if self._worth_keeping(trade):
                    out.trades.append(trade)
            elif kind == "status":
                control = self._status(event)
            elif not problem:
                problem, sample = f"unexpected event {kind!r}", event
        if problem:  # a bad event drops only itself: the frame's good trades are already in `out`
            raise MalformedFrame(problem, orjson.dumps(sample))
        return None if trades else control

    def _status(self, event: dict) -> Control:
        status = event.get("status")
        if status == "auth_failed":
            message = str(event.get("message", ""))
            if self._key:
                message = message.replace(self._key, "***")
            raise SubscriptionRejected(f"Polygon refused the API key ({message or status})"
                                       + (f"; {self._key_problem}" if self._key_problem else ""))
        if status == "success":
            return Control.SUBSCRIBED
        return Control.INFO  # connected, auth_success, and notices such as max_connections

    def _worth_keeping(self, trade: Trade) -> bool:
        if not self.min_value:
            return True
        # Worked out per trade, not kept per symbol: under T.* the symbols are every contract that trades.
        multiplier = self.options.contract_multiplier or (
            OPTIONS_MULTIPLIER if trade.symbol.startswith(OPTIONS_PREFIX) else 1.0)
        return float(trade.price) * float(trade.amount) * multiplier >= self.min_value  # Decimals too

    # --- outage backfill over REST
    def outage_gaps(self, symbols: tuple[str, ...], since_ns: int, until_ns: int) -> list[Gap]:
        """Every symbol's trades from the last one seen before the outage to the newest of the first
        burst after it.

        Both ends are inclusive and widened to whole milliseconds (the stream's precision); what
        was already received comes back as duplicates and is dropped by the dedup window and QuestDB.

        Nothing under "*" (T.*, any_symbol): v3 trades are asked per ticker, and no documented REST endpoint
        answers every trade of a cluster by time, so the trades of an outage of the whole market are lost (and
        `history` and `marketfeed backfill` fetch nothing either: both start from these windows).
        """
        if self.any_symbol():
            return []
        since = since_ns // _MS * _MS
        until = until_ns // _MS * _MS + _MS - 1 if until_ns else 0
        return [Gap(symbol, since_ns=since, until_ns=until) for symbol in symbols]

    def backfill_request(self, gap: Gap) -> HttpRequest:
        if gap.page:
            target = gap.page
        else:
            query = {"timestamp.gte": gap.since_ns, "limit": self.page_limit, "sort": "timestamp", "order": "asc"}
            if gap.until_ns:
                query["timestamp.lte"] = gap.until_ns
            target = f"/v3/trades/{quote(gap.symbol, safe=':')}?{urlencode(query)}"
        separator = "&" if "?" in target else "?"
        return HttpRequest(f"{self.feed.rest_url.rstrip('/')}{target}{separator}{urlencode({'apiKey': self._key})}")

    def parse_backfill(self, gap: Gap, body: bytes, received_ns: int) -> tuple[list[Trade], Gap | None]:
        try:
            page = orjson.loads(body)
            rows = [rest_trade(gap.symbol, result, received_ns, self.trade_number)
                    for result in page.get("results") or ()]
            next_url = page.get("next_url") or ""
            if not isinstance(next_url, str):
                raise TypeError(f"next_url is a {type(next_url).__name__}")
            url = urlsplit(next_url)  # ValueError: a bad IPv6 host or port
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
            raise MalformedFrame(f"bad v3 trades page: {exc!r}", body) from None
        rows = [row for row in rows if self._worth_keeping(row)]
        if not next_url:
            return rows, None
        # Only the path and cursor are taken from next_url: the key goes nowhere but the configured host.
        next_page = f"{url.path}?{url.query}" if url.query else url.path
        if not next_page.startswith("/") or next_page == gap.page:  # the first page again, or this one: forever
            raise MalformedFrame(f"next_url names no next page: {next_url[:200]!r}", body)
        return rows, replace(gap, page=next_page)


@dataclass(frozen=True)
class PolygonOptions(ExchangeOptions):
    # The key is a secret: hidden from repr, never logged; the loader resolves it (module docstring).
    api_key: str = secret(env=KEY_ENV)
    api_key_file: str = ""  # a file holding the key (systemd credential), instead of api_key in the config file
    min_trade_value: float = bounded(0.0, min=0.0)  # store only trades worth price × size × multiplier ≥ this
    contract_multiplier: float = bounded(0.0, min=0.0)  # 0: 100 for options (O: tickers), 1 for stocks


PROTOCOL = PolygonProtocol

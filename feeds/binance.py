"""Binance spot market streams (combined-stream endpoint) and its REST backfill.

Wire format: wss://<host>/stream?streams=btcusdt@trade/btcusdt@aggTrade/btcusdt@kline_1m, each
frame {"stream": name, "data": event}. A connection of more streams than fit a URL opens /stream bare and
subscribes with {"method": "SUBSCRIBE", "params": [stream, …], "id": n}, answered {"result": null, "id": n}
or an error {"code": n, "msg": …(, "id": n)} (web-socket-streams.md, "Live Subscribing"). Events:
  trade     {"e": "trade", "E": ms, "s": "BTCUSDT", "t": id, "p": "dec", "q": "dec", "T": ms, "m": buyer_is_maker}
  aggTrade  {"e": "aggTrade", "E": ms, "s": …, "a": agg id, "p", "q", "f": first id, "l": last id, "T": ms, "m"}
  kline     {"e": "kline", "E": ms, "s": …, "k": {"t": open ms, "T": close ms, "i": "1m", "o", "h", "l",
            "c", "v", "x": closed, …}}
The server pings every 20 s (websocket-client answers by itself), ends every connection at 24 h and
may announce a shutdown first ({"e": "serverShutdown"}, documented as {"event": {…}}).

Aggregate trades go to the trades table under exchange "binance-agg": their ids are a sequence of
their own (same numbers as trade ids, different meaning), so the DEDUP key (ts, exchange, symbol,
trade_id) keeps them apart and `verify` checks each sequence on its own.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit

import msgspec
import orjson

from marketfeed.config.schema import ExchangeOptions
from marketfeed.feeds.base import (
    ConnectionLimits,
    Control,
    FeedProtocol,
    Gap,
    HttpRequest,
    MalformedFrame,
    ParsedRows,
    SubscriptionRejected,
    decimal,
    exact_decimal,
    load_json,
)
from marketfeed.feeds.rest_policy import RestVerdict, VerdictKind, error_text, retry_after_s
from marketfeed.feeds.rows import Candle, Trade, new_trade
from marketfeed.feeds.universe import Listing, listing
from marketfeed.storage.tables import CANDLES

if TYPE_CHECKING:
    from marketfeed.config.schema import FeedConfig

BACKFILL_PAGE = 1000  # historicalTrades', aggTrades' and klines' maximum limit
AGG_EXCHANGE = "binance-agg"  # exchange label of aggregate trades in the trades table
AGG_STREAM = "@aggTrade"  # stream_key suffix of aggregate-trade ids
KLINE = "kline_"  # channel kline_<interval>; its candle gaps' stream is <SYMBOL>@kline_<interval>
INTERVAL_MS = {"1s": 1000, "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
               "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000, "6h": 21_600_000, "8h": 28_800_000,
               "12h": 43_200_000, "1d": 86_400_000, "3d": 259_200_000, "1w": 604_800_000}
_MS = 1_000_000
# Request weights, developers.binance.com/docs/binance-spot-api-docs/rest-api/market-data-endpoints: "Old trade
# lookup" historicalTrades 25, aggTrades 4, klines 2; general-endpoints: exchangeInfo 20; an endpoint that states
# none weighs 1.
REQUEST_WEIGHTS = {"historicalTrades": 25, "aggTrades": 4, "klines": 2, "exchangeInfo": 20}
# Up to this many streams a connection names in its URL (~2.5 KB of query at the longest names, e.g.
# "1000satsusdt@kline_1m/"); more open /stream bare and SUBSCRIBE. Binance documents no URL limit; the usual
# request-line buffers of HTTP front ends are 8 KB, which 1024 streams (~18 KB) would overflow.
URL_STREAMS = 100
# Streams per SUBSCRIBE message. Binance documents no limit per message; a SUBSCRIBE of 437 streams (~8 KB) was
# seen to fail silently where 436 worked (altangent/ccxws#161), so one message stays near 5 KB: 1024 streams are
# 6 messages, which the reader paces below connection_limits.max_client_messages_per_s.
SUBSCRIBE_STREAMS = 200
# aggTrades by time: "If startTime and endTime are sent, time between startTime and endTime must be less than 1 hour."
AGG_WINDOW_MS = 3_600_000 - 1
SHORTEST_BAN_S = 120.0  # "IP bans … scale in duration for repeat offenders, from 2 minutes to 3 days"


# The hot path: nearly every frame is a combined-stream trade or aggTrade. msgspec reads one straight into these
# typed structs (no dict per frame, none tracked by the GC) at a fifth of orjson.loads plus the lookups; any other
# frame, or one whose fields are not of the documented types, fails here and takes the general path below, which
# judges it exactly as before (MalformedFrame, Control). Unknown fields ("E", "M", "stream") are skipped.
class _TradeEvent(msgspec.Struct, tag_field="e", tag="trade", gc=False):
    s: str
    t: int
    p: str
    q: str
    T: int
    m: bool


class _AggTradeEvent(msgspec.Struct, tag_field="e", tag="aggTrade", gc=False):
    s: str
    a: int
    p: str
    q: str
    T: int
    m: bool


class _CombinedTrade(msgspec.Struct, gc=False):
    data: _TradeEvent | _AggTradeEvent


_decode_trade = msgspec.json.Decoder(_CombinedTrade).decode


class BinanceProtocol(FeedProtocol):
    exchange = "binance"
    contiguous_ids = True
    max_connection_age_s = 24 * 3600 - 600  # Binance cuts at 24 h: roll over to a fresh connection 10 min before
    rest_weight_limit = 6000  # exchangeInfo rateLimits: REQUEST_WEIGHT 6000 per 1 MINUTE, per IP
    rest_weight_header = "x-mbx-used-weight-1m"
    # web-socket-streams.md, "WebSocket Limits": "A single connection can listen to a maximum of 1024 streams";
    # "a limit of 5 incoming messages per second" (PING, PONG and JSON control messages alike: the pong to the
    # server's ping every 20 s counts too); "a limit of 300 connections per attempt every 5 minutes per IP".
    connection_limits = ConnectionLimits(max_streams=1024, max_client_messages_per_s=5, max_connects=300,
                                         connect_window_s=300.0)

    @classmethod
    def config_problems(cls, feed: FeedConfig) -> list[str]:
        """Binance streams: trade, aggTrade, kline_<interval> with the documented intervals."""
        intervals = ", ".join(INTERVAL_MS)
        return [f"channels: {channel!r} is not a Binance stream: use trade, aggTrade or kline_<interval> "
                f"({intervals})" for channel in feed.channels
                if channel not in ("trade", "aggTrade") and channel.removeprefix(KLINE) not in INTERVAL_MS]

    def candle_intervals(self) -> tuple[str, ...]:
        return tuple(c[len(KLINE):] for c in self.feed.channels if c.startswith(KLINE))

    def url(self, base: str) -> str:
        streams = self._streams()
        query = f"?streams={'/'.join(streams)}" if len(streams) <= URL_STREAMS else ""
        return f"{base.rstrip('/')}/stream{query}"

    def subscribe_messages(self) -> list[str]:
        """None when the URL names the streams; else SUBSCRIBE messages of at most SUBSCRIBE_STREAMS streams each."""
        streams = self._streams()
        if len(streams) <= URL_STREAMS:
            return []
        return [orjson.dumps({"method": "SUBSCRIBE", "params": streams[i:i + SUBSCRIBE_STREAMS], "id": n}).decode()
                for n, i in enumerate(range(0, len(streams), SUBSCRIBE_STREAMS), 1)]

    def _streams(self) -> list[str]:
        return [f"{s.lower()}@{ch}" for s in self.feed.symbols for ch in self.feed.channels]

    def streams_per_symbol(self) -> int:
        return len(self.feed.channels)

    def listing_request(self) -> HttpRequest:
        """GET /api/v3/exchangeInfo (weight 20), without its permissionSets ("for a reduced payload size")."""
        return HttpRequest(f"{self.feed.rest_url.rstrip('/')}/api/v3/exchangeInfo?showPermissionSets=false")

    def parse_listing(self, body: bytes) -> list[Listing]:
        """exchangeInfo's "symbols": [{"symbol", "status" (TRADING, HALT, BREAK), "baseAsset", "quoteAsset", …}]."""
        try:
            symbols = orjson.loads(body)["symbols"]
            if not isinstance(symbols, list):
                raise TypeError(f"symbols is a {type(symbols).__name__}")
            return [listing(s["symbol"], s["baseAsset"], s["quoteAsset"], s["status"] == "TRADING") for s in symbols]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise MalformedFrame(f"bad exchangeInfo: {exc!r}", body) from None

    def trade_labels(self) -> tuple[str, ...]:
        return (("binance",) if "trade" in self.feed.channels else ()) + (
            (AGG_EXCHANGE,) if "aggTrade" in self.feed.channels else ())

    @classmethod
    def stored_labels(cls) -> tuple[str, ...]:
        return ("binance", AGG_EXCHANGE)

    def stream_key(self, row: Trade) -> str:
        # Indexed, not row.symbol: called for every live trade, where a NamedTuple's properties cost twice as much.
        return row[2] + AGG_STREAM if row[1] == AGG_EXCHANGE else row[2]

    def parse(self, frame: bytes | str, received_ns: int, out: ParsedRows) -> Control | None:
        # msgspec checks the UTF-8 of the strings it reads, not of the fields it skips: a frame that is not ASCII
        # (none of Binance's trades) is left to orjson, which refuses invalid UTF-8 anywhere in it.
        if not frame.isascii():
            return self._parse_any(frame, received_ns, out)
        try:
            data = _decode_trade(frame).data
        except msgspec.DecodeError:  # not a combined trade or aggTrade of the documented types (ValidationError too)
            return self._parse_any(frame, received_ns, out)
        price: float | Decimal
        amount: float | Decimal
        try:
            if self.feed.decimals:
                price, amount = exact_decimal(data.p), exact_decimal(data.q)
            elif "_" in data.p or "_" in data.q:  # text only Python reads as a number: malformed
                raise ValueError(data.p)
            else:
                price, amount = float(data.p), float(data.q)
        except ValueError:  # no decimal string: the general path refuses the frame with its usual reason
            return self._parse_any(frame, received_ns, out)
        if isinstance(data, _TradeEvent):
            out.trades.append(new_trade((data.T * 1_000_000, "binance", data.s, data.t, price, amount,
                                         "sell" if data.m else "buy", received_ns)))
        else:
            out.trades.append(new_trade((data.T * 1_000_000, AGG_EXCHANGE, data.s, data.a, price, amount,
                                         "sell" if data.m else "buy", received_ns)))
        return None

    def _parse_any(self, frame: bytes | str, received_ns: int, out: ParsedRows) -> Control | None:
        msg = load_json(frame, dict)
        data = msg.get("data", msg.get("event", msg))  # combined stream, connection event, raw stream
        event = data.get("e") if isinstance(data, dict) else None
        try:
            if event == "trade":
                out.trades.append(new_trade((int(data["T"]) * 1_000_000, "binance", data["s"], data["t"],
                                             self.trade_decimal(data["p"]), self.trade_decimal(data["q"]),
                                             "sell" if data["m"] else "buy", received_ns)))
                return None
            if event == "aggTrade":
                out.trades.append(new_trade((int(data["T"]) * 1_000_000, AGG_EXCHANGE, data["s"], data["a"],
                                             self.trade_decimal(data["p"]), self.trade_decimal(data["q"]),
                                             "sell" if data["m"] else "buy", received_ns)))
                return None
            if event == "kline":
                k = data["k"]
                candle = Candle(int(k["t"]) * 1_000_000, "binance", data["s"], k["i"], decimal(k["o"]), decimal(k["h"]),
                                decimal(k["l"]), decimal(k["c"]), decimal(k["v"]), bool(k["x"]), received_ns)
                (out.candles if candle.closed else out.live_candles).append(candle)
                return None
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedFrame(f"bad {event} event: {exc!r}", frame) from None
        if event == "serverShutdown":
            return Control.RECONNECT
        if "id" in msg and "result" in msg:
            return Control.SUBSCRIBED  # reply to a SUBSCRIBE request
        # An error answer: {"code", "msg", "id"}, {"error": {…}, "id"}, or (a few documented ones) without an id.
        if ("id" in msg and ("error" in msg or "code" in msg)) or ("code" in msg and "msg" in msg):
            error = msg.get("error", msg)
            raise SubscriptionRejected(f"code {error.get('code')}: {error.get('msg')}" if isinstance(error, dict)
                                       else str(error))
        raise MalformedFrame(f"unexpected event type {event!r}", frame)

    def outage_gaps(self, symbols: tuple[str, ...], since_ns: int, until_ns: int) -> list[Gap]:
        """Candles that closed while the connection was down: the kline stream never repeats them.

        Trade ids reveal their own gaps; candles only have time. The window starts one interval
        before the candle open at the outage, in case its closing event was lost with the connection.
        """
        gaps = []
        for channel in self.feed.channels:
            step_ms = INTERVAL_MS.get(channel[len(KLINE):]) if channel.startswith(KLINE) else None
            if step_ms is not None:
                open_ms = since_ns // _MS - since_ns // _MS % step_ms
                gaps += [Gap(symbol, since_ns=(open_ms - step_ms) * _MS, until_ns=until_ns,
                             stream=f"{symbol}@{channel}", table=CANDLES) for symbol in symbols]
        return gaps

    def history_gaps(self, symbols: tuple[str, ...], since_ns: int, until_ns: int) -> list[Gap]:
        """Candles as after an outage; trades and aggregate trades by time: their first id is found first."""
        trades = [Gap(symbol, since_ns=since_ns, until_ns=until_ns, stream=symbol + suffix)
                  for suffix, channel in (("", "trade"), (AGG_STREAM, "aggTrade")) if channel in self.feed.channels
                  for symbol in symbols]
        return trades + self.outage_gaps(symbols, since_ns, until_ns)

    def backfill_request(self, gap: Gap) -> HttpRequest:
        if KLINE in gap.stream:
            query = urlencode({"symbol": gap.symbol, "interval": _kline_interval(gap),
                               "startTime": gap.since_ns // _MS, "endTime": gap.until_ns // _MS,
                               "limit": BACKFILL_PAGE})
            return HttpRequest(f"{self.feed.rest_url.rstrip('/')}/api/v3/klines?{query}")
        if _locating(gap):  # the first aggregate trade of the window names the first ids of both sequences
            start_ms = gap.since_ns // _MS
            end_ms = start_ms + AGG_WINDOW_MS
            query = urlencode({"symbol": gap.symbol, "startTime": start_ms,
                               "endTime": min(end_ms, gap.until_ns // _MS) if gap.until_ns else end_ms, "limit": 1})
            return HttpRequest(f"{self.feed.rest_url.rstrip('/')}/api/v3/aggTrades?{query}")
        endpoint = "aggTrades" if gap.stream.endswith(AGG_STREAM) else "historicalTrades"
        query = urlencode({"symbol": gap.symbol, "fromId": gap.first_id, "limit": BACKFILL_PAGE})
        return HttpRequest(f"{self.feed.rest_url.rstrip('/')}/api/v3/{endpoint}?{query}")

    def parse_backfill(self, gap: Gap, body: bytes, received_ns: int) -> tuple[list, Gap | None]:
        if KLINE in gap.stream:
            return self._parse_klines(gap, body, received_ns)
        agg = gap.stream.endswith(AGG_STREAM)
        if _locating(gap):
            return [], _located(gap, body, agg, received_ns)
        try:
            page = orjson.loads(body)
            if agg:
                rows = [Trade(int(t["T"]) * _MS, AGG_EXCHANGE, gap.symbol, _rest_id(t["a"]),
                              self.trade_decimal(t["p"]), self.trade_decimal(t["q"]), "sell" if t["m"] else "buy",
                              received_ns) for t in page]
            else:
                rows = [Trade(int(t["time"]) * _MS, "binance", gap.symbol, _rest_id(t["id"]),
                              self.trade_decimal(t["price"]), self.trade_decimal(t["qty"]),
                              "sell" if t["isBuyerMaker"] else "buy", received_ns) for t in page]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise MalformedFrame(f"bad {'aggTrades' if agg else 'historicalTrades'} page: {exc!r}", body) from None
        full = len(rows) >= BACKFILL_PAGE
        next_id = rows[-1].trade_id + 1 if rows else gap.first_id
        if gap.last_id is not None:
            rows = [row for row in rows if row.trade_id <= gap.last_id]
        if gap.until_ns:  # a window by time (marketfeed backfill): its end is where this gap ends
            kept = [row for row in rows if row.ts_ns <= gap.until_ns]
            if len(kept) < len(rows):
                return kept, None
        if not full:
            return rows, None  # nothing newer exists yet
        if gap.last_id is not None and next_id > gap.last_id:
            return rows, None
        if next_id <= gap.first_id:  # fromId answers ids from it on: a page that ends before it would repeat forever
            raise MalformedFrame(f"page ends at id {next_id - 1}, before fromId {gap.first_id}", body)
        return rows, Gap(gap.symbol, next_id, gap.last_id, until_ns=gap.until_ns, stream=gap.stream)

    def rest_verdict(self, status: int, headers: Mapping[str, str], body: bytes) -> RestVerdict:
        """418 is Binance's IP ban: no request until Retry-After ("until the ban is over") has passed; asking
        meanwhile extends it. 429 carries Retry-After too, and both the {"code": -1003, "msg"} body."""
        if status == 418:
            return RestVerdict(VerdictKind.BANNED, retry_after_s(headers) or SHORTEST_BAN_S,
                               f"HTTP 418: {error_text(body)}")
        return super().rest_verdict(status, headers, body)

    def request_weight(self, request: HttpRequest) -> int:
        return REQUEST_WEIGHTS.get(urlsplit(request.url).path.rsplit("/", 1)[-1], 1)

    def _parse_klines(self, gap: Gap, body: bytes, received_ns: int) -> tuple[list[Candle], Gap | None]:
        """Closed candles of a klines page: those that closed before the live stream resumed (until_ns).

        The one still open then comes closed over the live stream, as every later one does."""
        interval = _kline_interval(gap)
        try:
            page = orjson.loads(body)
            candles = [Candle(int(k[0]) * _MS, "binance", gap.symbol, interval, decimal(k[1]), decimal(k[2]),
                              decimal(k[3]), decimal(k[4]), decimal(k[5]), True, received_ns)
                       for k in page if int(k[6]) * _MS < gap.until_ns]
        except (orjson.JSONDecodeError, IndexError, KeyError, TypeError, ValueError) as exc:
            raise MalformedFrame(f"bad klines page: {exc!r}", body) from None
        if len(page) < BACKFILL_PAGE or len(candles) < len(page):
            return candles, None
        # A full page, all closed: the next one starts after its last candle.
        next_ns = candles[-1].ts_ns + INTERVAL_MS[interval] * _MS
        if next_ns <= gap.since_ns:  # startTime answers candles from it on: this page would repeat forever
            raise MalformedFrame(f"page ends at {candles[-1].ts_ns // _MS} ms, before startTime", body)
        return candles, Gap(gap.symbol, since_ns=next_ns, until_ns=gap.until_ns, stream=gap.stream, table=gap.table)


def _locating(gap: Gap) -> bool:
    """A trade gap given by time only: its first id is not known yet."""
    return not gap.first_id and bool(gap.since_ns)


def _located(gap: Gap, body: bytes, agg: bool, now_ns: int) -> Gap | None:
    """The gap from the first id of its window on; the next window of AGG_WINDOW_MS if this one had no trade
    (until its end, or now if it is open-ended)."""
    try:
        page = orjson.loads(body)
        first = [_rest_id(t["a"] if agg else t["f"]) for t in page[:1]]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise MalformedFrame(f"bad aggTrades page: {exc!r}", body) from None
    if first:
        return Gap(gap.symbol, first[0], until_ns=gap.until_ns, stream=gap.stream)
    next_ns = (gap.since_ns // _MS + AGG_WINDOW_MS + 1) * _MS
    return dataclasses.replace(gap, since_ns=next_ns) if next_ns <= (gap.until_ns or now_ns) else None


def _rest_id(value: object) -> int:
    """A trade or aggregate trade id: a JSON integer (a long, in Binance's docs); anything else makes the page
    malformed, since the next page is asked from it."""
    if type(value) is int:
        return value
    raise TypeError(f"not an integer id: {value!r}")


def _kline_interval(gap: Gap) -> str:
    return gap.stream.rsplit(KLINE, 1)[1]


@dataclass(frozen=True)
class BinanceOptions(ExchangeOptions):
    """Binance feeds take the common keys only."""


PROTOCOL = BinanceProtocol

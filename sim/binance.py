"""Binance spot twin: market streams (combined and raw) and the public trade REST endpoints.

WebSocket: /stream?streams=btcusdt@trade/ethusdt@trade frames {"stream": name, "data": event};
/ws/btcusdt@trade (or bare /ws, /stream plus SUBSCRIBE) sends the bare event. Live methods:
SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS, SET_PROPERTY/GET_PROPERTY "combined".
Data streams: <symbol>@trade, <symbol>@aggTrade (one aggregate per trade: id AGG_ID_BASE + trade id,
f = l = the trade id) and <symbol>@kline_<interval> (an in-progress update after every trade; a
trade that opens a new period first closes the previous one with "x": true, so a period closes
on its next trade rather than on the clock). Other well-formed stream names are accepted and stay quiet.
Connection.announce_shutdown() sends {"event": {"e": "serverShutdown", "E": ms}}.
REST: GET /api/v3/historicalTrades?symbol=&fromId=&limit=, /api/v3/trades?symbol=&limit=,
/api/v3/aggTrades?symbol=&fromId=|startTime=&endTime=&limit= (a time window under an hour),
/api/v3/klines?symbol=&interval=&startTime=&endTime=&limit=,
/api/v3/exchangeInfo[?symbol=] (rateLimits and each symbol's status only).
Every REST answer carries X-MBX-USED-WEIGHT-1M, the weight used this minute, each request counted at its
documented weight (WEIGHTS); past `weight_limit` (exchangeInfo REQUEST_WEIGHT, 6000 per minute) the
answer is 429 with Retry-After until the minute ends, and 429s ignored make an IP ban, 418 with
Retry-After until it ends (sim.faults.WeightLimit: the documented rules and our simplifications).
Both carry Binance's -1003 TOO_MANY_REQUESTS body; twin options weight_limit, weight_minute_s,
ban_after, ban_s shrink the budget, the minute and the ban for tests.
GET /api/v3/exchangeInfo[?symbol=|symbols=["A","B"]|symbolStatus=] lists the symbols trading now (status
TRADING; a symbol delisted with still_listed=True stays as BREAK), each with its base and quote asset.
Connection limits (developers.binance.com/docs/binance-spot-api-docs/web-socket-streams: "WebSocket connections
have a limit of 5 incoming messages per second. A message is considered: A PING frame, A PONG frame, A JSON
controlled message (e.g. subscribe, unsubscribe). A connection that goes beyond the limit will be
disconnected"; "A single connection can listen to a maximum of 1024 streams"; "There is a limit of 300
connections per attempt every 5 minutes per IP"), always enforced; twin options change the numbers for tests:
- max_messages (5) within message_window_s (1.0): the next message closes the connection with 1008 "Too many
  requests", the close clients report (github.com/binance/binance-connector-js/issues/530).
- max_streams (1024), URL streams and SUBSCRIBE'd ones together: a SUBSCRIBE beyond it closes the connection
  with 1008 (Binance documents the number, not the answer; a disconnect is what client libraries report), a
  URL beyond it is refused at the handshake with HTTP 400 and Binance's error body.
- max_connection_attempts (300) within connection_window_s (300.0) per client IP: the next is refused at the
  handshake with HTTP 429 and a -1003 body (the status Binance's WebSocket API documents for its limits;
  the wording is ours). A refused attempt does not count.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import orjson

from marketfeed.sim.faults import WeightLimit
from marketfeed.sim.limits import Limit, MessageLimit, Window
from marketfeed.sim.market import ExchangeMarket, SymbolMarket, Trade
from marketfeed.sim.twin import Refused, Rejected, RestResponse, Session, Twin, retry_after, server_error

COMBINED, RAW = "combined", "raw"
DEFAULT_LIMIT, MAX_LIMIT = 500, 1000
_STREAM_NAME = re.compile(r"^[a-z0-9]+@[A-Za-z0-9_]+$")
AGG_ID_BASE = 7_000_000_000  # aggregate ids: a sequence of their own, apart from trade ids
INTERVAL_MS = {"1s": 1000, "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
               "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000, "6h": 21_600_000, "8h": 28_800_000,
               "12h": 43_200_000, "1d": 86_400_000}
_METHODS = "`SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`"

# Binance's REST error bodies (HTTP 400).
INVALID_SYMBOL = {"code": -1121, "msg": "Invalid symbol."}
MISSING_SYMBOL = {"code": -1102, "msg": "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."}
# -1003 TOO_MANY_REQUESTS and -1001 DISCONNECTED, worded as in
# developers.binance.com/docs/binance-spot-api-docs/errors.
TOO_MUCH_WEIGHT = ("Too much request weight used; current limit is {limit} request weight per 1 MINUTE. "
                   "Please use WebSocket Streams for live updates to avoid polling the API.")
BANNED = ("Way too much request weight used; IP banned until {until_ms}. "
          "Please use WebSocket Streams for live updates to avoid bans.")
MORE_THAN_AN_HOUR = {"code": -1127, "msg": "More than 1 hours between startTime and endTime."}
HOUR_MS = 3_600_000
INTERNAL_ERROR = {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."}
# Request weights, from developers.binance.com/docs/binance-spot-api-docs/rest-api/market-data-endpoints
# (trades, historicalTrades 25; aggTrades 4; klines 2) and general-endpoints (exchangeInfo 20).
WEIGHTS = {"/api/v3/trades": 25, "/api/v3/historicalTrades": 25, "/api/v3/aggTrades": 4, "/api/v3/klines": 2,
           "/api/v3/exchangeInfo": 20}
OTHER_WEIGHT = 1  # an unknown path (404) still counts as a request
USED_WEIGHT = "X-MBX-USED-WEIGHT-1M"
# exchangeInfo splits a symbol at its quote asset; the longest that matches wins (FDUSD before USD).
QUOTE_ASSETS = sorted(("USDT", "USDC", "FDUSD", "TUSD", "BUSD", "DAI", "BTC", "ETH", "BNB", "EUR", "GBP", "TRY",
                       "BRL", "JPY", "AUD", "USD"), key=len, reverse=True)
TOO_MANY_CONNECTIONS = ("Too many connection attempts; current limit is {limit} connection attempts per "
                        "{seconds:g} seconds.")


@dataclass
class BinanceSession(Session):
    """streams_of: symbol → its data-carrying streams on this connection, in subscription order (a trade's
    frames are found without scanning up to 1024 stream names)."""

    streams_of: dict[str, list[str]] = field(default_factory=dict)


class BinanceTwin(Twin):
    exchange = "binance"
    weight_header = USED_WEIGHT

    def __init__(self, market: ExchangeMarket, weight_limit: int = 6000, weight_minute_s: float = 60.0,
                 ban_after: int = 3, ban_s: float = 120.0, max_streams: int = 1024, max_messages: int = 5,
                 message_window_s: float = 1.0, max_connection_attempts: int = 300,
                 connection_window_s: float = 300.0):
        """weight_limit: REQUEST_WEIGHT per minute; weight_minute_s: how long the twin's minute lasts (the header
        keeps its -1M name); ban_after: ignored 429s that make an IP ban; ban_s: how long it lasts. The connection
        limits: see the module docstring."""
        super().__init__(market)
        self.weights = WeightLimit(weight_limit, weight_minute_s, ban_after, ban_s)
        self.max_streams = max_streams
        self._break: dict[str, None] = {}  # delisted symbols exchangeInfo still shows, as BREAK
        # (symbol, interval) → (trade index, closing event or None, live event, candle) of the newest trade
        self._live_klines: dict[tuple[str, str], tuple[int, dict | None, dict, _Kline]] = {}
        self.connection_limit = Window(max_connection_attempts, connection_window_s)
        self.message_limit = MessageLimit(Window(max_messages, message_window_s), per_ip=False, control_frames=True)

    @staticmethod
    def generated_symbol(k: int) -> str:
        return f"SYM{k + 1:04d}USDT"

    def open_session(self, path: str) -> Session:
        url = urlsplit(path)
        if url.path == "/stream":
            streams = parse_qs(url.query).get("streams", [""])[0]
            session = BinanceSession(COMBINED)
        elif url.path == "/ws" or url.path.startswith("/ws/"):
            streams = url.path[len("/ws/") :]
            session = BinanceSession(RAW)
        else:
            raise Rejected(404, b"")
        names = [name for name in streams.split("/") if name]
        if not all(_STREAM_NAME.match(name) for name in names):
            raise Rejected(400, orjson.dumps({"code": 2, "msg": "Invalid request: invalid stream"}))
        if (count := len(dict.fromkeys(names))) > self.max_streams:
            raise Rejected(400, orjson.dumps({"code": 2, "msg": f"Invalid request: more than {self.max_streams} "
                                                                "streams"}),
                           Limit.STREAMS, f"{count} streams in the URL, at most {self.max_streams}")
        self._subscribe(session, names)
        return session

    def on_message(self, session: Session, message: str | bytes) -> list[bytes]:
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError:
            return [_error(3, "Invalid JSON: expected value at line 1 column 1", None)]
        if not isinstance(request, dict) or "method" not in request:
            return [_error(2, "Invalid request: missing field `method`", None)]
        request_id, method, params = request.get("id"), request["method"], request.get("params", [])
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(isinstance(p, str) and _STREAM_NAME.match(p) for p in params):
                return [_error(2, "Invalid request: invalid stream", request_id)]
            if method == "SUBSCRIBE":
                if (count := len(set(session.streams) | set(params))) > self.max_streams:
                    self.refuse(Refused(session, Limit.STREAMS, f"SUBSCRIBE to {count} streams, at most "
                                        f"{self.max_streams}", close_reason="Too many streams"))
                    return []
                self._subscribe(session, params)
            else:
                self._unsubscribe(session, params)
            return [_result(None, request_id)]
        if method == "LIST_SUBSCRIPTIONS":
            return [_result(session.streams, request_id)]
        if method in ("SET_PROPERTY", "GET_PROPERTY"):
            if not params or params[0] != "combined":
                return [_error(0, "Unknown property", request_id)]
            if method == "GET_PROPERTY":
                return [_result(session.style == COMBINED, request_id)]
            if len(params) != 2 or not isinstance(params[1], bool):
                return [_error(1, "Invalid value type: expected Boolean", request_id)]
            session.style = COMBINED if params[1] else RAW
            return [_result(None, request_id)]
        return [_error(2, f"Invalid request: unknown variant {method}, expected one of {_METHODS}", request_id)]

    def trade_frame(self, trade: Trade, style: str) -> bytes:
        event = {
            "e": "trade",
            "E": trade.time_ms,
            "s": trade.symbol,
            "t": trade.trade_id,
            "p": trade.price,
            "q": trade.qty,
            "T": trade.time_ms,
            "m": trade.buyer_is_maker,
            "M": True,
        }
        if style == COMBINED:
            return orjson.dumps({"stream": f"{trade.symbol.lower()}@trade", "data": event})
        return orjson.dumps(event)

    def connection_frames(self, trade: Trade, session: Session, frame: bytes) -> list[bytes]:
        """The frames of every stream of this connection that the trade feeds, in subscription order."""
        assert isinstance(session, BinanceSession)
        frames = []
        for name in session.streams_of.get(trade.symbol, ()):
            channel = name[name.index("@") + 1:]
            if channel == "trade":
                frames.append(frame)
            elif channel == "aggTrade":
                frames.append(_wrap(session.style, name, _agg_event(trade)))
            elif channel.startswith("kline_"):
                closed, live = self._kline_events(trade, channel[len("kline_"):])
                if closed is not None:
                    frames.append(_wrap(session.style, name, closed))
                frames.append(_wrap(session.style, name, live))
        return frames

    def messages_exceeded(self, session: Session) -> Refused:
        assert self.message_limit is not None  # set in __init__
        return Refused(session, Limit.MESSAGE_RATE, f"more incoming messages than {self.message_limit.rate}",
                       close_reason="Too many requests")

    def connection_refused(self) -> RestResponse:
        limit = self.connection_limit
        assert isinstance(limit, Window)  # set in __init__
        return RestResponse.json({"code": -1003, "msg": TOO_MANY_CONNECTIONS.format(limit=limit.limit,
                                                                                   seconds=limit.seconds)}, 429)

    def _kline_events(self, trade: Trade, interval: str) -> tuple[dict | None, dict]:
        """(the previous period's closing event if this trade opens a new period, the in-progress event after
        it): built on the candle of the symbol's previous trade, so a trade costs O(1), not a scan of its period,
        and computed once for every connection subscribed."""
        key = (trade.symbol, interval)
        cached = self._live_klines.get(key)
        if cached is not None and cached[0] == trade.index:
            return cached[1], cached[2]
        if cached is not None and cached[0] == trade.index - 1:
            prior: _Kline | None = cached[3]
        else:  # first kline of this symbol and interval (or after a jump): scan once
            prior = _Kline.through(self.market[trade.symbol], trade.index - 1, interval) if trade.index else None
        start = _period(trade, interval)
        if prior is not None and prior.start == start:
            candle, closed = prior.add(trade), None
        else:
            candle, closed = _Kline.of(start, trade), None if prior is None else prior.event(interval, True)
        live = candle.event(interval, False)
        self._live_klines[key] = (trade.index, closed, live, candle)
        return closed, live

    def shutdown_frames(self, session: Session) -> list[bytes]:
        return [orjson.dumps({"event": {"e": "serverShutdown", "E": int(time.time() * 1000)}})]

    def rest(self, path: str, query: dict[str, str], emitted: int) -> RestResponse:
        if path not in WEIGHTS:
            return RestResponse(404, b"", "text/html")
        symbol = query.get("symbol", "")
        if path == "/api/v3/exchangeInfo":
            return self._exchange_info(query)
        if not symbol:
            return RestResponse.json(MISSING_SYMBOL, 400)
        if symbol not in self.market:
            return RestResponse.json(INVALID_SYMBOL, 400)
        if path == "/api/v3/klines":
            return _klines(self.market[symbol], query, self.market[symbol].happened(emitted))
        try:
            limit = int(query.get("limit", DEFAULT_LIMIT))
            from_id = int(query["fromId"]) if path != "/api/v3/trades" and "fromId" in query else None
            start_ms = int(query["startTime"]) if "startTime" in query else None
            end_ms = int(query["endTime"]) if "endTime" in query else None
        except ValueError:
            return RestResponse.json({"code": -1100, "msg": "Illegal characters found in a parameter."}, 400)
        limit = max(1, min(limit, MAX_LIMIT))
        market = self.market[symbol]
        happened = market.happened(emitted)
        if path == "/api/v3/aggTrades":
            if start_ms is not None or end_ms is not None:
                return _agg_trades_by_time(market, start_ms, end_ms, limit, happened)
            start = happened - limit if from_id is None else market.index_of(from_id - AGG_ID_BASE)
            trades = market.trades(start, min(max(start, 0) + limit, happened))
            return RestResponse.json([{k: v for k, v in _agg_event(t).items() if k not in ("e", "E", "s")}
                                      for t in trades])
        start = happened - limit if from_id is None else market.index_of(from_id)  # no fromId: most recent
        return RestResponse.json([_rest_trade(t) for t in market.trades(start, min(max(start, 0) + limit, happened))])

    def rest_weight(self, path: str, query: dict[str, str]) -> int:
        return WEIGHTS.get(path, OTHER_WEIGHT)

    def rest_limited(self, retry_after_s: int | None) -> RestResponse:
        """429 with Retry-After, which Binance sends with every 429 of a request limit."""
        if retry_after_s is None:
            raise ValueError("binance sends Retry-After with a request-limit 429: give retry_after_s")
        assert self.weights is not None  # set in __init__
        body = {"code": -1003, "msg": TOO_MUCH_WEIGHT.format(limit=self.weights.limit)}
        return RestResponse.json(body, 429, retry_after(retry_after_s))

    def rest_banned(self, until_ms: int, retry_after_s: int) -> RestResponse:
        """418 with Retry-After until the ban is over; the message names its end."""
        body = {"code": -1003, "msg": BANNED.format(until_ms=until_ms)}
        return RestResponse.json(body, 418, retry_after(retry_after_s))

    def rest_server_error(self, status: int, retry_after_s: int | None) -> RestResponse:
        server_error(status)  # refuses a status that is no server error
        return RestResponse.json(INTERNAL_ERROR, status, retry_after(retry_after_s))

    def _exchange_info(self, query: dict[str, str]) -> RestResponse:
        """The rate limits a client budgets against and the symbols listed, in the documented shape (the real
        answer carries more filters). symbol=, symbols=["A","B"] (JSON) and symbolStatus= narrow it down, as
        documented (general-endpoints#exchange-information); an unknown symbol is -1121."""
        assert self.weights is not None  # set in __init__
        limits = [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                   "limit": self.weights.limit}]
        listed, halted = self.market.listed, self._break
        shown = [name for name in self.market.symbols if name in listed or name in halted]
        try:
            wanted = [query["symbol"]] if "symbol" in query else orjson.loads(query.get("symbols", "null"))
        except orjson.JSONDecodeError:
            return RestResponse.json({"code": -1100, "msg": "Illegal characters found in parameter 'symbols'."}, 400)
        if wanted is not None:
            known = set(shown)
            if not isinstance(wanted, list) or not all(isinstance(name, str) and name in known for name in wanted):
                return RestResponse.json(INVALID_SYMBOL, 400)
            shown = wanted
        symbols = [_symbol_info(name, "BREAK" if name in self._break else "TRADING") for name in shown]
        if status := query.get("symbolStatus"):
            symbols = [info for info in symbols if info["status"] == status]
        return RestResponse.json({"timezone": "UTC", "serverTime": int(time.time() * 1000), "rateLimits": limits,
                                  "exchangeFilters": [], "symbols": symbols})

    def delisted(self, symbol: str, still_listed: bool) -> None:
        """still_listed: exchangeInfo keeps the symbol, with status BREAK (trading is off), as Binance does for a
        while after a delisting; else it is gone."""
        if still_listed:
            self._break[symbol] = None

    def _subscribe(self, session: Session, names: list[str]) -> None:
        known = set(session.streams)
        session.streams += [name for name in dict.fromkeys(names) if name not in known]
        self.route(session)

    def _unsubscribe(self, session: Session, names: list[str]) -> None:
        gone = set(names)
        session.streams = [name for name in session.streams if name not in gone]
        self.route(session)

    def route(self, session: Session) -> None:
        """Trade, aggTrade and kline streams of listed symbols carry data; other well-formed names stay quiet (a
        stream of a symbol listed later starts with its listing)."""
        assert isinstance(session, BinanceSession)
        listed = self.market.listed
        session.streams_of = {}
        for name in session.streams:
            symbol, _, channel = name.partition("@")
            if _carries_data(channel) and (symbol := symbol.upper()) in listed:
                session.streams_of.setdefault(symbol, []).append(name)
        session.symbols = set(session.streams_of)


def split_symbol(symbol: str) -> tuple[str, str]:
    """(base asset, quote asset) of a Binance symbol, e.g. SYM0001USDT → (SYM0001, USDT)."""
    quote = next((q for q in QUOTE_ASSETS if symbol.endswith(q) and len(symbol) > len(q)), symbol[-3:])
    return symbol[: -len(quote)], quote


def _symbol_info(symbol: str, status: str) -> dict:
    """One exchangeInfo symbol (general-endpoints#exchange-information), with the filters a client reads most."""
    base, quote = split_symbol(symbol)
    return {"symbol": symbol, "status": status, "baseAsset": base, "baseAssetPrecision": 8, "quoteAsset": quote,
            "quotePrecision": 8, "quoteAssetPrecision": 8, "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8,
            "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
            "icebergAllowed": True, "ocoAllowed": True, "otoAllowed": True, "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": True, "cancelReplaceAllowed": True, "isSpotTradingAllowed": status == "TRADING",
            "isMarginTradingAllowed": False,
            "filters": [{"filterType": "PRICE_FILTER", "minPrice": "0.01000000", "maxPrice": "1000000.00000000",
                         "tickSize": "0.01000000"},
                        {"filterType": "LOT_SIZE", "minQty": "0.00000001", "maxQty": "9000.00000000",
                         "stepSize": "0.00000001"}],
            "permissions": [], "permissionSets": [["SPOT"]], "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"]}


def _rest_trade(trade: Trade) -> dict:
    quote_qty = Decimal(trade.price) * Decimal(trade.qty)
    return {
        "id": trade.trade_id,
        "price": trade.price,
        "qty": trade.qty,
        "quoteQty": f"{quote_qty.normalize():f}",
        "time": trade.time_ms,
        "isBuyerMaker": trade.buyer_is_maker,
        "isBestMatch": True,
    }


def _carries_data(channel: str) -> bool:
    return channel in ("trade", "aggTrade") or channel.removeprefix("kline_") in INTERVAL_MS


def agg_id(trade: Trade) -> int:
    return AGG_ID_BASE + trade.trade_id


def _agg_event(trade: Trade) -> dict:
    return {"e": "aggTrade", "E": trade.time_ms, "s": trade.symbol, "a": agg_id(trade), "p": trade.price,
            "q": trade.qty, "f": trade.trade_id, "l": trade.trade_id, "T": trade.time_ms,
            "m": trade.buyer_is_maker, "M": True}


def _agg_trades_by_time(market: SymbolMarket, start_ms: int | None, end_ms: int | None, limit: int,
                        emitted: int) -> RestResponse:
    """aggTrades by time: "If startTime and endTime are sent, time between startTime and endTime must be less than
    1 hour"; both inclusive. One of them alone spans the hour from (or to) it."""
    if start_ms is not None and end_ms is not None and end_ms - start_ms >= HOUR_MS:
        return RestResponse.json(MORE_THAN_AN_HOUR, 400)
    start_ms = end_ms - HOUR_MS + 1 if start_ms is None and end_ms is not None else start_ms or 0
    end_ms = start_ms + HOUR_MS - 1 if end_ms is None else end_ms
    first = _first_index_at(market, start_ms, emitted)
    trades = [t for t in market.trades(first, min(first + limit, emitted)) if t.time_ms <= end_ms]
    return RestResponse.json([{k: v for k, v in _agg_event(t).items() if k not in ("e", "E", "s")} for t in trades])


def _period(trade: Trade, interval: str) -> int:
    step = INTERVAL_MS[interval]
    return trade.time_ms - trade.time_ms % step


@dataclass(frozen=True)
class _Kline:
    """A period's candle from its first trade through `last`."""

    start: int  # the period's open time, ms
    first: Trade
    last: Trade
    high: Decimal
    low: Decimal
    volume: Decimal
    trades: int

    @classmethod
    def of(cls, start: int, trade: Trade) -> _Kline:
        price = Decimal(trade.price)
        return cls(start, trade, trade, price, price, Decimal(trade.qty), 1)

    @classmethod
    def through(cls, market: SymbolMarket, index: int, interval: str) -> _Kline:
        """The candle of trade `index`'s period as of that trade (scans the period back to its first trade)."""
        start = _period(market.trade(index), interval)
        first = market.first_since(start, index)
        candle = cls.of(start, market.trade(first))
        for i in range(first + 1, index + 1):
            candle = candle.add(market.trade(i))
        return candle

    def add(self, trade: Trade) -> _Kline:
        price = Decimal(trade.price)
        return _Kline(self.start, self.first, trade, max(self.high, price), min(self.low, price),
                      self.volume + Decimal(trade.qty), self.trades + 1)

    def event(self, interval: str, closed: bool) -> dict:
        last = self.last
        kline = {"t": self.start, "T": self.start + INTERVAL_MS[interval] - 1, "s": last.symbol, "i": interval,
                 "f": self.first.trade_id, "L": last.trade_id, "o": self.first.price, "c": last.price,
                 "h": f"{self.high:f}", "l": f"{self.low:f}", "v": f"{self.volume:f}", "n": self.trades,
                 "x": closed, "q": "0", "V": "0", "Q": "0", "B": "0"}
        return {"e": "kline", "E": last.time_ms, "s": last.symbol, "k": kline}


def _klines(market: SymbolMarket, query: dict[str, str], emitted: int) -> RestResponse:
    """GET /api/v3/klines: the candles of the periods that had trades so far, oldest first, the open one last.

    Each is [open time, open, high, low, close, volume, close time, quote volume, trades, taker buy base,
    taker buy quote, "0"], the same candle the kline stream carries."""
    interval = query.get("interval", "")
    if interval not in INTERVAL_MS:
        return RestResponse.json({"code": -1120, "msg": "Invalid interval."}, 400)
    try:
        start_ms = int(query.get("startTime", 0))
        end_ms = int(query["endTime"]) if "endTime" in query else None
        limit = max(1, min(int(query.get("limit", DEFAULT_LIMIT)), MAX_LIMIT))
    except ValueError:
        return RestResponse.json({"code": -1100, "msg": "Illegal characters found in a parameter."}, 400)
    klines: list[list] = []
    index = _first_index_at(market, start_ms, emitted)
    while index < emitted and len(klines) < limit:
        period = _period(market.trade(index), interval)
        if end_ms is not None and period > end_ms:
            break
        while index + 1 < emitted and _period(market.trade(index + 1), interval) == period:
            index += 1
        if period < start_ms:  # Binance answers the candles that open at or after startTime
            index += 1
            continue
        k = _Kline.through(market, index, interval).event(interval, True)["k"]
        klines.append([k["t"], k["o"], k["h"], k["l"], k["c"], k["v"], k["T"], "0", k["n"], "0", "0", "0"])
        index += 1
    return RestResponse.json(klines)


def _first_index_at(market: SymbolMarket, time_ms: int, emitted: int) -> int:
    """The first emitted trade at or after time_ms (emitted if none): trade times never decrease."""
    low, high = 0, emitted
    while low < high:
        middle = (low + high) // 2
        if market.trade(middle).time_ms < time_ms:
            low = middle + 1
        else:
            high = middle
    return low


def _wrap(style: str, stream: str, event: dict) -> bytes:
    return orjson.dumps({"stream": stream, "data": event} if style == COMBINED else event)


def _result(result: object, request_id: object) -> bytes:
    return orjson.dumps({"result": result, "id": request_id})


def _error(code: int, msg: str, request_id: object) -> bytes:
    return orjson.dumps({"error": {"code": code, "msg": msg}, "id": request_id})


TWIN = BinanceTwin

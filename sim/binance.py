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
"""
from __future__ import annotations

import re
import time
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import orjson

from marketfeed.sim.faults import WeightLimit
from marketfeed.sim.market import ExchangeMarket, SymbolMarket, Trade
from marketfeed.sim.twin import Rejected, RestResponse, Session, Twin, retry_after, server_error

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


class BinanceTwin(Twin):
    exchange = "binance"
    weight_header = USED_WEIGHT

    def __init__(self, market: ExchangeMarket, weight_limit: int = 6000, weight_minute_s: float = 60.0,
                 ban_after: int = 3, ban_s: float = 120.0):
        """weight_limit: REQUEST_WEIGHT per minute; weight_minute_s: how long the twin's minute lasts (the header
        keeps its -1M name); ban_after: ignored 429s that make an IP ban; ban_s: how long it lasts."""
        super().__init__(market)
        self.weights = WeightLimit(weight_limit, weight_minute_s, ban_after, ban_s)

    def open_session(self, path: str) -> Session:
        url = urlsplit(path)
        if url.path == "/stream":
            streams = parse_qs(url.query).get("streams", [""])[0]
            session = Session(COMBINED)
        elif url.path == "/ws" or url.path.startswith("/ws/"):
            streams = url.path[len("/ws/") :]
            session = Session(RAW)
        else:
            raise Rejected(404, b"")
        names = [name for name in streams.split("/") if name]
        if not all(_STREAM_NAME.match(name) for name in names):
            raise Rejected(400, orjson.dumps({"code": 2, "msg": "Invalid request: invalid stream"}))
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
        prefix = trade.symbol.lower() + "@"
        frames = []
        for name in session.streams:
            if not name.startswith(prefix):
                continue
            channel = name[len(prefix):]
            if channel == "trade":
                frames.append(frame)
            elif channel == "aggTrade":
                frames.append(_wrap(session.style, name, _agg_event(trade)))
            elif channel.startswith("kline_"):
                interval = channel[len("kline_"):]
                market = self.market[trade.symbol]
                if trade.index and _period(market.trade(trade.index - 1), interval) != _period(trade, interval):
                    frames.append(_wrap(session.style, name, _kline_event(market, trade.index - 1, interval, True)))
                frames.append(_wrap(session.style, name, _kline_event(market, trade.index, interval, False)))
        return frames

    def shutdown_frames(self, session: Session) -> list[bytes]:
        return [orjson.dumps({"event": {"e": "serverShutdown", "E": int(time.time() * 1000)}})]

    def rest(self, path: str, query: dict[str, str], emitted: int) -> RestResponse:
        if path not in WEIGHTS:
            return RestResponse(404, b"", "text/html")
        symbol = query.get("symbol", "")
        if path == "/api/v3/exchangeInfo" and symbol in ("", *self.market.symbols):
            return self._exchange_info(symbol)
        if not symbol:
            return RestResponse.json(MISSING_SYMBOL, 400)
        if symbol not in self.market:
            return RestResponse.json(INVALID_SYMBOL, 400)
        if path == "/api/v3/klines":
            return _klines(self.market[symbol], query, emitted)
        try:
            limit = int(query.get("limit", DEFAULT_LIMIT))
            from_id = int(query["fromId"]) if path != "/api/v3/trades" and "fromId" in query else None
            start_ms = int(query["startTime"]) if "startTime" in query else None
            end_ms = int(query["endTime"]) if "endTime" in query else None
        except ValueError:
            return RestResponse.json({"code": -1100, "msg": "Illegal characters found in a parameter."}, 400)
        limit = max(1, min(limit, MAX_LIMIT))
        market = self.market[symbol]
        if path == "/api/v3/aggTrades":
            if start_ms is not None or end_ms is not None:
                return _agg_trades_by_time(market, start_ms, end_ms, limit, emitted)
            start = emitted - limit if from_id is None else market.index_of(from_id - AGG_ID_BASE)
            trades = market.trades(start, min(max(start, 0) + limit, emitted))
            return RestResponse.json([{k: v for k, v in _agg_event(t).items() if k not in ("e", "E", "s")}
                                      for t in trades])
        start = emitted - limit if from_id is None else market.index_of(from_id)  # no fromId: most recent
        return RestResponse.json([_rest_trade(t) for t in market.trades(start, min(max(start, 0) + limit, emitted))])

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

    def _exchange_info(self, symbol: str) -> RestResponse:
        """The rate limits a client budgets against and the symbols served (real answers carry many more fields)."""
        assert self.weights is not None  # set in __init__
        limits = [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                   "limit": self.weights.limit}]
        symbols = [{"symbol": name, "status": "TRADING"} for name in self.market.symbols if symbol in ("", name)]
        return RestResponse.json({"timezone": "UTC", "serverTime": int(time.time() * 1000), "rateLimits": limits,
                                  "exchangeFilters": [], "symbols": symbols})

    def _subscribe(self, session: Session, names: list[str]) -> None:
        session.streams += [name for name in dict.fromkeys(names) if name not in session.streams]
        self._route(session)

    def _unsubscribe(self, session: Session, names: list[str]) -> None:
        session.streams = [name for name in session.streams if name not in names]
        self._route(session)

    def _route(self, session: Session) -> None:
        """Trade, aggTrade and kline streams of listed symbols carry data."""
        session.symbols = {
            symbol.upper()
            for symbol, channel in (name.split("@") for name in session.streams)
            if _carries_data(channel) and symbol.upper() in self.market
        }


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


def _kline_event(market: SymbolMarket, index: int, interval: str, closed: bool) -> dict:
    """The candle of trade `index`'s period, as of that trade (scans the period: fine at test rates)."""
    last = market.trade(index)
    start = _period(last, interval)
    first = index
    while first > 0 and market.trade(first - 1).time_ms >= start:
        first -= 1
    trades = market.trades(first, index + 1)
    prices = [Decimal(t.price) for t in trades]
    volume = sum((Decimal(t.qty) for t in trades), Decimal(0))
    kline = {"t": start, "T": start + INTERVAL_MS[interval] - 1, "s": last.symbol, "i": interval,
             "f": trades[0].trade_id, "L": last.trade_id, "o": trades[0].price, "c": last.price,
             "h": f"{max(prices):f}", "l": f"{min(prices):f}", "v": f"{volume:f}", "n": len(trades),
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
        k = _kline_event(market, index, interval, True)["k"]
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

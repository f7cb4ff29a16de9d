"""Binance spot twin: market streams (combined and raw) and the public trade REST endpoints.

WebSocket: /stream?streams=btcusdt@trade/ethusdt@trade frames {"stream": name, "data": event};
/ws/btcusdt@trade (or bare /ws, /stream plus SUBSCRIBE) sends the bare event. Live methods:
SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS, SET_PROPERTY/GET_PROPERTY "combined".
Only <symbol>@trade streams carry data; other well-formed stream names are accepted and stay quiet.
REST: GET /api/v3/historicalTrades?symbol=&fromId=&limit= and GET /api/v3/trades?symbol=&limit=.
"""
from __future__ import annotations

import re
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import orjson

from sim.market import Trade
from sim.twin import Rejected, RestResponse, Session, Twin

COMBINED, RAW = "combined", "raw"
DEFAULT_LIMIT, MAX_LIMIT = 500, 1000
_STREAM_NAME = re.compile(r"^[a-z0-9]+@[A-Za-z0-9_]+$")
_METHODS = "`SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`"

# Binance's REST error bodies (HTTP 400).
INVALID_SYMBOL = {"code": -1121, "msg": "Invalid symbol."}
MISSING_SYMBOL = {"code": -1102, "msg": "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."}


class BinanceTwin(Twin):
    exchange = "binance"

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

    def rest(self, path: str, query: dict[str, str], emitted: int) -> RestResponse:
        if path not in ("/api/v3/historicalTrades", "/api/v3/trades"):
            return RestResponse(404, b"", "text/html")
        symbol = query.get("symbol", "")
        if not symbol:
            return RestResponse.json(MISSING_SYMBOL, 400)
        if symbol not in self.market:
            return RestResponse.json(INVALID_SYMBOL, 400)
        try:
            limit = int(query.get("limit", DEFAULT_LIMIT))
            from_id = int(query["fromId"]) if path == "/api/v3/historicalTrades" and "fromId" in query else None
        except ValueError:
            return RestResponse.json({"code": -1100, "msg": "Illegal characters found in a parameter."}, 400)
        limit = max(1, min(limit, MAX_LIMIT))
        market = self.market[symbol]
        start = emitted - limit if from_id is None else market.index_of(from_id)  # no fromId: most recent
        return RestResponse.json([_rest_trade(t) for t in market.trades(start, min(max(start, 0) + limit, emitted))])

    def _subscribe(self, session: Session, names: list[str]) -> None:
        session.streams += [name for name in dict.fromkeys(names) if name not in session.streams]
        self._route(session)

    def _unsubscribe(self, session: Session, names: list[str]) -> None:
        session.streams = [name for name in session.streams if name not in names]
        self._route(session)

    def _route(self, session: Session) -> None:
        """Only <symbol>@trade streams of listed symbols carry trades."""
        session.symbols = {
            symbol
            for symbol, channel in (name.upper().split("@") for name in session.streams)
            if channel == "TRADE" and symbol in self.market
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


def _result(result: object, request_id: object) -> bytes:
    return orjson.dumps({"result": result, "id": request_id})


def _error(code: int, msg: str, request_id: object) -> bytes:
    return orjson.dumps({"error": {"code": code, "msg": msg}, "id": request_id})


TWIN = BinanceTwin

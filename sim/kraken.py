"""Kraken spot WebSocket v2 twin: trade and ohlc channels, acks and errors, heartbeats, ping, REST Trades, OHLC.

WebSocket: ws://HOST:PORT/v2. The server opens with a `status` update. Client requests
{"method": "subscribe"|"unsubscribe", "params": {"channel": "trade"|"ohlc", "symbol": [...],
"snapshot": bool, "interval": minutes}, "req_id": n} are answered once per symbol:
{"method": "subscribe", "result": {"channel", "symbol", "snapshot", ("interval")}, "success": true,
"time_in", "time_out", "req_id"}, or for an unknown pair {"error": "Currency pair not supported X",
"method": "subscribe", "success": false, "symbol": X, …}. Then, when asked (`snapshot` defaults to
true, as docs.kraken.com documents), the channel's snapshot: the last 50 trades, or the candles of
the OHLC_SNAPSHOT most recent intervals that had trades. {"method": "ping", "req_id": n} →
{"method": "pong", "req_id": n, "time_in", "time_out"}. {"channel": "heartbeat"} once a second on a
subscribed connection that was sent nothing else meanwhile.
Every trade is one `trade` update (JSON numbers, RFC3339 µs timestamp), plus one `ohlc` update per
subscribed interval with the candle as it stands after that trade: Kraken generates ohlc updates
on trade events, so a candle's last update is the one of its last trade.
REST: GET /0/public/Trades?pair=XBTUSD&since=<ns, exclusive>&count=<1..1000> →
{"error": [], "result": {"XXBTZUSD": [[price, volume, time_s, "b"|"s", "m"|"l", "", trade_id], …],
"last": "<ns of the last trade returned>"}}; without `since`, the most recent `count` trades.
GET /0/public/OHLC?pair=XBTUSD&interval=<minutes, default 1>&since=<unix s, exclusive> →
{"error": [], "result": {"XXBTZUSD": [[time_s, "open", "high", "low", "close", "vwap", "volume", count],
…], "last": <time_s of the newest committed one listed, else since>}}: the ohlc channel's candles (periods
that had trades), oldest first; the last one is the current, not-yet-committed candle and is always
present whatever `since` says; at most the OHLC_MAX_ENTRIES most recent (older ones cannot be had).
A bad interval or `since` → {"error": ["EGeneral:Invalid arguments"]}.
Kraken reports errors in the body with HTTP 200 ("HTTP status codes are generally not used by our API
to convey information about the state of requests … Status codes other than 200 indicate that there was
an issue with the request reaching our servers", docs.kraken.com/api/docs/guides/spot-rest-intro): a rate
limit is {"error": ["EAPI:Rate limit exceeded"]} (docs.kraken.com/api/docs/guides/spot-rest-ratelimits),
the API offline {"error": ["EService:Unavailable"]} (support.kraken.com "API error messages", service
status errors); a 5xx comes from the network edge, not as JSON.
REST names pairs with Kraken's own asset codes (BTC → XBT, DOGE → XDG; slash dropped), and keys
the answer by the internal pair name (X-prefixed crypto, Z-prefixed fiat for the legacy assets);
an unknown pair → {"error": ["EQuery:Unknown asset pair"]}.
GET /0/public/AssetPairs[?pair=A,B] → {"error": [], "result": {<internal name>: {"altname", "wsname", "base",
"quote", "status": "online", …}}} for the pairs listed now (docs.kraken.com/api-reference/market-data/
get-tradable-asset-pairs). wsname is the v1 WebSocket name (XBT/USD, XDG/USD); WebSocket v2 names pairs
BTC/USD and DOGE/USD and answers a v1 name with "Currency pair not supported XBT/USD" (as clients found:
github.com/nautechsystems/nautilus_trader/issues/3509 and /3960), and so does this twin: its v2 channel
takes the market's own symbols (BTC/USD), which a client derives from wsname by undoing XBT and XDG.
Limits: Kraken documents no fixed number of subscriptions or connections for public v2 data, and its
message rate limit is dynamic ("Exceeded msg rate"; docs.kraken.com/api/docs/guides/spot-ratelimits), so
none is enforced here.
"""
from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson

from marketfeed.sim.market import ExchangeMarket, SymbolMarket, Trade, fixed
from marketfeed.sim.twin import Rejected, RestResponse, Session, Twin, retry_after

INTERVALS = (1, 5, 15, 30, 60, 240, 1440, 10080, 21600)  # minutes
TRADE_SNAPSHOT = 50  # "The snapshot reflects the most recent 50 trades."
OHLC_SNAPSHOT = 10  # candles in an ohlc snapshot (the twin's choice; Kraken sends its recent candles)
REST_MAX_COUNT = 1000
OHLC_MAX_ENTRIES = 720  # "Returns up to 720 of the most recent entries"
HEARTBEAT = b'{"channel":"heartbeat"}'

_REST_ASSET = {"BTC": "XBT", "DOGE": "XDG"}
_LEGACY_CRYPTO = {"XBT", "ETH", "LTC", "XRP"}  # internal names like XXBTZUSD, XETHZEUR
_X_ASSETS = _LEGACY_CRYPTO | {"XDG", "XLM", "XMR", "ZEC", "ETC", "REP", "MLN"}  # asset codes X-prefixed (XXDG)
_FIAT = {"USD", "EUR", "GBP", "JPY", "CAD", "CHF", "AUD"}
_Z_ASSETS = {"USD", "EUR", "GBP", "JPY", "CAD", "AUD"}  # asset codes Z-prefixed (ZUSD); CHF is plain


@dataclass
class KrakenSession(Session):
    """Subscriptions by channel; snapshots owed after the current replies; whether the line was quiet."""

    trade: set[str] = field(default_factory=set)  # symbols on the trade channel
    ohlc: dict[str, set[int]] = field(default_factory=dict)  # symbol → subscribed intervals
    owed: list[tuple[str, str, int]] = field(default_factory=list)  # (channel, symbol, interval)
    quiet: bool = True  # nothing but heartbeats sent since the last heartbeat


@dataclass(frozen=True)
class _Candle:
    """A candle from its first trade through trade `last`, in 1e-8 units (exact)."""

    begin_ms: int
    first: int  # trade indexes
    last: int
    open: int
    high: int
    low: int
    close: int
    volume: int
    notional: int  # Σ price × qty, for the vwap
    trades: int

    @classmethod
    def of(cls, begin_ms: int, trade: Trade) -> _Candle:
        price, qty = _units(trade.price), _units(trade.qty)
        return cls(begin_ms, trade.index, trade.index, price, price, price, price, qty, price * qty, 1)

    def add(self, trade: Trade) -> _Candle:
        price, qty = _units(trade.price), _units(trade.qty)
        return _Candle(self.begin_ms, self.first, trade.index, self.open, max(self.high, price), min(self.low, price),
                       price, self.volume + qty, self.notional + price * qty, self.trades + 1)

    def rest_entry(self) -> list:
        """[time_s, open, high, low, close, vwap, volume, count], as /0/public/OHLC lists it."""
        return [self.begin_ms // 1000, fixed(self.open), fixed(self.high), fixed(self.low), fixed(self.close),
                fixed(self.notional // self.volume), fixed(self.volume), self.trades]

    def event(self, symbol: str, interval: int) -> dict:
        span_ms = interval * 60_000
        return {
            "symbol": symbol,
            "open": _number(self.open),
            "high": _number(self.high),
            "low": _number(self.low),
            "close": _number(self.close),
            "trades": self.trades,
            "volume": _number(self.volume),
            "vwap": _number(self.notional // self.volume),
            "interval_begin": _rfc3339(self.begin_ms, 9),
            "interval": interval,
            "timestamp": _rfc3339(self.begin_ms + span_ms, 6),  # deprecated; live Kraken sends the interval's end
        }


class KrakenTwin(Twin):
    exchange = "kraken"
    heartbeat_interval = 1.0

    def __init__(self, market: ExchangeMarket):
        super().__init__(market)
        self._pairs: dict[str, tuple[str, str]] = {}  # REST pair name (any accepted form) → (v2 symbol, result key)
        self._pairs_of = 0  # how many of market.symbols _pairs knows
        self._live: dict[tuple[str, int], _Candle] = {}  # (symbol, interval) → candle through the newest trade
        self._ohlc_frames: dict[tuple[str, int], tuple[int, bytes]] = {}  # … → (trade index, its update frame)
        self._connection_ids = itertools.count(13834774380200032777)

    @staticmethod
    def generated_symbol(k: int) -> str:
        return f"SYM{k + 1:04d}/USD"

    # ---- WebSocket ----

    def open_session(self, path: str) -> Session:
        if urlsplit(path).path.rstrip("/") != "/v2":
            raise Rejected(404, b"")
        return KrakenSession("v2")

    def greeting(self, session: Session) -> list[bytes]:
        status = {"api_version": "v2", "connection_id": next(self._connection_ids), "system": "online",
                  "version": "2.0.10"}
        return [orjson.dumps({"channel": "status", "type": "update", "data": [status]})]

    def on_message(self, session: Session, message: str | bytes) -> list[bytes]:
        assert isinstance(session, KrakenSession)
        time_in = _now()
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError:
            return [_reply({"error": "EGeneral:Invalid arguments", "success": False}, None, time_in)]
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            return [_reply({"error": "EGeneral:Invalid arguments", "success": False}, None, time_in)]
        method, req_id = request["method"], request.get("req_id")
        if method == "ping":
            return [_reply({"method": "pong"}, req_id, time_in)]
        if method not in ("subscribe", "unsubscribe"):
            refusal = {"error": f"Method not found {method}", "method": method, "success": False}
            return [_reply(refusal, req_id, time_in)]
        try:
            asked = _subscription(request.get("params"))
        except ValueError as refused:
            return [_reply({"error": str(refused), "method": method, "success": False}, req_id, time_in)]
        channel, interval = asked.channel, asked.interval
        replies = []
        for symbol in asked.symbols:
            if symbol not in self.market.listed:
                replies.append(_reply({"error": f"Currency pair not supported {symbol}", "method": method,
                                       "success": False, "symbol": symbol}, req_id, time_in))
                continue
            result: dict[str, object] = {"channel": channel, "symbol": symbol}
            if channel == "ohlc":
                result["interval"] = interval
            if method == "subscribe":
                result["snapshot"] = asked.snapshot
                self._subscribe(session, channel, symbol, interval)
                if asked.snapshot:
                    session.owed.append((channel, symbol, interval))
            else:
                self._unsubscribe(session, channel, symbol, interval)
            replies.append(_reply({"method": method, "result": result, "success": True}, req_id, time_in))
        return replies

    def snapshots(self, session: Session, emitted: int) -> list[bytes]:
        assert isinstance(session, KrakenSession)
        owed, session.owed = session.owed, []
        return [self._snapshot(channel, symbol, interval, self.market[symbol].happened(emitted))
                for channel, symbol, interval in owed]

    def trade_frame(self, trade: Trade, style: str) -> bytes:
        return orjson.dumps({"channel": "trade", "type": "update", "data": [_trade_event(trade)]})

    def connection_frames(self, trade: Trade, session: Session, frame: bytes) -> list[bytes]:
        assert isinstance(session, KrakenSession)
        session.quiet = False
        frames = [frame] if trade.symbol in session.trade else []
        for interval in sorted(session.ohlc.get(trade.symbol, ())):
            frames.append(self._ohlc_update(trade, interval))
        return frames

    def heartbeat(self, session: Session, emitted: int) -> list[bytes]:
        """Heartbeats are sent once a second in the absence of other updates, once subscribed."""
        assert isinstance(session, KrakenSession)
        quiet, session.quiet = session.quiet, True
        return [HEARTBEAT] if quiet and session.streams else []

    # ---- REST ----

    def rest_limited(self, retry_after_s: int | None) -> RestResponse:
        if retry_after_s is not None:
            raise ValueError("kraken answers a rate limit with HTTP 200 and an error array, no Retry-After")
        return RestResponse.json({"error": ["EAPI:Rate limit exceeded"]})

    def rest_server_error(self, status: int, retry_after_s: int | None) -> RestResponse:
        """status 200: the API is offline, said in the body as Kraken does; a 5xx: the edge's answer."""
        if status == 200:
            return RestResponse.json({"error": ["EService:Unavailable"]}, headers=retry_after(retry_after_s))
        return super().rest_server_error(status, retry_after_s)

    def rest(self, path: str, query: dict[str, str], emitted: int) -> RestResponse:
        if path == "/0/public/AssetPairs":
            return self._asset_pairs(query)
        if path not in ("/0/public/Trades", "/0/public/OHLC"):
            return RestResponse(404, b"", "text/html")
        names = self._pair(query.get("pair", ""))
        if names is None:
            return RestResponse.json({"error": ["EQuery:Unknown asset pair"]})
        symbol, key = names
        happened = self.market[symbol].happened(emitted)
        if path == "/0/public/OHLC":
            return _ohlc(self.market[symbol], key, query, happened)
        try:
            count = int(query.get("count", REST_MAX_COUNT))
            since = int(query["since"]) if "since" in query else None
        except ValueError:
            return RestResponse.json({"error": ["EGeneral:Invalid arguments"]})
        count = max(1, min(count, REST_MAX_COUNT))
        market = self.market[symbol]
        if since is None:
            start = max(0, happened - count)
        else:  # the first trade strictly after `since`
            start = bisect.bisect_right(range(happened), since, key=lambda i: market.trade(i).time_ms * 1_000_000)
        trades = market.trades(start, min(start + count, happened))
        last = trades[-1].time_ms * 1_000_000 if trades else since or 0
        return RestResponse.json({"error": [], "result": {key: [_rest_trade(t) for t in trades], "last": str(last)}})

    def _pair(self, name: str) -> tuple[str, str] | None:
        """(v2 symbol, result key) of a REST pair name in any form Kraken accepts; delisted pairs keep their history."""
        if self._pairs_of != len(self.market.symbols):  # symbols were listed since: learn their names
            for symbol in itertools.islice(self.market.symbols, self._pairs_of, None):
                altname, internal = rest_names(symbol)
                self._pairs[altname] = self._pairs[internal] = (symbol, internal)
            self._pairs_of = len(self.market.symbols)
        return self._pairs.get(name.upper())

    def _asset_pairs(self, query: dict[str, str]) -> RestResponse:
        """GET /0/public/AssetPairs: the pairs listed now, or those named by pair= (any REST form)."""
        listed = self.market.listed
        if "pair" in query:
            named = [self._pair(name) for name in query["pair"].split(",")]
            if any(names is None or names[0] not in listed for names in named):
                return RestResponse.json({"error": ["EQuery:Unknown asset pair"]})
            symbols = [names[0] for names in named if names is not None]
        else:
            symbols = list(listed)
        return RestResponse.json({"error": [], "result": dict(map(asset_pair, symbols))})

    # ---- candles ----

    def _ohlc_update(self, trade: Trade, interval: int) -> bytes:
        """The update frame trade `trade` causes on one interval, encoded once for every connection."""
        key = (trade.symbol, interval)
        cached = self._ohlc_frames.get(key)
        if cached is not None and cached[0] == trade.index:
            return cached[1]
        candle = self._live.get(key)
        begin = _interval_begin(trade.time_ms, interval)
        if candle is not None and candle.begin_ms == begin and candle.last == trade.index - 1:
            candle = candle.add(trade)
        elif candle is None or candle.begin_ms != begin or candle.last != trade.index:
            candle = _candle_through(self.market[trade.symbol], trade.index, interval)
        self._live[key] = candle
        frame = orjson.dumps({"channel": "ohlc", "type": "update", "timestamp": _rfc3339(trade.time_ms, 9),
                              "data": [candle.event(trade.symbol, interval)]})
        self._ohlc_frames[key] = (trade.index, frame)
        return frame

    def _snapshot(self, channel: str, symbol: str, interval: int, emitted: int) -> bytes:
        market = self.market[symbol]
        if channel == "trade":
            data = [_trade_event(t) for t in market.trades(emitted - TRADE_SNAPSHOT, emitted)]
            return orjson.dumps({"channel": "trade", "type": "snapshot", "data": data})
        candles = itertools.islice(_newest_candles(market, emitted, interval), OHLC_SNAPSHOT)
        data = [c.event(symbol, interval) for c in reversed(list(candles))]
        return orjson.dumps({"channel": "ohlc", "type": "snapshot", "timestamp": _rfc3339_now(), "data": data})

    def _subscribe(self, session: KrakenSession, channel: str, symbol: str, interval: int) -> None:
        if channel == "trade":
            session.trade.add(symbol)
        else:
            session.ohlc.setdefault(symbol, set()).add(interval)
        self.route(session)

    def _unsubscribe(self, session: KrakenSession, channel: str, symbol: str, interval: int) -> None:
        if channel == "trade":
            session.trade.discard(symbol)
        elif symbol in session.ohlc:
            session.ohlc[symbol].discard(interval)
            if not session.ohlc[symbol]:
                del session.ohlc[symbol]
        self.route(session)

    def route(self, session: Session) -> None:
        """Subscriptions of a delisted pair stay on the books and carry nothing from then on."""
        assert isinstance(session, KrakenSession)
        session.streams = [f"trade:{s}" for s in sorted(session.trade)] + [
            f"ohlc-{i}:{s}" for s in sorted(session.ohlc) for i in sorted(session.ohlc[s])
        ]
        session.symbols = {s for s in session.trade | set(session.ohlc) if s in self.market.listed}


def rest_names(symbol: str) -> tuple[str, str]:
    """The REST names of a v2 pair: (altname used in requests, internal name that keys answers)."""
    base, _, quote = symbol.partition("/")
    base, quote = _REST_ASSET.get(base, base), _REST_ASSET.get(quote, quote)
    if base in _LEGACY_CRYPTO and quote in _FIAT:
        return base + quote, f"X{base}Z{quote}"
    return base + quote, base + quote


def asset_pair(symbol: str) -> tuple[str, dict]:
    """(result key, entry) of a v2 pair in /0/public/AssetPairs: the names, then what a trading client reads."""
    altname, internal = rest_names(symbol)
    base, quote = (_REST_ASSET.get(asset, asset) for asset in symbol.split("/"))
    quote_code = "Z" + quote if quote in _Z_ASSETS else quote
    return internal, {
        "altname": altname, "wsname": f"{base}/{quote}", "aclass_base": "currency",
        "base": "X" + base if base in _X_ASSETS else base, "aclass_quote": "currency", "quote": quote_code,
        "lot": "unit", "cost_decimals": 5, "pair_decimals": 2, "lot_decimals": 8, "lot_multiplier": 1,
        "leverage_buy": [], "leverage_sell": [], "fees": [[0, 0.26], [50000, 0.24]],
        "fees_maker": [[0, 0.16], [50000, 0.14]], "fee_volume_currency": "ZUSD", "margin_call": 80,
        "margin_stop": 40, "ordermin": "0.0001", "costmin": "0.5", "tick_size": "0.01", "status": "online",
    }


@dataclass(frozen=True)
class _Subscription:
    """The params of a valid subscribe/unsubscribe request."""

    channel: str  # "trade" or "ohlc"
    symbols: tuple[str, ...]
    interval: int  # minutes; ohlc only (the trade channel ignores it)
    snapshot: bool


def _subscription(params: object) -> _Subscription:
    """A subscribe/unsubscribe's params; ValueError says why Kraken would refuse them."""
    if not isinstance(params, dict):
        raise ValueError("EGeneral:Invalid arguments")
    channel = params.get("channel")
    if channel not in ("trade", "ohlc"):
        raise ValueError(f"Channel not supported {channel}")
    symbols = params.get("symbol")
    if not isinstance(symbols, list) or not symbols or not all(isinstance(s, str) for s in symbols):
        raise ValueError("EGeneral:Invalid arguments:symbol")
    interval = params.get("interval", 1) if channel == "ohlc" else 1
    if interval not in INTERVALS:
        raise ValueError("EGeneral:Invalid arguments:interval")
    snapshot = params.get("snapshot", True)
    if not isinstance(snapshot, bool):
        raise ValueError("EGeneral:Invalid arguments:snapshot")
    return _Subscription(channel, tuple(symbols), interval, snapshot)


def _ohlc(market: SymbolMarket, key: str, query: dict[str, str], emitted: int) -> RestResponse:
    """GET /0/public/OHLC: the candles after `since`, the current one always, oldest first."""
    try:
        interval = int(query.get("interval", 1))
        since = int(query["since"]) if "since" in query else None
    except ValueError:
        return RestResponse.json({"error": ["EGeneral:Invalid arguments"]})
    if interval not in INTERVALS:
        return RestResponse.json({"error": ["EGeneral:Invalid arguments"]})
    candles = _newest_candles(market, emitted, interval)
    current = list(itertools.islice(candles, 1))
    committed = list(itertools.islice(
        itertools.takewhile(lambda c: since is None or c.begin_ms // 1000 > since, candles), OHLC_MAX_ENTRIES - 1))
    last = committed[0].begin_ms // 1000 if committed else since or 0  # where polling for newer ones resumes
    entries = [c.rest_entry() for c in reversed(current + committed)]
    return RestResponse.json({"error": [], "result": {key: entries, "last": last}})


def _newest_candles(market: SymbolMarket, emitted: int, interval: int) -> Iterator[_Candle]:
    """The candles of the periods that had trades, newest (the one still open) first."""
    index = emitted - 1
    while index >= 0:
        candle = _candle_through(market, index, interval)
        yield candle
        index = candle.first - 1


def _candle_through(market: SymbolMarket, index: int, interval: int) -> _Candle:
    """The candle holding trade `index`, from its interval's first trade through `index`."""
    trade = market.trade(index)
    begin = _interval_begin(trade.time_ms, interval)
    first = market.first_since(begin, index)
    candle = _Candle.of(begin, market.trade(first))
    for i in range(first + 1, index + 1):
        candle = candle.add(market.trade(i))
    return candle


def _interval_begin(time_ms: int, interval: int) -> int:
    span_ms = interval * 60_000
    return time_ms - time_ms % span_ms


def _taker_side(trade: Trade) -> str:
    return "sell" if trade.buyer_is_maker else "buy"  # the buyer made the book: the taker sold


def _ord_type(trade: Trade) -> str:
    return "market" if trade.trade_id % 3 == 0 else "limit"  # the taker's order type, deterministic


def _trade_event(trade: Trade) -> dict:
    return {
        "symbol": trade.symbol,
        "side": _taker_side(trade),
        "price": float(trade.price),
        "qty": float(trade.qty),
        "ord_type": _ord_type(trade),
        "trade_id": trade.trade_id,
        "timestamp": _rfc3339(trade.time_ms, 6),
    }


def _rest_trade(trade: Trade) -> list:
    return [trade.price, trade.qty, trade.time_ms / 1000, _taker_side(trade)[0], _ord_type(trade)[0], "",
            trade.trade_id]


def _reply(body: dict, req_id: object, time_in: str) -> bytes:
    """A method reply with Kraken's timing fields and the client's req_id, when it sent one."""
    body = {**body, "time_in": time_in, "time_out": _now()}
    if req_id is not None:
        body["req_id"] = req_id
    return orjson.dumps(body)


def _units(decimal: str) -> int:
    """'123.45000000' → 12345000000 (market prices and quantities have exactly 8 decimals)."""
    whole, _, frac = decimal.partition(".")
    return int(whole + frac)


def _number(units: int) -> float:
    return float(fixed(units))


def _rfc3339(time_ms: int, digits: int) -> str:
    seconds, ms = divmod(time_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}".ljust(digits + 1, "0") + "Z"


def _rfc3339_now() -> str:
    return _rfc3339(time.time_ns() // 1_000_000, 9)


def _now() -> str:
    micros = time.time_ns() // 1000
    seconds, us = divmod(micros, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{us:06d}Z"


TWIN = KrakenTwin

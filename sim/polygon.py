"""Polygon.io twin: the stocks and options WebSocket clusters and the REST v3 trades endpoint.

WebSocket /stocks or /options: on connect [{"ev":"status","status":"connected",…}]; then
{"action":"auth","params":KEY} → auth_success or auth_failed; {"action":"subscribe"|"unsubscribe",
"params":"T.AAPL,T.MSFT"} (T.* for every ticker of the cluster) → one status per channel. Messages
are handled in order, so auth and subscribe may be sent back to back. Trades go out as JSON
arrays, every trade of one clock tick in one frame.
REST GET /v3/trades/{ticker}?timestamp.gte|gt|lte|lt=NS&limit=&sort=timestamp&order=asc|desc&apiKey=
answers {"status":"OK","request_id","results":[…],"next_url"} from the same ground truth; next_url
points at Polygon's own host with an opaque cursor, and carries no key (clients add it again).
Errors are {"status": "ERROR", "request_id", "error"} (as its 401s); past a plan's request limit the
answer is HTTP 429 with the message clients capture ("You've exceeded the maximum requests per minute,
please wait or upgrade your subscription to continue. https://polygon.io/pricing"; polygon.io/pricing
states each plan's limit, e.g. 5 per minute on the free plan). A Retry-After only if asked for: Polygon
documents none.

How ground-truth trade i is rendered (illustrative values, deterministic): venue slots cycle per
trade; the stock trade id "i" counts per venue slot, so different venues (and two TRFs of venue 4)
repeat the same ids, as Polygon's ids are unique only per (ticker, exchange, TRF); "q" increases
with holes; REST's sip_timestamp adds a sub-millisecond part the stream's millisecond "t" lacks.
Options trades carry no trade id and no tape, as on Polygon.
T.* follows the listing: a contract listed during a run trades on it from then on, a delisted one stops.
Connection limit: "Each account comes with access to one simultaneous WebSocket connection per cluster"
(polygon.io/knowledge-base/article/how-many-polygon-websocket-connections-can-i-use-at-one-time), counted
here per cluster and API key; twin option max_connections changes it. A connection that
authenticates beyond it makes the oldest one of that cluster and key get [{"ev":"status","status":
"max_connections","message":"Maximum number of websocket connections exceeded. …"}] and a close with 1008,
as clients capture it; the newest connection stays (clients report the oldest evicted:
github.com/massive-com/client-python/issues/860).
"""
from __future__ import annotations

import base64
import binascii
import bisect
import itertools
import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import orjson

from marketfeed.sim.limits import Limit
from marketfeed.sim.market import ExchangeMarket, SymbolMarket, Trade
from marketfeed.sim.twin import Refused, Rejected, RestResponse, Session, Twin, retry_after, server_error

OPTIONS_PREFIX = "O:"
CLUSTERS = ("stocks", "options")
STOCK_VENUES = ((4, 201), (10, None), (11, None), (4, 202), (12, None), (19, None))  # (exchange id, TRF id)
OPTION_VENUES = (302, 303, 308, 312, 313, 316)
ODD_LOT = 37  # trade condition of stock prints under 100 shares
DEFAULT_LIMIT, MAX_LIMIT = 1000, 50_000
PUBLIC_REST = "https://api.polygon.io"  # where next_url points, as on the real service
MAX_CONNECTIONS = ("Maximum number of websocket connections exceeded. You have reached the connection limit for your "
                   "account. Please contact support at https://polygon.io/contact to increase your limit.")
_OPTION_ROOTS = ("SPY", "QQQ", "AAPL", "TSLA", "NVDA")  # generated contracts' underlyings
RATE_LIMITED = ("You've exceeded the maximum requests per minute, please wait or upgrade your subscription to "
                "continue. https://polygon.io/pricing")
_MS = 1_000_000


@dataclass
class PolygonSession(Session):
    authenticated: bool = False
    key: str = ""  # the API key it authenticated with


def is_option(symbol: str) -> bool:
    return symbol.startswith(OPTIONS_PREFIX)


def sip_ns(trade: Trade) -> int:
    """REST's nanosecond SIP time: the stream's millisecond plus a deterministic sub-millisecond part."""
    return trade.time_ms * _MS + (trade.index * 7919 + 1) % _MS


def size_of(trade: Trade) -> int:
    return max(1, round(float(trade.qty)))  # whole shares or contracts


def sequence_number(trade: Trade) -> int:
    return 3 * trade.index + trade.index % 3 + 1  # increasing per ticker, with holes


def trade_event(trade: Trade) -> dict[str, Any]:
    """Ground-truth trade as a WebSocket {"ev":"T",…} event (a JSON object: its values' types vary by key)."""
    size = size_of(trade)
    event: dict[str, Any] = {"ev": "T", "sym": trade.symbol}
    if is_option(trade.symbol):
        event |= {"x": OPTION_VENUES[trade.index % len(OPTION_VENUES)], "p": float(trade.price), "s": size,
                  "t": trade.time_ms, "q": sequence_number(trade)}
        return event
    venue, trf = STOCK_VENUES[trade.index % len(STOCK_VENUES)]
    event |= {"x": venue, "i": str(trade.index // len(STOCK_VENUES) + 1), "z": _tape(trade.symbol),
              "p": float(trade.price), "s": size}
    if size < 100:
        event["c"] = [ODD_LOT]
    event |= {"t": trade.time_ms, "q": sequence_number(trade)}
    if trf is not None:
        event |= {"trfi": trf, "trft": trade.time_ms}
    return event


def rest_result(trade: Trade) -> dict[str, Any]:
    """Ground-truth trade as one v3 trades result (a JSON object, as trade_event)."""
    event, ns = trade_event(trade), sip_ns(trade)
    result: dict[str, Any] = {"exchange": event["x"], "participant_timestamp": ns - 150_000, "price": event["p"],
                              "sip_timestamp": ns, "size": event["s"]}
    if "c" in event:
        result["conditions"] = event["c"]
    if not is_option(trade.symbol):
        result |= {"id": event["i"], "sequence_number": event["q"], "tape": event["z"]}
    if "trfi" in event:
        result |= {"trf_id": event["trfi"], "trf_timestamp": ns - 50_000}
    return result


def _tape(symbol: str) -> int:
    return zlib.crc32(symbol.encode()) % 3 + 1


def _status(status: str, message: str) -> dict:
    return {"ev": "status", "status": status, "message": message}


class PolygonTwin(Twin):
    exchange = "polygon"
    batches_trades = True

    def __init__(self, market: ExchangeMarket, api_key: str | None = None, max_connections: int = 1):
        """api_key: the key auth and REST accept; None accepts any non-empty key. max_connections: simultaneous
        authenticated connections per cluster and key."""
        super().__init__(market)
        self.api_key = api_key
        self.max_connections = max_connections
        self._authenticated: dict[tuple[str, str], list[PolygonSession]] = {}  # (cluster, key) → oldest first
        self._error_numbers = itertools.count()

    @staticmethod
    def generated_symbol(k: int) -> str:
        """Options contracts, O:<underlying><expiry YYMMDD><C|P><strike × 1000, 8 digits>, distinct for every k."""
        root, call, strike = _OPTION_ROOTS[k % 5], (k // 5) % 2 == 0, 50 + k // 10
        return f"{OPTIONS_PREFIX}{root}251219{'C' if call else 'P'}{strike * 1000:08d}"

    def accepts(self, key: object) -> bool:
        return isinstance(key, str) and bool(key) and (self.api_key is None or key == self.api_key)

    # ---- WebSocket ----

    def open_session(self, path: str) -> Session:
        cluster = path.split("?")[0].strip("/")
        if cluster not in CLUSTERS:
            raise Rejected(404, b"404 page not found")
        return PolygonSession(cluster)

    def greeting(self, session: Session) -> list[bytes]:
        return [orjson.dumps([_status("connected", "Connected Successfully")])]

    def on_message(self, session: Session, message: str | bytes) -> list[bytes]:
        assert isinstance(session, PolygonSession)
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict) or not isinstance(request.get("params", ""), str):
            return [orjson.dumps([_status("error", "invalid message")])]
        action, params = request.get("action"), request.get("params", "")
        if action == "auth":
            if session.authenticated:
                self._forget(session)
            session.authenticated, session.key = self.accepts(params), params
            if not session.authenticated:
                return [orjson.dumps([_status("auth_failed", "authentication failed")])]
            self._admit(session)
            return [orjson.dumps([_status("auth_success", "authenticated")])]
        if action not in ("subscribe", "unsubscribe"):
            return [orjson.dumps([_status("error", f"unknown action: {action}")])]
        if not session.authenticated:
            return [orjson.dumps([_status("error", "not authorized")])]
        channels = [c.strip() for c in params.split(",") if c.strip()]
        if action == "subscribe":
            session.streams += [c for c in dict.fromkeys(channels) if c not in session.streams]
        else:
            session.streams = [c for c in session.streams if c not in channels]
        self.route(session)
        verb = "subscribed to" if action == "subscribe" else "unsubscribed to"
        return [orjson.dumps([_status("success", f"{verb}: {c}") for c in channels])]

    def route(self, session: Session) -> None:
        """T.<ticker> channels of this cluster's tickers listed now carry trades; T.* carries all of them."""
        wanted = {c[2:] for c in session.streams if c.startswith("T.")}
        options, listed = session.style == "options", self.market.listed
        tickers = listed if "*" in wanted else (t for t in wanted if t in listed)
        session.symbols = {t for t in tickers if is_option(t) == options}

    def closed(self, session: Session) -> None:
        assert isinstance(session, PolygonSession)
        if session.authenticated:
            self._forget(session)

    def _admit(self, session: PolygonSession) -> None:
        """An authenticated connection counts against its cluster and key; beyond the limit the oldest goes."""
        sessions = self._authenticated.setdefault((session.style, session.key), [])
        sessions.append(session)
        while len(sessions) > self.max_connections:
            oldest = sessions.pop(0)
            oldest.authenticated = False  # no longer counted; the server closes it
            frame = orjson.dumps([_status("max_connections", MAX_CONNECTIONS)])
            self.refuse(Refused(oldest, Limit.CONNECTIONS, f"more than {self.max_connections} connection(s) to "
                                f"{session.style} with one key", (frame,), close_reason="max_connections"))

    def _forget(self, session: PolygonSession) -> None:
        key = (session.style, session.key)
        self._authenticated[key] = [s for s in self._authenticated[key] if s is not session]  # equal is not same

    def trade_frame(self, trade: Trade, style: str) -> bytes:
        return orjson.dumps(trade_event(trade))

    def batch_frame(self, frames: list[bytes]) -> bytes:
        return b"[" + b",".join(frames) + b"]"

    # ---- REST ----

    def rest(self, path: str, query: dict[str, str], emitted: int) -> RestResponse:
        if not path.startswith("/v3/trades/"):
            return RestResponse.json({"status": "NOT_FOUND", "request_id": _request_id(path), "message": "Not found"},
                                     404)
        request_id = _request_id(path + str(sorted(query.items())))
        if "apiKey" not in query:
            return RestResponse.json({"status": "ERROR", "request_id": request_id,
                                      "error": "API Key was not provided"}, 401)
        if not self.accepts(query["apiKey"]):
            return RestResponse.json({"status": "ERROR", "request_id": request_id, "error": "Unknown API Key"}, 401)
        ticker = unquote(path[len("/v3/trades/"):])
        try:
            window = _Window.from_cursor(query["cursor"]) if "cursor" in query else _Window.from_query(query)
        except ValueError as exc:
            return RestResponse.json({"status": "ERROR", "request_id": request_id, "error": str(exc)}, 400)
        if ticker not in self.market:
            return RestResponse.json({"status": "OK", "request_id": request_id, "results": []})
        market = self.market[ticker]
        times = _SipTimes(market, market.happened(emitted))
        lo, hi = bisect.bisect_left(times, window.gte), bisect.bisect_right(times, window.lte)
        if window.ascending:
            first = max(lo, window.offset_from)
            page = range(first, min(hi, first + window.limit))
            rest_from = page.stop if page.stop < hi else None
        else:  # offset_from: where the previous (newer) page ended
            end = min(hi, window.offset_from) if window.offset_from else hi
            last = max(lo, end - window.limit)
            page = range(end - 1, last - 1, -1)
            rest_from = last if last > lo else None
        body = {"results": [rest_result(market.trade(i)) for i in page], "status": "OK", "request_id": request_id}
        if rest_from is not None:
            body["next_url"] = f"{PUBLIC_REST}/v3/trades/{ticker}?cursor={window.after(rest_from).cursor()}"
        return RestResponse.json(body)


    def rest_limited(self, retry_after_s: int | None) -> RestResponse:
        return self._error(429, RATE_LIMITED, retry_after_s)

    def rest_server_error(self, status: int, retry_after_s: int | None) -> RestResponse:
        return self._error(status, server_error(status).phrase, retry_after_s)

    def _error(self, status: int, message: str, retry_after_s: int | None) -> RestResponse:
        """Polygon's error body; a request id is unique per answer, so a counter keeps repeats apart."""
        request_id = _request_id(f"{status}:{next(self._error_numbers)}")
        return RestResponse.json({"status": "ERROR", "request_id": request_id, "error": message}, status,
                                 retry_after(retry_after_s))


class _SipTimes:
    """The REST timestamps of a symbol's trades that have happened, as a sorted sequence for bisect."""

    def __init__(self, market: SymbolMarket, emitted: int):
        self.market, self.emitted = market, emitted

    def __len__(self) -> int:
        return self.emitted

    def __getitem__(self, i: int) -> int:
        return sip_ns(self.market.trade(i))


@dataclass(frozen=True)
class _Window:
    """One v3 trades query; a cursor is this, serialized, with where the next page starts."""

    gte: int
    lte: int
    limit: int
    ascending: bool
    offset_from: int = 0

    @classmethod
    def from_query(cls, query: dict[str, str]) -> _Window:
        try:
            gte = max(int(query.get("timestamp.gte", 0)), int(query.get("timestamp.gt", -1)) + 1)
            lte = min(int(query.get("timestamp.lte", 2**63 - 1)), int(query.get("timestamp.lt", 2**63)) - 1)
            limit = int(query.get("limit", DEFAULT_LIMIT))
        except ValueError:
            raise ValueError("timestamp filters and limit must be integers (nanoseconds)") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
        if query.get("sort", "timestamp") != "timestamp" or query.get("order", "desc") not in ("asc", "desc"):
            raise ValueError("sort must be timestamp and order asc or desc")
        return cls(gte, lte, limit, query.get("order", "desc") == "asc")

    @classmethod
    def from_cursor(cls, cursor: str) -> _Window:
        try:
            return cls(**orjson.loads(base64.urlsafe_b64decode(cursor.encode())))
        except (binascii.Error, orjson.JSONDecodeError, TypeError, ValueError):
            raise ValueError("invalid cursor") from None

    def after(self, offset: int) -> _Window:
        return _Window(self.gte, self.lte, self.limit, self.ascending, offset)

    def cursor(self) -> str:
        fields = {"gte": self.gte, "lte": self.lte, "limit": self.limit, "ascending": self.ascending,
                  "offset_from": self.offset_from}
        return base64.urlsafe_b64encode(orjson.dumps(fields)).decode()


def _request_id(seed: str) -> str:
    return f"{zlib.crc32(seed.encode()):08x}{zlib.crc32(seed[::-1].encode()):08x}"


TWIN = PolygonTwin

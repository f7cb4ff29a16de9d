"""The contract every exchange twin fulfils: wire format in and out, no sockets.

A twin turns a WebSocket request path into a Session, answers client messages, renders trades as
frames and answers REST GETs, including the exchange's documented answers to rate limits, bans and
server errors, which the Simulator's REST faults ask for. It declares the exchange's connection limits
(sim.limits) and refuses what the exchange refuses. The Simulator owns sockets, the market clock, the
listing changes, connection tracking and fault injection, so an exchange is one file: sim/<exchange>.py
defining TWIN.
"""
from __future__ import annotations

import http
import importlib
from dataclasses import dataclass, field
from typing import ClassVar

import orjson

from marketfeed.sim.faults import WeightLimit
from marketfeed.sim.limits import Bucket, Limit, MessageLimit, Window
from marketfeed.sim.market import ExchangeMarket, Trade


class Rejected(Exception):
    """Answer the WebSocket handshake with this HTTP error instead of upgrading; `limit`: the limit it enforces
    (the simulator records a refusal), None for a plain bad request."""

    def __init__(self, status: int, body: bytes, limit: Limit | None = None, detail: str = ""):
        super().__init__(status)
        self.status = status
        self.body = body
        self.limit = limit
        self.detail = detail


@dataclass(frozen=True)
class RestResponse:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()  # extra response headers (e.g. pagination cursors)

    @classmethod
    def json(cls, value: object, status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> RestResponse:
        return cls(status, orjson.dumps(value), headers=headers)


@dataclass
class Session:
    """Protocol state of one connection; the twin mutates it, the server routes trades by `symbols`."""

    style: str  # how this connection's trade frames are rendered (e.g. combined vs raw stream)
    streams: list[str] = field(default_factory=list)  # subscriptions in the exchange's own naming
    symbols: set[str] = field(default_factory=set)  # market symbols whose trades this connection gets


@dataclass(frozen=True)
class Refused:
    """A limit a twin enforces on a live connection: send `frames`, then close with `close_code` (None: the
    connection stays open, e.g. one subscription refused). The simulator records it as a Refusal."""

    session: Session  # the connection refused (not necessarily the one whose message hit the limit)
    limit: Limit
    detail: str
    frames: tuple[bytes, ...] = ()
    close_code: int | None = 1008  # RFC 6455 §7.4.1: policy violation
    close_reason: str = ""


class Twin:
    """One exchange's protocol. Subclasses live in sim/<exchange>.py as TWIN."""

    exchange: ClassVar[str]
    ping_interval: ClassVar[float] = 20.0  # WebSocket ping frames from the server
    pong_timeout: ClassVar[float] = 60.0  # no pong within this → the server closes the connection
    id_block: ClassVar[int] = 1_000_000  # symbol k's trade ids start at (k + 1) * id_block
    batches_trades: ClassVar[bool] = False  # one frame per clock tick carries all its trades (batch_frame)
    heartbeat_interval: ClassVar[float] = 0.0  # seconds between application-level heartbeat() frames (0: none)

    # Connection limits, enforced by the server for the twin (None: the exchange documents none).
    connection_limit: Window | Bucket | None = None  # connection attempts per client IP
    message_limit: MessageLimit | None = None  # messages a client sends

    def __init__(self, market: ExchangeMarket):
        self.market = market
        self._refused: list[Refused] = []

    @staticmethod
    def generated_symbol(k: int) -> str:
        """The k-th symbol (from 0) of a generated universe, named as the exchange names its symbols."""
        raise NotImplementedError

    def refuse(self, refused: Refused) -> None:
        """Enforce a limit on a live connection; the server applies it once the current message is handled."""
        self._refused.append(refused)

    def take_refused(self) -> list[Refused]:
        refused, self._refused = self._refused, []
        return refused

    def connection_refused(self) -> RestResponse:
        """The handshake's answer to a connection attempt beyond `connection_limit`."""
        raise NotImplementedError

    def messages_exceeded(self, session: Session) -> Refused:
        """What a connection gets for a message beyond `message_limit`."""
        raise NotImplementedError

    def delisted(self, symbol: str, still_listed: bool) -> None:
        """`symbol` was delisted. still_listed: the listing endpoint keeps showing it, with the status the exchange
        gives a symbol that no longer trades (Binance BREAK, Coinbase delisted), where the exchange does that."""

    def closed(self, session: Session) -> None:
        """A connection is gone: forget what the twin counted for it (connections, subscriptions)."""

    def open_session(self, path: str) -> Session:
        """The session for a WebSocket request path; raise Rejected to refuse the upgrade."""
        raise NotImplementedError

    def on_message(self, session: Session, message: str | bytes) -> list[bytes]:
        """Handle one client message (subscribe, …): update `session`, return the replies."""
        raise NotImplementedError

    def route(self, session: Session) -> None:
        """Set `session.symbols` from its subscriptions and the symbols listed now (called after a listing change:
        a subscription to a symbol listed later may start carrying trades; a delisted symbol's stop)."""
        raise NotImplementedError

    def trade_frame(self, trade: Trade, style: str) -> bytes:
        """The encoded frame carrying one trade (encoded once, broadcast to every subscriber)."""
        raise NotImplementedError

    def connection_frames(self, trade: Trade, session: Session, frame: bytes) -> list[bytes]:
        """The frames one trade makes on one connection, given its trade_frame(): by default just that
        frame; a twin whose other streams derive from trades (aggregates, candles) adds theirs here."""
        return [frame]

    def shutdown_frames(self, session: Session) -> list[bytes]:
        """The notice a server sends before going away for maintenance (Connection.announce_shutdown)."""
        return []

    def batch_frame(self, frames: list[bytes]) -> bytes:
        """One frame carrying several trade_frame()s, for twins with batches_trades (e.g. a JSON array)."""
        raise NotImplementedError

    def greeting(self, session: Session) -> list[bytes]:
        """Frames the server sends by itself as soon as a connection opens (e.g. a status message)."""
        return []

    def subscribed(self, session: Session, symbols: set[str], emitted: int) -> list[bytes]:
        """Frames sent after the replies when a client message added `symbols` to the session (e.g. a
        last trade). `emitted`, here and below: the exchange clock's ticks so far; of a symbol's trades,
        the first market[symbol].happened(emitted) have happened."""
        return []

    def snapshots(self, session: Session, emitted: int) -> list[bytes]:
        """Frames owed after the replies to every client message: the snapshots its subscribes asked
        for (on_message records them in the session)."""
        return []

    def heartbeat(self, session: Session, emitted: int) -> list[bytes]:
        """Application-level heartbeat frames for one connection, every heartbeat_interval seconds."""
        return []

    def rest(self, path: str, query: dict[str, str], emitted: int) -> RestResponse:
        """Answer a plain HTTP GET from the trades that have happened."""
        raise NotImplementedError

    # ---- REST faults (Simulator.rest_throttle / rest_ban / rest_errors): the exchange's documented answers ----

    weights: WeightLimit | None = None  # a request-weight budget (Binance); None: requests are not weighed
    weight_header = ""  # the response header carrying the minute's used weight, with `weights`

    def rest_weight(self, path: str, query: dict[str, str]) -> int:
        """The documented weight of one request, counted against `weights`."""
        return 0

    def rest_limited(self, retry_after_s: int | None) -> RestResponse:
        """The answer to a rate-limited request; raise ValueError for a Retry-After the exchange never sends."""
        raise NotImplementedError

    def rest_banned(self, until_ms: int, retry_after_s: int) -> RestResponse:
        """The answer while the client's IP is banned (until `until_ms`, epoch ms)."""
        raise ValueError(f"{self.exchange} documents no REST ban")

    def rest_server_error(self, status: int, retry_after_s: int | None) -> RestResponse:
        """A server error: by default what a front proxy answers (not JSON); Retry-After as RFC 9110 §10.2.3.
        Raise ValueError for a status that is no server error of this exchange."""
        return RestResponse(status, server_error(status).phrase.encode(), "text/plain", retry_after(retry_after_s))


def server_error(status: int) -> http.HTTPStatus:
    """`status` as a server error (5xx); ValueError otherwise."""
    if not 500 <= status <= 599:
        raise ValueError(f"{status} is not a server error (5xx)")
    return http.HTTPStatus(status)


def retry_after(seconds: int | None) -> tuple[tuple[str, str], ...]:
    """The Retry-After header (delay in whole seconds, RFC 9110 §10.2.3), if any."""
    return () if seconds is None else (("Retry-After", str(seconds)),)


def universe(exchange: str, count: int) -> list[str]:
    """`count` symbols named as `exchange` names them (e.g. SYM0001USDT), the same in every run."""
    cls = twin_class(exchange)
    return [cls.generated_symbol(k) for k in range(count)]


def twin_class(exchange: str) -> type[Twin]:
    """sim/<exchange>.py defines TWIN; a new exchange is one new file."""
    name = f"marketfeed.sim.{exchange}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:  # the twin exists but something it imports does not
            raise
        raise ValueError(f"no simulator twin for exchange {exchange!r}") from exc
    return module.TWIN

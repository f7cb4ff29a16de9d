"""The simulator's async shell: a loop thread, one port per exchange, the market clock, live faults.

Everything on the loop is owned by the loop thread. Test-facing methods either read plain values
(atomic under the GIL) or hop onto the loop with `_call` and wait for the result, so a fault has
taken effect by the time the call returns.

The clock's hot path routes a tick's trades by symbol: `_Exchange.subscribers` maps each listed symbol to
the connections subscribed to it, kept in step with every session, so a tick costs its trades and their
subscribers, never a scan of every connection or every stream.
"""
from __future__ import annotations

import asyncio
import functools
import http
import logging
import ssl
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Event, State

from marketfeed.sim.faults import FaultPlan, RestFaultPlan, RestVerdict, garbage_frames
from marketfeed.sim.limits import Gate, Limit, MessageLimit, Refusal
from marketfeed.sim.market import ExchangeMarket, Trade
from marketfeed.sim.twin import Refused, Rejected, RestResponse, Session, Twin, twin_class

log = logging.getLogger("sim")
T = TypeVar("T")

MIN_TICK_S = 0.001  # the clock wakes at most every millisecond; faster rates emit in bursts
POLL_S = 0.002  # how often wait_* re-checks its condition
CALL_TIMEOUT_S = 5.0
MAX_RATE_CHUNK = 1000  # max_rate: trades per symbol per transport write
MAX_RATE_LOW_WATER = 1 << 20  # max_rate: the next chunk goes out once a send buffer is below this
PACED_CHUNK_S = 0.002  # max_rate with paced: trades due within this long go out in one write
REST_LOG_LIMIT = 100_000  # requests kept per exchange: bounded for runs of days, ample for a test's assertions
REFUSALS_LIMIT = 100_000  # refusals kept per exchange, likewise
_COUNTED_DATA = (Opcode.TEXT, Opcode.BINARY)  # a message's first frame (continuations are the same message)
_CONTROL = (Opcode.PING, Opcode.PONG)


@dataclass(frozen=True)
class RestLogEntry:
    """One REST request as the simulator answered it."""

    time: float  # time.monotonic() on arrival
    path: str
    query: dict[str, str]
    status: int


@dataclass
class ConnectionCounters:
    frames_sent: int = 0  # every data frame written: trades, duplicates, garbage, replies
    trades_sent: int = 0  # distinct trades delivered
    duplicates_sent: int = 0
    garbage_sent: int = 0
    skipped_ids: list[int] = field(default_factory=list)  # trades lost in transit on purpose


class Connection:
    """A live WebSocket connection: what it was sent, and the faults a test injects into it.

    Fault methods may be called from any thread; they have taken effect when they return.
    """

    def __init__(self, sim: Simulator, exchange: _Exchange, ws: ServerConnection, session: Session, number: int):
        assert ws.request is not None, "a connection is made once its handshake is done"
        self.exchange = exchange.name
        self.id = number
        self.path = ws.request.path
        self.session = session
        self.counters = ConnectionCounters()
        self.closed = False
        self.close_code: int | None = None  # as received from the client, 1006 if none
        self._sim = sim
        self._ex = exchange
        self._ws = ws
        self._plan = FaultPlan()
        self._backlog: list[bytes] | None = None  # frames held back while stalled
        self._batch: list[bytes] = []  # trade frames of this clock tick, for twins that batch them
        self._resume_timer: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task[None] | None = None
        self.replies_muted = False  # the twin's answers to client messages (pongs, acks) are not sent
        self.refused = False  # a limit closed it: its later messages are not handled

    def __repr__(self) -> str:
        return f"<Connection {self.exchange}#{self.id} {self.path} {'closed' if self.closed else 'open'}>"

    @property
    def symbols(self) -> frozenset[str]:
        return frozenset(self.session.symbols)

    @property
    def stalled(self) -> bool:
        return self._backlog is not None

    # ---- faults (any thread) ----

    def drop(self) -> None:
        """Close the TCP socket abruptly: no close frame."""
        self._sim._call(self._ws.transport.abort)

    def stall(self, seconds: float | None = None) -> None:
        """Send nothing, not even pings, for `seconds` (None: until resume()); then flush what was held."""
        self._sim._call(self._stall, seconds)

    def resume(self) -> None:
        self._sim._call(self._resume)

    def send_garbage(self, k: int) -> None:
        """Send k malformed frames now (invalid JSON, truncated JSON, valid JSON of the wrong shape)."""
        self._sim._call(self._send_garbage, k)

    def duplicate_next(self, k: int) -> None:
        """Send each of the next k trades twice."""
        self._sim._call(self._plan.duplicate, k)

    def skip_next(self, k: int, symbol: str | None = None) -> None:
        """Do not send the next k trades (of `symbol`, or of any symbol); they stay in the history."""
        self._sim._call(self._plan.skip, k, symbol)

    def mute_replies(self) -> None:
        """Leave every client message unanswered from now on (a ping gets no pong); trades keep flowing."""
        self._sim._call(setattr, self, "replies_muted", True)

    def disconnect_slow_consumer(self) -> None:
        """Close with 1008 (policy violation), as an exchange does to a client that falls behind."""
        self._sim._call(self._close_slow_consumer)

    def announce_shutdown(self, close_after_s: float | None = None) -> None:
        """Send the twin's shutdown notice (e.g. Binance serverShutdown); close normally after `close_after_s`."""
        self._sim._call(self._announce_shutdown, close_after_s)

    # ---- loop side ----

    def send_trade(self, trade: Trade, frame: bytes) -> None:
        """Queue one trade's frame (subject to skip/duplicate faults); the clock flushes per tick."""
        copies = self._plan.copies(trade.symbol)
        if copies == 0:
            self.counters.skipped_ids.append(trade.trade_id)
            return
        self.counters.trades_sent += 1
        self.counters.duplicates_sent += copies - 1
        frames = self._ex.twin.connection_frames(trade, self.session, frame)
        if self._ex.twin.batches_trades:
            self._batch += frames * copies  # framed together at the tick's flush
        else:
            self.queue(frames * copies)

    def send(self, frames: list[bytes]) -> None:
        self.queue(frames)
        self.flush()

    def queue(self, frames: list[bytes]) -> None:
        if self._backlog is not None:
            self._backlog += frames
        elif self._writable():
            for frame in frames:
                self._ws.protocol.send_text(frame)  # framed into the protocol's buffer, not written yet
            self.counters.frames_sent += len(frames)

    def flush(self) -> None:
        """Write everything queued in one syscall: a burst of trades costs one send(), not one each."""
        if self._batch:
            batch, self._batch = self._batch, []
            self.queue([self._ex.twin.batch_frame(batch)])
        if self._writable():
            ws = self._ws
            ws.transport.write(b"".join(ws.protocol.data_to_send()))
            if ws.transport.get_write_buffer_size() > self._sim.write_buffer_limit:
                self._close_slow_consumer()

    def _writable(self) -> bool:
        return self._ws.state is State.OPEN and not self._ws.transport.is_closing()  # gone, maybe unnoticed

    def _send_garbage(self, k: int) -> None:
        sample = self._ex.twin.trade_frame(self._ex.sample_trade(), self.session.style)
        self.counters.garbage_sent += k
        self.send(garbage_frames(k, sample))

    def _stall(self, seconds: float | None) -> None:
        if self._backlog is None:
            self._backlog = []
        if self._ws.keepalive_task is not None:  # no pings either: the line is silent
            self._ws.keepalive_task.cancel()
            self._ws.keepalive_task = None
        if self._resume_timer is not None:
            self._resume_timer.cancel()
        if seconds is not None:
            self._resume_timer = asyncio.get_running_loop().call_later(seconds, self._resume)

    def _resume(self) -> None:
        if self._backlog is None:
            return
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
        backlog, self._backlog = self._backlog, None
        if self._ws.state is State.OPEN:
            self._ws.start_keepalive()
            self.send(backlog)

    def _announce_shutdown(self, close_after_s: float | None) -> None:
        self.send(self._ex.twin.shutdown_frames(self.session))
        if close_after_s is not None:
            asyncio.get_running_loop().call_later(close_after_s, self._close_normally)

    def _close_normally(self) -> None:
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._ws.close(1000))

    def _close_slow_consumer(self) -> None:
        if self._closing is None:  # keep a reference: the loop holds tasks only weakly
            self._closing = asyncio.get_running_loop().create_task(self._ws.close(1008, "slow consumer"))

    def refuse(self, refused: Refused) -> None:
        """Enforce a limit: record it, send the twin's frames, close as the exchange does (or stay open)."""
        if self.refused:
            return
        self._ex.record(refused.limit, refused.detail, self.id)
        if refused.frames:
            self.send(list(refused.frames))
        if refused.close_code is not None:
            self.refused = True
            if self._closing is None:
                close = self._ws.close(refused.close_code, refused.close_reason)
                self._closing = asyncio.get_running_loop().create_task(close)


class ExchangeFaults:
    """Faults applied to every live connection of one exchange; each returns how many it hit."""

    def __init__(self, sim: Simulator, exchange: str):
        self._sim = sim
        self._exchange = exchange

    def drop_all(self) -> int:
        return self._each(Connection.drop)

    def stall_all(self, seconds: float | None = None) -> int:
        return self._each(Connection.stall, seconds)

    def resume_all(self) -> int:
        return self._each(Connection.resume)

    def send_garbage_all(self, k: int) -> int:
        return self._each(Connection.send_garbage, k)

    def duplicate_next_all(self, k: int) -> int:
        return self._each(Connection.duplicate_next, k)

    def skip_next_all(self, k: int, symbol: str | None = None) -> int:
        return self._each(Connection.skip_next, k, symbol)

    def disconnect_slow_consumers(self) -> int:
        return self._each(Connection.disconnect_slow_consumer)

    def mute_replies_all(self) -> int:
        return self._each(Connection.mute_replies)

    def _each(self, fault: Callable[..., None], *args: Any) -> int:
        connections = self._sim.connections(self._exchange)
        for connection in connections:
            fault(connection, *args)
        return len(connections)


class _LimitedConnection(ServerConnection):
    """A server connection that shows every frame the client sends to `on_frame` (message limits count them,
    pings and pongs included, which websockets answers by itself)."""

    on_frame: Callable[[Frame], None] | None = None
    handle: Connection | None = None  # the simulator's Connection, once the handshake is done
    over_limit = False  # a message limit was hit before `handle` existed

    def process_event(self, event: Event) -> None:
        if self.on_frame is not None and isinstance(event, Frame):
            self.on_frame(event)
        super().process_event(event)


class _Exchange:
    """Loop-side state of one exchange: its twin, market, server and connections."""

    def __init__(self, name: str, twin: Twin, ping_interval: float, pong_timeout: float):
        self.name = name
        self.twin = twin
        self.market = twin.market
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.server: Server | None = None
        self.emitted = 0  # trades 0..emitted-1 of every symbol have happened
        self.connections: dict[int, Connection] = {}
        self.subscribers: dict[str, set[Connection]] = {symbol: set() for symbol in self.market.symbols}
        self.sessions: weakref.WeakKeyDictionary[ServerConnection, Session] = weakref.WeakKeyDictionary()
        self.heartbeats: asyncio.Task[None] | None = None  # the twin's application-level heartbeats, if any
        self.rest_plan = RestFaultPlan(twin.weights, time.monotonic())  # minutes count from here
        self.rest_log: deque[RestLogEntry] = deque(maxlen=REST_LOG_LIMIT)
        self.refusals: deque[Refusal] = deque(maxlen=REFUSALS_LIMIT)
        self.connection_gates: dict[str, Gate] = {}  # client IP → its connection attempts
        self.message_gates: dict[str, Gate] = {}  # client IP → its messages (twins that limit them per IP)

    @property
    def port(self) -> int:
        assert self.server is not None, "simulator not started"
        return next(iter(self.server.sockets)).getsockname()[1]

    def sample_trade(self) -> Trade:
        return next(iter(self.market.symbols.values())).trade(0)

    def answer_rest(self, path: str, query: dict[str, str]) -> RestResponse:
        """The twin's answer, or the one a REST fault or the weight budget calls for; logged."""
        now, twin = time.monotonic(), self.twin
        decision = self.rest_plan.decide(now, twin.rest_weight(path, query))
        match decision.verdict:
            case RestVerdict.SERVE:
                response = twin.rest(path, query, self.emitted)
            case RestVerdict.LIMITED:
                response = twin.rest_limited(decision.retry_after_s)
            case RestVerdict.BANNED:
                assert decision.retry_after_s is not None  # a ban always says when it ends
                until_ms = int((time.time() + decision.banned_until - now) * 1000)
                response = twin.rest_banned(until_ms, decision.retry_after_s)
            case RestVerdict.ERROR:
                response = twin.rest_server_error(decision.status, decision.retry_after_s)
        if decision.used_weight is not None:
            response = replace(response, headers=(*response.headers, (twin.weight_header, str(decision.used_weight))))
        self.rest_log.append(RestLogEntry(now, path, query, response.status))
        return response

    def throttle_rest(self, count: int, retry_after_s: int | None) -> None:
        _check_fault(count, retry_after_s)
        self.twin.rest_limited(retry_after_s)  # rendered once: refuses an answer the exchange never gives
        self.rest_plan.throttle(count, retry_after_s)

    def fail_rest(self, count: int, status: int, retry_after_s: int | None) -> None:
        _check_fault(count, retry_after_s)
        self.twin.rest_server_error(status, retry_after_s)  # rendered once: refuses a status it never sends
        self.rest_plan.fail(count, status, retry_after_s)

    def ban_rest(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError(f"a ban lasts a positive number of seconds (got {seconds})")
        self.rest_plan.ban(time.monotonic(), seconds)

    def route(self, connection: Connection, before: set[str]) -> None:
        """Keep the symbol → subscribers index in step with the connection's session."""
        after = connection.session.symbols
        for symbol in before - after:
            if (subscribers := self.subscribers.get(symbol)) is not None:  # None: delisted meanwhile
                subscribers.discard(connection)
        for symbol in after - before:
            self.subscribers[symbol].add(connection)

    def record(self, limit: Limit, detail: str, connection_id: int | None) -> None:
        self.refusals.append(Refusal(limit, detail, connection_id, time.monotonic()))
        log.info("%s refused (%s) on connection %s: %s", self.name, limit, connection_id, detail)

    def apply_refusals(self) -> None:
        """Enforce what the twin refused while handling a message (on that connection or another one)."""
        for refused in self.twin.take_refused():
            target = next((c for c in self.connections.values() if c.session is refused.session), None)
            if target is not None:
                target.refuse(refused)
            else:  # already gone: nothing left to close, the refusal still happened
                self.record(refused.limit, refused.detail, None)

    def reroute(self) -> None:
        """After a listing change: every session's symbols anew, and the index with them."""
        for connection in tuple(self.connections.values()):
            before = set(connection.session.symbols)
            self.twin.route(connection.session)
            self.route(connection, before)

    def list_symbol(self, symbol: str) -> None:
        self.market.list_symbol(symbol, self.emitted)
        self.subscribers[symbol] = set()
        self.reroute()

    def delist_symbol(self, symbol: str, still_listed: bool) -> None:
        self.market.delist_symbol(symbol, self.emitted)
        self.twin.delisted(symbol, still_listed)
        self.reroute()
        del self.subscribers[symbol]

    def watch_messages(self, ws: _LimitedConnection, limit: MessageLimit, ip: str) -> None:
        """Count the client's messages against the twin's limit; the first beyond it gets the twin's answer."""
        gate = self.message_gates.setdefault(ip, limit.rate.gate()) if limit.per_ip else limit.rate.gate()
        counted = _COUNTED_DATA + _CONTROL if limit.control_frames else _COUNTED_DATA

        def on_frame(frame: Frame) -> None:
            if frame.opcode in counted and not gate.admit(time.monotonic()):
                if ws.handle is not None:
                    ws.handle.refuse(self.twin.messages_exceeded(ws.handle.session))
                else:
                    ws.over_limit = True

        ws.on_frame = on_frame


class Simulator:
    """Exchange twins on 127.0.0.1 serving deterministic trades, run from a background loop thread.

    symbols: one list for every exchange, or a mapping exchange → list (exchanges name symbols
    differently). rate: trades per second per symbol; count: trades per symbol (None: forever).
    start_ms: event time of trade 0 (None: wall clock at start(), so ingestion lag is meaningful).
    port: base port, exchange k listens on port + k (0: ephemeral ports).
    ping_interval / pong_timeout: override every twin's keepalive (small values for tests).
    clock_paused: no trade happens until start_clock(), so a test's client can subscribe first.
    max_connection_age: close every connection (code 1000) this many seconds after it opened, as
    Binance does at 24 h (small values for tests; None: never).
    max_rate: (benchmarks; needs count and clock_paused) ignore `rate`: start_clock() renders every
    trade's wire frame up front, then each connection gets them in large chunks as fast as it reads
    them, so the sender costs next to nothing. No faults apply in this mode.
    paced: (with max_rate; latency benchmarks) the pre-rendered trades go out on schedule instead:
    trade i of every symbol is written at clock start + i / rate (at most PACED_CHUNK_S late), and
    clock_started_ns tells when that start was. Event times stay the market's (1 ms apart above
    1000 trades/s), so a trade's send time is derived from its index, not read from the frame.
    twin_options: exchange → keyword arguments of its twin (e.g. {"polygon": {"api_key": "k"}},
    {"binance": {"weight_limit": 100, "weight_minute_s": 2}}, {"coinbase": {"string_ids": True}}), the connection
    limits' numbers among them: binance max_streams, max_messages, message_window_s, max_connection_attempts,
    connection_window_s; coinbase connection_rate, connection_burst, message_rate, message_burst,
    max_subscriptions; polygon max_connections (defaults: the documented ones). refusals() lists what they refused.
    Listing changes: list_symbol, delist_symbol (not in max_rate mode); a symbol listed later has fewer than
    `count` trades (the clock stops at `count` ticks).
    REST faults: rest_throttle, rest_ban, rest_errors; rest_log lists every REST request with its status.
    ssl_context: serve wss:// and https:// with this server context (tests of certificate verification).
    time_scale: market time runs this many times as fast as the clock (event times 1000 * time_scale / rate
    ms apart, at most 1 ms apart when that is less), so that 1-minute candles close every few seconds.
    """

    def __init__(
        self,
        exchanges: Sequence[str] = ("binance",),
        symbols: Sequence[str] | Mapping[str, Sequence[str]] = ("BTCUSDT", "ETHUSDT"),
        *,
        rate: float = 10.0,
        count: int | None = None,
        seed: int = 0,
        start_ms: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        ping_interval: float | None = None,
        pong_timeout: float | None = None,
        write_buffer_limit: int = 16 * 2**20,
        clock_paused: bool = False,
        twin_options: Mapping[str, Mapping[str, Any]] | None = None,
        max_rate: bool = False,
        paced: bool = False,
        max_connection_age: float | None = None,
        ssl_context: ssl.SSLContext | None = None,
        time_scale: float = 1.0,
    ):
        if not exchanges:
            raise ValueError("no exchanges to simulate")
        self.exchange_names = list(dict.fromkeys(exchanges))
        self.symbols = symbols
        self.rate = rate
        self.count = count
        self.seed = seed
        self.start_ms = start_ms
        self.host = host
        self.base_port = port
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.write_buffer_limit = write_buffer_limit  # a client this far behind is cut off with 1008
        self.clock_paused = clock_paused  # no trade happens before start_clock(): tests connect first
        self.twin_options = {name: dict(options) for name, options in (twin_options or {}).items()}
        if max_rate and (count is None or not clock_paused):
            raise ValueError("max_rate needs count and clock_paused (frames are rendered before the clock starts)")
        if paced and not max_rate:
            raise ValueError("paced applies to max_rate (pre-rendered) mode")
        self.max_rate, self.paced = max_rate, paced
        self.clock_started_ns: int | None = None  # wall clock of the paced schedule's start
        # trades per symbol per transport write
        self._chunk_trades = max(1, int(rate * PACED_CHUNK_S)) if paced else MAX_RATE_CHUNK
        self.max_connection_age = max_connection_age
        self._rendered: dict[tuple[str, str, str], list[bytes]] = {}  # max_rate: wire frames, by subscription
        self.ssl_context = ssl_context
        if time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        self.time_scale = time_scale
        self._exchanges: dict[str, _Exchange] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._clock: asyncio.Task[None] | None = None
        self._connection_numbers = iter(range(1, 2**62))

    # ---- lifecycle ----

    def start(self) -> Simulator:
        """Bind every exchange and start the market clock; returns once listening."""
        if self._thread is not None:
            raise RuntimeError("simulator already started")
        start_ms = self.start_ms if self.start_ms is not None else int(time.time()) * 1000
        for name in self.exchange_names:
            cls = twin_class(name)
            symbols = self.symbols[name] if isinstance(self.symbols, Mapping) else self.symbols
            market = ExchangeMarket(
                name, symbols, seed=self.seed, rate=self.rate / self.time_scale, start_ms=start_ms,
                id_block=cls.id_block)  # the market's rate spaces event times; the clock keeps self.rate
            self._exchanges[name] = _Exchange(
                name,
                cls(market, **self.twin_options.get(name, {})),
                self.ping_interval if self.ping_interval is not None else cls.ping_interval,
                self.pong_timeout if self.pong_timeout is not None else cls.pong_timeout,
            )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sim-loop", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._open(), self._loop).result(CALL_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close every server and connection and end the loop thread. Idempotent."""
        if self._loop is None or self._thread is None:
            return
        loop, thread = self._loop, self._thread
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(CALL_TIMEOUT_S * 2)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(CALL_TIMEOUT_S)
        loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- addresses ----

    def port(self, exchange: str) -> int:
        return self._exchange(exchange).port

    def url(self, exchange: str) -> str:
        """WebSocket base URL, e.g. ws://127.0.0.1:PORT (the twin defines the paths)."""
        return f"{'wss' if self.ssl_context else 'ws'}://{self.host}:{self.port(exchange)}"

    def rest_url(self, exchange: str) -> str:
        """REST base URL: the same port as the WebSocket."""
        return f"{'https' if self.ssl_context else 'http'}://{self.host}:{self.port(exchange)}"

    def urls(self) -> dict[str, dict[str, str]]:
        return {name: {"ws": self.url(name), "rest": self.rest_url(name)} for name in self._exchanges}

    # ---- ground truth ----

    def market(self, exchange: str) -> ExchangeMarket:
        return self._exchange(exchange).market

    def emitted(self, exchange: str) -> int:
        """How many trades of each symbol have happened so far."""
        return self._exchange(exchange).emitted

    def trades(self, exchange: str, symbol: str) -> list[Trade]:
        """Every trade of `symbol` that has happened, in order (a delisted symbol's end at its delisting)."""
        ex = self._exchange(exchange)
        market = ex.market[symbol]
        return market.trades(0, market.happened(ex.emitted))

    def truth(self, exchange: str, symbol: str) -> list[int]:
        """Ids of every trade of `symbol` that has happened, in order (a delisted symbol's end at its last trade)."""
        ex = self._exchange(exchange)
        market = ex.market[symbol]
        return list(range(market.first_id, market.first_id + market.happened(ex.emitted)))

    # ---- listing changes (any thread; in effect when they return) ----

    def list_symbol(self, exchange: str, symbol: str) -> None:
        """List `symbol` now: the listing endpoint shows it, its trade 0 is the clock's next tick (ids of a block
        of its own), and subscriptions to it work (also those made before, where the exchange accepts them).
        ValueError for a symbol listed already, or listed before (relisting is not simulated)."""
        if self.max_rate:
            raise ValueError("listing changes are not simulated in max_rate mode")
        self._call(self._exchange(exchange).list_symbol, symbol)

    def delist_symbol(self, exchange: str, symbol: str, still_listed: bool = False) -> None:
        """Delist `symbol` now: no more trades (its truth ends at its last trade; REST still serves its history),
        live subscriptions to it get nothing more, new ones are refused as for an unknown symbol, and it is gone
        from the listing endpoint (still_listed: shown as no longer trading where the exchange does that:
        Binance status BREAK, Coinbase status delisted). ValueError for a symbol not listed."""
        self._call(self._exchange(exchange).delist_symbol, symbol, still_listed)

    def listed(self, exchange: str) -> list[str]:
        """The symbols of an exchange listed now, in listing order."""
        return self._call(lambda: list(self._exchange(exchange).market.listed))

    # ---- limits ----

    def refusals(self, exchange: str) -> list[Refusal]:
        """Every limit the exchange's twin enforced so far (the last REFUSALS_LIMIT), oldest first: a connection
        attempt, message, subscription or connection the real exchange would have refused."""
        return self._call(list, self._exchange(exchange).refusals)

    def wait_emitted(self, count: int, timeout: float = 10.0) -> None:
        """Block until every exchange has emitted at least `count` trades per symbol."""
        self.wait_until(lambda: all(ex.emitted >= count for ex in self._exchanges.values()), timeout, f"{count} trades")

    # ---- connections and faults ----

    def connections(self, exchange: str) -> list[Connection]:
        """The live connections of an exchange, oldest first."""
        return list(self._exchange(exchange).connections.values())  # one C-level copy: safe across threads

    def wait_connections(self, exchange: str, n: int, timeout: float = 10.0) -> list[Connection]:
        """Block until an exchange has at least n live connections; return them."""
        self.wait_until(lambda: len(self._exchange(exchange).connections) >= n, timeout, f"{n} {exchange} connections")
        return self.connections(exchange)

    def faults(self, exchange: str) -> ExchangeFaults:
        self._exchange(exchange)
        return ExchangeFaults(self, exchange)

    # ---- REST faults and the request log (any thread; in effect when they return) ----

    def rest_throttle(self, exchange: str, count: int, retry_after_s: int | None = None) -> None:
        """The next `count` REST requests get the exchange's documented rate-limit answer: Binance 429,
        Retry-After: retry_after_s (required), code -1003; Kraken HTTP 200 {"error":["EAPI:Rate limit exceeded"]}
        (no Retry-After: retry_after_s must be None); Coinbase 429 {"message": "Public rate limit exceeded"};
        Polygon 429 {"status": "ERROR", …}. Coinbase and Polygon document no Retry-After; given, it is sent.
        Faults queue in the order given. ValueError for an answer the exchange never gives."""
        self._call(self._exchange(exchange).throttle_rest, count, retry_after_s)

    def rest_ban(self, exchange: str, seconds: float) -> None:
        """Binance's IP ban: every REST request gets 418, Retry-After until the ban ends, for `seconds` from now."""
        self._call(self._exchange(exchange).ban_rest, seconds)

    def rest_errors(self, exchange: str, count: int, status: int = 503, retry_after_s: int | None = None) -> None:
        """The next `count` REST requests get a server error `status` in the exchange's error shape (Kraken's 5xx
        come from its network edge, not as JSON; Kraken's status 200 says "EService:Unavailable" in the body),
        with Retry-After if retry_after_s is given (RFC 9110: what a 503 may say)."""
        self._call(self._exchange(exchange).fail_rest, count, status, retry_after_s)

    def rest_log(self, exchange: str) -> list[RestLogEntry]:
        """Every REST request of an exchange so far (the last REST_LOG_LIMIT), oldest first, with its status."""
        return self._call(list, self._exchange(exchange).rest_log)

    @staticmethod
    def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
        """Poll `predicate` until it is true; TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"simulator: {what} not reached within {timeout} s")
            time.sleep(POLL_S)

    # ---- loop side ----

    def _exchange(self, name: str) -> _Exchange:
        try:
            return self._exchanges[name]
        except KeyError:
            raise KeyError(f"exchange {name!r} is not simulated (started: {list(self._exchanges)})") from None

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn on the loop and return its result; direct when already on the loop thread."""
        assert self._loop is not None and self._thread is not None, "simulator not started"
        if threading.current_thread() is self._thread:
            return fn(*args)

        async def run() -> T:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(CALL_TIMEOUT_S)

    async def _open(self) -> None:
        for k, ex in enumerate(self._exchanges.values()):
            ex.server = await serve(
                functools.partial(self._serve_connection, ex),
                self.host,
                self.base_port + k if self.base_port else 0,
                process_request=functools.partial(self._process_request, ex),
                ping_interval=ex.ping_interval,
                ping_timeout=ex.pong_timeout,
                create_connection=_LimitedConnection,
                compression=None,  # frames are encoded once and broadcast as is
                close_timeout=1.0,
                logger=log.getChild(ex.name),
                ssl=self.ssl_context,
            )
            if ex.twin.heartbeat_interval > 0:
                ex.heartbeats = asyncio.get_running_loop().create_task(self._run_heartbeats(ex))
        if not self.clock_paused:
            self._clock = asyncio.get_running_loop().create_task(self._run_clock())

    def start_clock(self) -> None:
        """Start the market clock of a simulator made with clock_paused=True (max_rate: render first)."""
        rendered = self._render_max_rate() if self.max_rate else None  # in the caller's thread: may take seconds

        def create() -> None:
            if self._clock is None:
                loop = asyncio.get_running_loop()
                self.clock_started_ns = time.time_ns()
                clock = self._run_clock() if rendered is None else self._run_max_rate(rendered, loop.time())
                self._clock = loop.create_task(clock)

        self._call(create)

    def prepare_max_rate(self, style: str) -> None:
        """Render every symbol's frames in `style` now, before clients connect (it can take a while)."""
        for ex in self._exchanges.values():
            for symbol in ex.market.symbols:
                self._render(ex, symbol, style)

    def _render_max_rate(self) -> dict[tuple[str, str, str], list[bytes]]:
        """(exchange, symbol, style) of every live subscription → all `count` trades as wire frames, in chunks."""
        for ex in self._exchanges.values():
            for connection in tuple(ex.connections.values()):
                for symbol in connection.session.symbols:
                    self._render(ex, symbol, connection.session.style)
        return self._rendered

    @property
    def _rendered_count(self) -> int:
        """Trades per symbol in max_rate mode: `count`, which __init__ requires there."""
        assert self.count is not None, "max_rate needs count"
        return self.count

    def _render(self, ex: _Exchange, symbol: str, style: str) -> None:
        if (ex.name, symbol, style) not in self._rendered:
            market, twin, count = ex.market[symbol], ex.twin, self._rendered_count
            self._rendered[(ex.name, symbol, style)] = [
                b"".join(_text_frame(twin.trade_frame(market.trade(i), style))
                         for i in range(start, min(start + self._chunk_trades, count)))
                for start in range(0, count, self._chunk_trades)
            ]

    async def _run_max_rate(self, rendered: dict[tuple[str, str, str], list[bytes]], t0: float) -> None:
        """Write chunk k to every live connection once all have drained below the low-water mark
        (paced: and once its last trade is due).

        A connection opened later (a client's reconnect) gets the chunks from then on; what it missed
        has happened and is served over REST, as after any outage."""
        loop, count = asyncio.get_running_loop(), self._rendered_count
        for k, start in enumerate(range(0, count, self._chunk_trades)):
            emitted = min(start + self._chunk_trades, count)
            if self.paced and (due := t0 + emitted / self.rate - loop.time()) > 0:
                await asyncio.sleep(due)
            live = [c for ex in self._exchanges.values() for c in tuple(ex.connections.values()) if c._writable()]
            while any(c._writable() and c._ws.transport.get_write_buffer_size() > MAX_RATE_LOW_WATER for c in live):
                await asyncio.sleep(MIN_TICK_S / 2)
            for ex in self._exchanges.values():
                ex.emitted = emitted
            for connection in live:
                if not connection._writable():
                    continue
                session = connection.session
                for symbol in sorted(session.symbols):
                    chunks = rendered.get((connection.exchange, symbol, session.style))
                    if chunks is not None:
                        connection._ws.transport.write(chunks[k])  # whole frames: pings interleave between them
                        connection.counters.trades_sent += emitted - start
                        connection.counters.frames_sent += emitted - start
            await asyncio.sleep(0)  # let the loop answer pings and notice closes

    async def _close(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
        for ex in self._exchanges.values():
            if ex.heartbeats is not None:
                ex.heartbeats.cancel()
            if ex.server is not None:
                ex.server.close()
                await ex.server.wait_closed()

    @staticmethod
    async def _run_heartbeats(ex: _Exchange) -> None:
        """Every heartbeat_interval, each connection gets its twin's heartbeat frames (held back while stalled)."""
        while True:
            await asyncio.sleep(ex.twin.heartbeat_interval)
            for connection in tuple(ex.connections.values()):
                if frames := ex.twin.heartbeat(connection.session, ex.emitted):
                    connection.send(frames)

    async def _run_clock(self) -> None:
        """Trade i of every symbol happens at t0 + i / rate."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        emitted = 0
        while self.count is None or emitted < self.count:
            due = int((loop.time() - t0) * self.rate) + 1
            if self.count is not None:
                due = min(due, self.count)
            for i in range(emitted, due):
                for ex in self._exchanges.values():
                    self._emit(ex, i)
            for ex in self._exchanges.values():
                for connection in tuple(ex.connections.values()):
                    connection.flush()
            emitted = max(emitted, due)
            await asyncio.sleep(max(t0 + emitted / self.rate - loop.time(), MIN_TICK_S))

    @staticmethod
    def _emit(ex: _Exchange, i: int) -> None:
        """Clock tick i: each listed symbol's trade of that tick happens; queue it to the subscribers, encoded once
        per frame style."""
        ex.emitted = i + 1  # first: whatever a client has seen is already in the truth and on REST
        markets = ex.market.symbols
        for symbol, subscribers in ex.subscribers.items():
            if subscribers:
                market = markets[symbol]
                trade = market.trade(i - market.listed_at)
                frames: dict[str, bytes] = {}
                for connection in tuple(subscribers):
                    style = connection.session.style
                    frame = frames.get(style)
                    if frame is None:
                        frame = frames[style] = ex.twin.trade_frame(trade, style)
                    connection.send_trade(trade, frame)

    def _process_request(self, ex: _Exchange, connection: ServerConnection, request: Request) -> Response | None:
        """Plain GETs are REST calls; upgrades are checked by the twin before the handshake."""
        if request.headers.get("Upgrade", "").lower() != "websocket":
            url = urlsplit(request.path)
            query = {key: values[-1] for key, values in parse_qs(url.query).items()}
            return _http_response(ex.answer_rest(url.path, query))
        twin, ip = ex.twin, str(connection.remote_address[0])
        if twin.connection_limit is not None:
            gate = ex.connection_gates.setdefault(ip, twin.connection_limit.gate())
            if not gate.admit(time.monotonic()):
                ex.record(Limit.CONNECTION_RATE, f"{ip}: more connection attempts than {twin.connection_limit}", None)
                return _http_response(twin.connection_refused())
        try:
            ex.sessions[connection] = twin.open_session(request.path)
        except Rejected as rejected:
            if rejected.limit is not None:
                ex.record(rejected.limit, rejected.detail, None)
            return _http_response(RestResponse(rejected.status, rejected.body))
        if twin.message_limit is not None:
            assert isinstance(connection, _LimitedConnection)  # serve(create_connection=…)
            ex.watch_messages(connection, twin.message_limit, ip)
        return None

    async def _serve_connection(self, ex: _Exchange, ws: ServerConnection) -> None:
        session = ex.sessions.pop(ws)
        connection = Connection(self, ex, ws, session, next(self._connection_numbers))
        ex.connections[connection.id] = connection
        ex.route(connection, set())
        log.info("%s connection %d opened: %s", ex.name, connection.id, connection.path)
        if self.max_connection_age is not None:
            asyncio.get_running_loop().call_later(self.max_connection_age, connection._close_normally)
        connection.send(ex.twin.greeting(session))
        assert isinstance(ws, _LimitedConnection)  # serve(create_connection=…)
        ws.handle = connection
        if ws.over_limit:
            connection.refuse(ex.twin.messages_exceeded(session))
        try:
            async for message in ws:
                if connection.refused:
                    continue  # past a limit: what follows is not handled, the close is on its way
                before = set(session.symbols)
                replies = ex.twin.on_message(session, message)
                if not connection.replies_muted:
                    connection.send(replies)
                ex.route(connection, before)
                ex.apply_refusals()
                if connection.refused:
                    continue
                if added := session.symbols - before:
                    connection.send(ex.twin.subscribed(session, added, ex.emitted))
                connection.send(ex.twin.snapshots(session, ex.emitted))
        except ConnectionClosed:
            pass
        finally:
            connection.closed = True
            connection.close_code = ws.close_code
            for symbol in session.symbols:
                if (subscribers := ex.subscribers.get(symbol)) is not None:
                    subscribers.discard(connection)
            ex.twin.closed(session)
            del ex.connections[connection.id]
            log.info("%s connection %d closed: code %s", ex.name, connection.id, ws.close_code)


def _check_fault(count: int, retry_after_s: int | None) -> None:
    """A REST fault lasts at least one request; a Retry-After is not negative."""
    if count < 1 or (retry_after_s is not None and retry_after_s < 0):
        raise ValueError(f"count must be at least 1 and retry_after_s not negative (got {count}, {retry_after_s})")


def _text_frame(payload: bytes) -> bytes:
    """One unmasked server-to-client text frame (RFC 6455 §5.2), for writing straight to the transport."""
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 1 << 16:
        header = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return header + payload


def _http_response(response: RestResponse) -> Response:
    headers = Headers(
        [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            ("Connection", "close"),
            *response.headers,
        ]
    )
    return Response(response.status, http.HTTPStatus(response.status).phrase, headers, response.body)

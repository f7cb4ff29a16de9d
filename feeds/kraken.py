"""Kraken spot WebSocket v2 (`trade` and `ohlc` channels) and its REST backfill (/0/public/Trades, /0/public/OHLC).

Wire format (docs.kraken.com, WebSocket v2): wss://ws.kraken.com/v2, one request per channel
{"method": "subscribe", "params": {"channel": "trade", "symbol": ["BTC/USD"], "snapshot": false},
"req_id": 1}; `snapshot` is always sent (feed key `snapshot`) since Kraken's documented default
has changed between versions. Every symbol is acknowledged on its own, {"method": "subscribe",
"result": {…}, "success": true, …}, or refused, {"method": "subscribe", "success": false,
"error": "Currency pair not supported XBT/USD", …}. Data frames:
  trade {"channel": "trade", "type": "snapshot"|"update", "data": [{"symbol", "side" (taker),
        "price", "qty" (JSON numbers), "ord_type", "trade_id" (a sequence per book), "timestamp"}]}
  ohlc  {"channel": "ohlc", "type": …, "data": [{"symbol", "open", "high", "low", "close", "vwap",
        "volume", "trades", "interval_begin", "interval" (minutes), …}]}
Timestamps are RFC3339 (µs on trades, ns on interval_begin). Not data: {"channel": "status"} on
connect, {"channel": "heartbeat"} about once a second when nothing else is sent, and the pong to
our {"method": "ping"}, which is enforced.

Feed channels: "trade", and "ohlc-<minutes>" for Kraken's intervals 1, 5, 15, 30, 60, 240, 1440,
10080, 21600 (stored as 1m, 5m, 15m, 30m, 1h, 4h, 1d, 1w, 15d).

Candles: Kraken marks no candle closed. Its ohlc updates are generated on trade events, so a
candle is known closed when an update or snapshot entry for a later interval_begin of the same
symbol and interval arrives; until then its newest state is an in-progress candle (latest wins).
A candle followed by a quiet market therefore stays in progress until the next trade. Which candle
is newest is parse state of one connection (KrakenSession): a reconnect starts a new session, so
it forgets the candles in progress (their last updates may be lost): a snapshot after it brings the
final state of recent candles, /0/public/OHLC that of every one closed while we were away.

REST backfill pages by time, not by id: `since` is a nanosecond timestamp (exclusive) and the
answer's `last` is the cursor of the next page. A gap's first page starts just before the last
trade seen ahead of it (`Gap.before_ns`, from the sequence tracker: on an id jump, and on every
reconnect for the range since the last id; after a restart, the time recovery read with the last id);
when that is unknown, the first page is the most recent 1000 trades. REST names pairs with Kraken's
own asset codes: the v2 symbol "BTC/USD" is pair "XBTUSD" (BTC → XBT, DOGE → XDG, every other
code unchanged, slash dropped); answers are keyed by the internal pair name (e.g. XXBTZUSD), so the
parser takes the one result key that is not "last". Kraken asks for at most one public call per
second.

Candles that close while the connection is down come back over /0/public/OHLC (outage_gaps): one
gap per symbol and ohlc channel, from one interval before the candle open at the outage (its last
updates may have been lost with the connection), `since` in Unix seconds (exclusive, so one second
less). Entries are [time_s, "open", "high", "low", "close", "vwap", "volume", count]. Stored closed
are those that ended before the live stream resumed (the gap's until_ns; later ones close live),
except the last entry, which Kraken documents as the current, not-yet-committed one, and periods
without trades (count 0), which the ohlc channel never sends either. No paging: Kraken answers up
to 720 of the most recent entries whatever `since` says: an outage longer than that loses its oldest
candles, and the gap is closed unrecoverable.

The listing (a universe, feeds/universe.py) is GET /0/public/AssetPairs: {"error": [], "result": {"XXBTZUSD":
{"altname": "XBTUSD", "wsname": "XBT/USD", "base": "XXBT", "quote": "ZUSD", "status": "online", …}, …}}. Its
"wsname" is the WebSocket name of v1, which spells Bitcoin XBT and Dogecoin XDG; v2 subscribes and answers with
"BTC/USD" ("Symbol format: v1 XBT/USD, v2 BTC/USD", docs.kraken.com spot-websocket, "v2 vs v1"), so the
listed symbol is the wsname with XBT → BTC and XDG → DOGE (the inverse of rest_pair's codes), every other code
as it is. A pair without a wsname is not on the WebSocket, nor are dark pool books (altname "….d", no public
trades): neither is listed. Trading is status "online" (the others: cancel_only, post_only, limit_only,
reduce_only).
"""
from __future__ import annotations

import calendar
import dataclasses
import functools
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from urllib.parse import urlencode

import orjson

from marketfeed.config.schema import ExchangeOptions, FeedConfig
from marketfeed.feeds.base import (
    BeyondRetention,
    ConnectionLimits,
    Control,
    FeedProtocol,
    Gap,
    HttpRequest,
    MalformedFrame,
    ParsedRows,
    SubscriptionRejected,
    decimal,
    json_number,
    load_json,
)
from marketfeed.feeds.rest_policy import OK, RestVerdict, VerdictKind, server_delay_s
from marketfeed.feeds.rows import Candle, Trade, new_trade
from marketfeed.feeds.universe import Listing, listing
from marketfeed.storage.tables import CANDLES

OHLC_INTERVALS = {1: "1m", 5: "5m", 15: "15m", 30: "30m", 60: "1h", 240: "4h", 1440: "1d", 10080: "1w", 21600: "15d"}
OHLC_CHANNEL = "ohlc-"  # feed channel "ohlc-5": the ohlc channel at a 5-minute interval
OHLC_STREAM = "@" + OHLC_CHANNEL  # candle gaps' stream: "BTC/USD@ohlc-5" (trade gaps' is the symbol)
REST_ASSET = {"BTC": "XBT", "DOGE": "XDG"}  # v2 uses ISO codes, REST pair names Kraken's own
V2_ASSET = {code: iso for iso, code in REST_ASSET.items()}  # …and so does AssetPairs' wsname (v1 naming)
DARK_POOL = ".d"  # AssetPairs' altname suffix of a dark pool book
# GET /0/public/OHLC "Returns up to 720 of the most recent entries (older data cannot be retrieved,
# regardless of the value of since)" (docs.kraken.com/api/docs/rest-api/get-ohlc-data).
OHLC_MAX_ENTRIES = 720
BACKFILL_PAGE = 1000  # /0/public/Trades' maximum count
_S = 1_000_000_000  # ns per second
_SIDES = {"buy": "buy", "sell": "sell"}
_REST_SIDES = {"b": "buy", "s": "sell"}


class KrakenProtocol(FeedProtocol):
    exchange = "kraken"
    contiguous_ids = True
    ping_message = '{"method":"ping"}'
    ping_interval_s = 10.0
    pong_timeout_s = 10.0
    backfill_min_interval_s = 1.0  # "calling the public endpoints at a frequency of 1 per second (or less)"
    # Past the limit, "additional calls will be restricted for a few seconds (or possibly longer if calls
    # continue to be made while the rate limits are active)" (docs.kraken.com/api/docs/guides/spot-rest-ratelimits).
    rest_limited_wait_s = 3.0
    # docs.kraken.com spot-ws-intro: "Cloudflare imposes a connection/re-connection rate limit (per IP address) of
    # approximately 150 attempts per rolling 10 minutes"; no subscriptions-per-connection limit is documented, and
    # the message rate limit is dynamic (no number published).
    connection_limits = ConnectionLimits(max_connects=150, connect_window_s=600.0)

    def __init__(self, feed: FeedConfig):
        super().__init__(feed)
        self.options = feed.options_of(KrakenOptions)
        self.trade_channel, self.ohlc_intervals = channels(feed.channels)
        self.symbols = frozenset(feed.symbols)

    def url(self, base: str) -> str:
        base = base.rstrip("/")
        return base if base.endswith("/v2") else base + "/v2"

    def candle_intervals(self) -> tuple[str, ...]:
        return tuple(OHLC_INTERVALS[m] for m in self.ohlc_intervals)

    def streams_per_symbol(self) -> int:
        return int(self.trade_channel) + len(self.ohlc_intervals)

    def listing_request(self) -> HttpRequest:
        return HttpRequest(f"{self.feed.rest_url.rstrip('/')}/0/public/AssetPairs")

    def parse_listing(self, body: bytes) -> list[Listing]:
        """AssetPairs' pairs that are on the WebSocket, in v2 naming (module docstring)."""
        try:
            answer = orjson.loads(body)
            if answer.get("error"):
                raise MalformedFrame(f"Kraken error: {answer['error']}", body)
            pairs = answer["result"]
            if not isinstance(pairs, dict):
                raise TypeError(f"result is a {type(pairs).__name__}")
            listed = []
            for pair in pairs.values():
                wsname = pair.get("wsname")
                if wsname is None or str(pair.get("altname")).endswith(DARK_POOL):
                    continue
                base, slash, quote = _text(wsname).partition("/")
                if not slash:
                    raise ValueError(f"wsname {wsname!r} is no BASE/QUOTE")
                base, quote = V2_ASSET.get(base, base), V2_ASSET.get(quote, quote)
                listed.append(listing(f"{base}/{quote}", base, quote, pair["status"] == "online"))
            return listed
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
            raise MalformedFrame(f"bad AssetPairs answer: {exc!r}", body) from None

    def open_session(self) -> KrakenSession:
        return KrakenSession(self)

    def subscribe_messages(self) -> list[str]:
        symbols, snapshot = list(self.feed.symbols), self.options.snapshot
        params = [{"channel": "trade", "symbol": symbols, "snapshot": snapshot}] if self.trade_channel else []
        params += [{"channel": "ohlc", "symbol": symbols, "interval": interval, "snapshot": snapshot}
                   for interval in self.ohlc_intervals]
        return [orjson.dumps({"method": "subscribe", "params": p, "req_id": n}).decode()
                for n, p in enumerate(params, 1)]

    def outage_gaps(self, symbols: tuple[str, ...], since_ns: int, until_ns: int) -> list[Gap]:
        """Candles that closed while the connection was down (trade ids reveal their own gaps)."""
        gaps = []
        for minutes in self.ohlc_intervals:
            step_ns = minutes * 60 * _S
            start_ns = since_ns - since_ns % step_ns - step_ns
            gaps += [Gap(symbol, since_ns=start_ns, until_ns=until_ns, stream=f"{symbol}{OHLC_STREAM}{minutes}",
                         table=CANDLES) for symbol in symbols]
        return gaps

    def history_gaps(self, symbols: tuple[str, ...], since_ns: int, until_ns: int) -> list[Gap]:
        """Trades from `since` (exclusive, so one ns before) to until_ns; candles as after an outage."""
        trades = [Gap(symbol, since_ns=since_ns - 1, until_ns=until_ns, stream=symbol) for symbol in symbols
                  if self.trade_channel]
        return trades + self.outage_gaps(symbols, since_ns, until_ns)

    def backfill_request(self, gap: Gap) -> HttpRequest:
        if OHLC_STREAM in gap.stream:
            query = {"pair": rest_pair(gap.symbol), "interval": _stream_minutes(gap),
                     "since": gap.since_ns // _S - 1}  # exclusive: from the candle that opens at since_ns
            return HttpRequest(f"{self.feed.rest_url.rstrip('/')}/0/public/OHLC?{urlencode(query)}")
        query = {"pair": rest_pair(gap.symbol), "count": BACKFILL_PAGE}
        if gap.since_ns:  # a later page: the cursor
            query["since"] = gap.since_ns
        elif gap.before_ns:
            query["since"] = gap.before_ns - 1  # exclusive: from the trade before on, whatever shares its time
        return HttpRequest(f"{self.feed.rest_url.rstrip('/')}/0/public/Trades?{urlencode(query)}")

    def parse_backfill(self, gap: Gap, body: bytes, received_ns: int) -> tuple[list, Gap | None]:
        if OHLC_STREAM in gap.stream:
            return _parse_ohlc(gap, body, received_ns), None
        try:
            page, cursor = _rest_result(body)
            # [price, volume, time (Unix s, a JSON number), buy/sell, market/limit, miscellaneous, trade_id]
            trades = [Trade(round(json_number(t[2]) * 1_000_000) * 1000, "kraken", gap.symbol, _integer(t[6]),
                            self.trade_decimal(t[0]), self.trade_decimal(t[1]), _REST_SIDES[t[3]], received_ns)
                      for t in page]
        except (orjson.JSONDecodeError, AttributeError, KeyError, IndexError, TypeError, ValueError,
                OverflowError) as exc:  # OverflowError: a time so large that its µs are infinite
            raise MalformedFrame(f"bad Trades page: {exc!r}", body) from None
        last_id = gap.last_id
        rows = [t for t in trades if gap.first_id <= t.trade_id and (last_id is None or t.trade_id <= last_id)]
        newest = trades[-1].trade_id if trades else None
        if gap.until_ns:  # a window by time (marketfeed backfill): its end is where this gap ends
            kept = [row for row in rows if row.ts_ns <= gap.until_ns]
            if len(kept) < len(rows):
                return kept, None
        if newest is None or len(page) < BACKFILL_PAGE or (last_id is not None and newest >= last_id):
            return rows, None  # the gap is covered, or nothing newer exists yet
        if cursor <= gap.since_ns:  # `since` is exclusive: a cursor that does not move would ask this page forever
            raise MalformedFrame(f"cursor {cursor} does not advance past since={gap.since_ns}", body)
        return rows, dataclasses.replace(gap, first_id=max(gap.first_id, newest + 1), since_ns=cursor)

    def rest_verdict(self, status: int, headers: Mapping[str, str], body: bytes) -> RestVerdict:
        """Kraken says what went wrong in the body's error array, with HTTP 200 ("HTTP status codes are
        generally not used by our API to convey information about the state of requests",
        docs.kraken.com/api/docs/guides/spot-rest-intro); other statuses come from its network edge."""
        if status != 200:
            return super().rest_verdict(status, headers, body)
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            answer = None
        listed = answer.get("error") if isinstance(answer, dict) else None
        if not isinstance(listed, list):
            return OK  # not Kraken's envelope: the page parser says what is wrong with it
        # "<E|W><category>:<type>[:<extra info>]": W is a warning, the request still succeeded.
        errors = [error for error in listed if isinstance(error, str) and error.startswith("E")]
        return rest_error_verdict(errors[0], headers, self.rest_limited_wait_s) if errors else OK


def rest_error_verdict(error: str, headers: Mapping[str, str], limited_wait_s: float) -> RestVerdict:
    """One Kraken error string (support.kraken.com "API error messages"; docs.kraken.com spot-rest-ratelimits):
    the rate limit and the EService family (unavailable, busy, "EService:Throttled: [UNIX timestamp]" —
    "try again after [timestamp]") are worth asking again; anything else (EQuery:Unknown asset pair,
    EGeneral:Invalid arguments, …) is about the request itself."""
    reason = f"Kraken error: {error}"
    if error == "EAPI:Rate limit exceeded":
        return RestVerdict(VerdictKind.RETRY, limited_wait_s, reason)
    if error.startswith("EService:Throttled"):
        until = error.rpartition(":")[2].strip(" []")
        wait = server_delay_s(float(until), headers) if until.isdigit() else 0.0
        return RestVerdict(VerdictKind.RETRY, wait or limited_wait_s, reason)
    if error.startswith("EService:") or error == "EGeneral:Internal error":
        return RestVerdict(VerdictKind.RETRY, 0.0, reason)
    return RestVerdict(VerdictKind.FAILED, 0.0, reason)


class KrakenSession:
    """One connection's ohlc state: the newest candle per (symbol, interval), not yet known closed.

    Candles held by an earlier connection may have missed their last updates: their final state comes
    from the snapshot or /0/public/OHLC, never from what was held when the next interval began, so a
    new connection starts with a new session.
    """

    def __init__(self, protocol: KrakenProtocol):
        self.protocol = protocol
        self.subscribe_messages = protocol.subscribe_messages
        self._candles: dict[tuple[str, str], Candle] = {}

    def parse(self, frame: bytes | str, received_ns: int, out: ParsedRows) -> Control | None:
        msg = load_json(frame, dict)
        if msg.get("channel") == "ohlc":
            self._ohlc(msg, frame, received_ns, out)
            return None
        return _parse_message(msg, frame, received_ns, out, self.protocol.trade_number)

    def _ohlc(self, msg: dict, frame: bytes | str, received_ns: int, out: ParsedRows) -> None:
        """As trades: a bad entry drops only itself, and the message is reported malformed once the good ones are in."""
        data = msg.get("data")
        if not isinstance(data, list):
            raise MalformedFrame("bad ohlc message: no data array", frame)
        candles, bad, first, sample = [], 0, "", b""
        for c in data:
            try:
                candles.append(Candle(
                    rfc3339_ns(c["interval_begin"]), "kraken", _text(c["symbol"]), OHLC_INTERVALS[c["interval"]],
                    json_number(c["open"]), json_number(c["high"]), json_number(c["low"]), json_number(c["close"]),
                    json_number(c["volume"]), False, received_ns))
            except (KeyError, TypeError, ValueError) as exc:
                bad += 1
                if bad == 1:
                    first, sample = repr(exc), orjson.dumps(c)
        self._track(candles, out)
        if bad:
            raise MalformedFrame(f"bad ohlc message: {bad} of {len(data)} entries dropped, the first: {first}", sample)

    def _track(self, candles: list[Candle], out: ParsedRows) -> None:
        """Closes what a newer interval ends; the newest of each (symbol, interval) stays live."""
        live: dict[tuple[str, str], Candle] = {}
        for candle in candles:
            key = (candle.symbol, candle.interval)
            if candle.symbol not in self.protocol.symbols:
                live[key] = candle  # not ours: the row validator rejects it; no state grows for it
                continue
            newest = self._candles.get(key)
            if newest is not None and candle.ts_ns < newest.ts_ns:
                out.candles.append(candle._replace(closed=True))  # an earlier interval (a snapshot): over
                continue
            if newest is not None and candle.ts_ns > newest.ts_ns:
                out.candles.append(newest._replace(closed=True))  # a later interval began: the newest is final
            self._candles[key] = live[key] = candle
        out.live_candles += live.values()


def _parse_message(msg: dict, frame: bytes | str, received_ns: int, out: ParsedRows,
                   number: Callable[[object], float | Decimal]) -> Control | None:
    """Every channel but ohlc: frames that parse on their own. `number`: the protocol's trade_number."""
    channel = msg.get("channel")
    if channel == "trade":
        _trades(msg, frame, received_ns, out.trades, number)
        return None
    if channel == "heartbeat":
        return Control.HEARTBEAT
    if channel == "status":
        return Control.INFO
    method = msg.get("method")
    if method == "pong":
        return Control.PONG
    if method == "subscribe" and msg.get("success") is True:
        return Control.SUBSCRIBED
    if method == "subscribe" and msg.get("success") is False:
        raise SubscriptionRejected(f"Kraken refused a subscription: {msg.get('error')}")
    if method is not None and msg.get("success") is False:
        raise MalformedFrame(f"Kraken refused {method!r}: {msg.get('error')}", frame)
    raise MalformedFrame(f"unexpected message (channel {channel!r}, method {method!r})", frame)


def _trades(msg: dict, frame: bytes | str, received_ns: int, out: list[Trade],
            number: Callable[[object], float | Decimal]) -> None:
    """Every good entry of a trade message into `out`. A bad entry drops only itself: once the good ones are in,
    the message is reported malformed (one count per message) with the first bad entry as its sample."""
    data = msg.get("data")
    if not isinstance(data, list):
        raise MalformedFrame("bad trade message: no data array", frame)
    bad, first, sample = 0, "", b""
    for t in data:
        try:
            out.append(new_trade((rfc3339_ns(t["timestamp"]), "kraken", _text(t["symbol"]), _integer(t["trade_id"]),
                                  number(t["price"]), number(t["qty"]), _SIDES[t["side"]], received_ns)))
        except (KeyError, TypeError, ValueError) as exc:
            bad += 1
            if bad == 1:
                first, sample = repr(exc), orjson.dumps(t)
    if bad:
        raise MalformedFrame(f"bad trade message: {bad} of {len(data)} entries dropped, the first: {first}", sample)


def _parse_ohlc(gap: Gap, body: bytes, received_ns: int) -> list[Candle]:
    """The candles of an OHLC answer that closed before the live stream resumed. An answer of OHLC_MAX_ENTRIES
    that starts after the gap does is all Kraken still has: the periods before it are beyond its retention."""
    minutes = _stream_minutes(gap)
    step_ns = minutes * 60 * _S
    try:
        entries = _rest_result(body)[0]
        committed = entries[:-1]  # the last entry is the current, not-yet-committed timeframe
        candles = [Candle(_integer(e[0]) * _S, "kraken", gap.symbol, OHLC_INTERVALS[minutes], decimal(e[1]),
                          decimal(e[2]), decimal(e[3]), decimal(e[4]), decimal(e[6]), True, received_ns)
                   for e in committed if _integer(e[7]) > 0]
        first_ns = _integer(entries[0][0]) * _S if entries else 0
    except (orjson.JSONDecodeError, AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise MalformedFrame(f"bad OHLC page: {exc!r}", body) from None
    closed = [c for c in candles if c.ts_ns + step_ns <= gap.until_ns]
    if len(entries) >= OHLC_MAX_ENTRIES and first_ns > gap.since_ns:
        raise BeyondRetention(f"OHLC {minutes}m candles from {gap.since_ns // _S} to {first_ns // _S} (unix s) are "
                              f"beyond Kraken's {OHLC_MAX_ENTRIES} most recent entries", closed)
    return closed


def _rest_result(body: bytes) -> tuple[list, int]:
    """(entries, cursor "last") of a public REST answer; its result is keyed by Kraken's internal pair name,
    so the entries are under the one key that is not "last". Kraken's own errors raise MalformedFrame."""
    answer = orjson.loads(body)
    if answer.get("error"):
        raise MalformedFrame(f"Kraken error: {answer['error']}", body)
    result = answer["result"]
    (pair,) = [key for key in result if key != "last"]
    return result[pair], int(result["last"])


def _stream_minutes(gap: Gap) -> int:
    return int(gap.stream.rsplit(OHLC_STREAM, 1)[1])


def channels(names: tuple[str, ...]) -> tuple[bool, tuple[int, ...]]:
    """(trade channel wanted, ohlc intervals) from feed channels "trade" and "ohlc-<minutes>"."""
    trade, intervals = False, []
    for name in names:
        minutes = name[len(OHLC_CHANNEL):] if name.startswith(OHLC_CHANNEL) else ""
        if name == "trade":
            trade = True
        elif minutes.isdigit() and int(minutes) in OHLC_INTERVALS:
            intervals.append(int(minutes))
        else:
            raise ValueError(f"Kraken channel {name!r}: use 'trade' or 'ohlc-<minutes>' with minutes one of "
                             f"{', '.join(map(str, OHLC_INTERVALS))}")
    return trade, tuple(dict.fromkeys(intervals))


def rest_pair(symbol: str) -> str:
    """The REST pair name of a WebSocket v2 symbol: 'BTC/USD' → 'XBTUSD'."""
    base, _, quote = symbol.partition("/")
    return REST_ASSET.get(base, base) + REST_ASSET.get(quote, quote)


def rfc3339_ns(text: str) -> int:
    """'2023-09-25T07:48:36.925533Z' (UTC, up to 9 fraction digits) → nanoseconds since the epoch, exactly."""
    if not isinstance(text, str) or len(text) < 20 or text[-1] != "Z":
        raise ValueError(f"not an RFC3339 UTC timestamp: {text!r}")
    fraction = text[19:-1]
    if fraction and not (fraction[0] == "." and 2 <= len(fraction) <= 10 and fraction[1:].isdigit()
                         and fraction.isascii()):
        raise ValueError(f"not an RFC3339 UTC timestamp: {text!r}")
    return _epoch_seconds(text[:19]) * 1_000_000_000 + int(fraction[1:].ljust(9, "0") if fraction else 0)


@functools.lru_cache(maxsize=4096)
def _epoch_seconds(prefix: str) -> int:
    """'2023-09-25T07:48:36' → Unix seconds; cached, since a second's trades share it."""
    return calendar.timegm(time.strptime(prefix, "%Y-%m-%dT%H:%M:%S"))


def _text(value: object) -> str:
    if type(value) is str:
        return value
    raise TypeError(f"not a string: {value!r}")


def _integer(value: object) -> int:
    if type(value) is int:
        return value
    raise TypeError(f"not an integer: {value!r}")


@dataclasses.dataclass(frozen=True)
class KrakenOptions(ExchangeOptions):
    snapshot: bool = True  # ask every channel for its snapshot on (re)subscribe, sent explicitly


PROTOCOL = KrakenProtocol

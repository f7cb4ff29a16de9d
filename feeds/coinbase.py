"""Coinbase Exchange WebSocket feed (`matches` + `heartbeat` channels) and its REST backfill.

Wire format (docs.cdp.coinbase.com/exchange, WebSocket channels and REST "Get product trades"):
- one endpoint, wss://ws-feed.exchange.coinbase.com; the client sends
  {"type": "subscribe", "product_ids": [...], "channels": ["matches", "heartbeat"]} and gets
  {"type": "subscriptions", "channels": [...]} back, or {"type": "error", "message", "reason"}.
- the first message of the matches channel is a `last_match`: the product's latest trade, a real
  one, so it is stored like any match and seeds the trade-id sequence (no false gap on connect;
  after a reconnect, a `last_match` ahead of the last id seen reveals the outage).
- `match`: trade_id, maker_order_id, taker_order_id, side, size, price (decimal strings),
  product_id, sequence, time (RFC 3339, µs). `side` is the MAKER's side, so the taker side stored
  is its opposite. `sequence` is shared with every other channel of the product and skips by
  design in `matches`; gaps are found by trade_id, which is contiguous per product.
- `heartbeat` (once a second per product: sequence, last_trade_id, time) is not data: it never
  resets the stale-feed watchdog. Its last_trade_id can show that the newest matches were lost
  in transit (the channel may drop messages). Such a trailing gap needs no extra machinery: the
  next match reveals it, and if no match comes the stale watchdog reconnects within
  stale_after_s, whose `last_match` reveals it. So heartbeats are only acknowledged here.
REST backfill: GET /products/{id}/trades?after=<id>&limit<=1000 answers the trades with ids
below the cursor, newest first (cursor pagination: `after` pages to older trades, `before` to
newer; CB-AFTER / CB-BEFORE carry the oldest / newest id of the page, which for trades is the
trade_id, so the page body is enough to continue). Public endpoints allow 10 requests/s per IP;
the backfiller's request spacing stays below that.
The listing (a universe, feeds/universe.py) is GET /products ("Get all known trading pairs"): [{"id": "BTC-USD",
"base_currency": "BTC", "quote_currency": "USD", "status": "online", "trading_disabled": false, …}]; a product
trades when its status is "online" and trading is not disabled.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

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
)
from marketfeed.feeds.rows import Trade, new_trade
from marketfeed.feeds.universe import Listing, listing

BACKFILL_PAGE = 1000  # the trades endpoint's maximum limit
CHANNELS = ("matches", "heartbeat")
TAKER_SIDE = {"buy": "sell", "sell": "buy"}  # `side` names the maker's side
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def rfc3339_ns(text: str) -> int:
    """'2014-11-07T08:19:27.028459Z' → ns since the epoch (exact: integer arithmetic)."""
    return (datetime.fromisoformat(text) - _EPOCH) // _MICROSECOND * 1000


def rest_trade_id(value: object) -> int:
    """A REST trade_id as the exchange types it: the docs say integer (86327327), some captures show the same
    digits as a string ("86327327"). Anything else (a float, a bool, a signed or spaced string) is no id."""
    if type(value) is int:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise ValueError(f"trade_id {value!r} is not an integer")


class CoinbaseProtocol(FeedProtocol):
    exchange = "coinbase"
    contiguous_ids = True
    # Public REST is a token bucket of 15 refilled at 10 per second per IP; past it "a status of 429 Too Many
    # Requests is returned" without Retry-After (docs.cdp.coinbase.com/exchange/rest-api/rate-limits): a
    # second refills ten requests. Errors are {"message": …} with a 4xx/5xx status (the default verdict).
    rest_limited_wait_s = 1.0
    # docs.cdp.coinbase.com/exchange/websocket-feed/rate-limits: "Requests per second per IP: 8" (connects; bursts
    # up to 20) and "Messages sent by the client every second per IP: 100" (per IP: every connection's share of
    # it; a feed needs one connection, one message). Its subscription limit (10 per product and channel) counts
    # duplicates of one subscription, not the products one connection carries.
    connection_limits = ConnectionLimits(max_client_messages_per_s=100, max_connects=8, connect_window_s=1.0)

    def subscribe_messages(self) -> list[str]:
        message = {"type": "subscribe", "product_ids": list(self.feed.symbols), "channels": list(CHANNELS)}
        return [orjson.dumps(message).decode()]

    def streams_per_symbol(self) -> int:
        return len(CHANNELS)  # a subscription per product and channel

    def listing_request(self) -> HttpRequest:
        return HttpRequest(f"{self.feed.rest_url.rstrip('/')}/products")

    def parse_listing(self, body: bytes) -> list[Listing]:
        try:
            products = orjson.loads(body)
            if not isinstance(products, list):
                raise TypeError(f"not a list of products but a {type(products).__name__}")
            return [listing(p["id"], p["base_currency"], p["quote_currency"],
                            p["status"] == "online" and p["trading_disabled"] is False) for p in products]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise MalformedFrame(f"bad products list: {exc!r}", body) from None

    def parse(self, frame: bytes | str, received_ns: int, out: ParsedRows) -> Control | None:
        try:
            msg = orjson.loads(frame)
            kind = msg["type"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise MalformedFrame(f"not a Coinbase feed message: {exc!r}", frame) from None
        if kind == "match" or kind == "last_match":
            try:
                out.trades.append(new_trade((
                    rfc3339_ns(msg["time"]),
                    "coinbase",
                    msg["product_id"],
                    msg["trade_id"],
                    self.trade_decimal(msg["price"]),
                    self.trade_decimal(msg["size"]),
                    TAKER_SIDE[msg["side"]],
                    received_ns,
                )))
            except (KeyError, TypeError, ValueError) as exc:
                raise MalformedFrame(f"bad {kind} message: {exc!r}", frame) from None
            return None
        if kind == "heartbeat":
            return Control.HEARTBEAT
        if kind == "subscriptions":
            return Control.SUBSCRIBED
        if kind == "error":
            raise SubscriptionRejected(f"{msg.get('message')}: {msg.get('reason')}")
        raise MalformedFrame(f"unexpected message type {kind!r}", frame)

    def history_gaps(self, symbols: tuple[str, ...], since_ns: int, until_ns: int) -> list[Gap]:
        """Trades by time: newest page first, older pages until one reaches past since_ns (ids are the cursor)."""
        return [Gap(symbol, since_ns=since_ns, until_ns=until_ns, stream=symbol) for symbol in symbols]

    def backfill_request(self, gap: Gap) -> HttpRequest:
        """Newest first: the page ending at the gap's last id (or the newest page if it is open)."""
        query: dict[str, int] = {"limit": BACKFILL_PAGE}
        if gap.last_id is not None:
            query = {"after": gap.last_id + 1, "limit": min(BACKFILL_PAGE, gap.last_id - gap.first_id + 1)}
        url = f"{self.feed.rest_url.rstrip('/')}/products/{gap.symbol}/trades?{urlencode(query)}"
        return HttpRequest(url)

    def parse_backfill(self, gap: Gap, body: bytes, received_ns: int) -> tuple[list[Trade], Gap | None]:
        try:
            page = [(rest_trade_id(t["trade_id"]), t) for t in orjson.loads(body)]
            rows = [
                Trade(
                    rfc3339_ns(t["time"]),
                    "coinbase",
                    gap.symbol,
                    trade_id,
                    self.trade_decimal(t["price"]),
                    self.trade_decimal(t["size"]),
                    TAKER_SIDE[t["side"]],
                    received_ns,
                )
                for trade_id, t in page
                if trade_id >= gap.first_id and (gap.last_id is None or trade_id <= gap.last_id)
            ]
            oldest = min((trade_id for trade_id, _ in page), default=None)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise MalformedFrame(f"bad trades page: {exc!r}", body) from None
        if gap.since_ns:  # a window by time (marketfeed backfill): the page reaching before it is the last
            earliest = min((row.ts_ns for row in rows), default=gap.since_ns)
            rows = [row for row in rows if gap.since_ns <= row.ts_ns <= (gap.until_ns or row.ts_ns)]
            if earliest < gap.since_ns:
                return rows, None
        if oldest is None or oldest <= gap.first_id:
            return rows, None
        if gap.last_id is not None and oldest > gap.last_id:  # `after` answers older ids only: this would repeat
            raise MalformedFrame(f"page's oldest id {oldest} is after the gap's last id {gap.last_id}", body)
        return rows, dataclasses.replace(gap, last_id=oldest - 1)


@dataclass(frozen=True)
class CoinbaseOptions(ExchangeOptions):
    """Coinbase feeds take the common keys only."""


PROTOCOL = CoinbaseProtocol

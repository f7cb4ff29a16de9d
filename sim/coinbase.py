"""Coinbase Exchange twin: the WebSocket feed's matches and heartbeat channels, and product trades over REST.

WebSocket (one endpoint, path /): the client sends {"type": "subscribe" | "unsubscribe",
"product_ids": [...], "channels": ["matches", {"name": "heartbeat", "product_ids": [...]}]}; the
reply is {"type": "subscriptions", "channels": [{"name", "product_ids"}]} with every current
subscription, or {"type": "error", "message": "Failed to subscribe", "reason": "X is not a valid
product"}. (The texts of errors other than an invalid product are ours.) Right after a product joins
the matches channel its latest trade arrives as a `last_match`; then one `match` per trade. A match's
`side` is the maker's side; its `sequence` is the product's sequence shared with channels not
simulated here, so it skips by design. The heartbeat channel sends one message per product every
second with the product's last_trade_id and sequence.
REST: GET /products/{product_id}/trades?limit=&after=&before= — newest first, cursor pagination by
trade_id: `after` pages to older trades (ids below it), `before` to newer ones (ids above it); the
CB-BEFORE / CB-AFTER headers carry the newest / oldest id of the page. Twin option string_ids: REST
trade ids arrive as JSON strings, as some captures show (the feed's stay numbers).
Errors are {"message": …} with a 4xx or 5xx status (docs.cdp.coinbase.com/exchange/rest-api/requests);
past the public limit (10 requests/s per IP, bursts of 15) "a status of 429 Too Many Requests is
returned" (…/exchange/rest-api/rate-limits) with {"message": "Public rate limit exceeded"}, the message
clients report (github.com/askmike/gekko/issues/2859). Coinbase documents no Retry-After.
GET /products and /products/{product_id}: the products listed now, {"id": "BTC-USD", "base_currency",
"quote_currency", "status": "online", "trading_disabled": false, …} (docs.cdp.coinbase.com/exchange/reference/
exchangerestapi_getproducts); a product delisted with still_listed=True stays with status "delisted" and
trading_disabled true.
Limits (docs.cdp.coinbase.com/exchange/websocket-feed/rate-limits), always enforced, numbers changeable by
twin options for tests:
- connection attempts: "Requests per second per IP: 8 … in bursts: Up to 20" (connection_rate, connection_burst):
  beyond, the handshake is refused with 429 {"message": …} (the wording is ours);
- inbound messages: "a rate limit of 10 RPS / 1000 burst RPS", "a lazy-fill token bucket", per IP here
  (message_rate, message_burst; subscribe and unsubscribe messages, not pings): beyond, an error message and
  a close with 1008 (the docs' best practices name disconnecting a client that sends too many messages;
  the wording is ours);
- "limited to 10 WebSocket subscriptions on a per product, per channel basis … the new subscription will be
  rejected" (max_subscriptions), counted over every live connection: the subscribe is answered with an error
  naming the product and channel, and the connection stays open.
"""
from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson

from marketfeed.sim.limits import Bucket, Limit, MessageLimit
from marketfeed.sim.market import ExchangeMarket, SymbolMarket, Trade
from marketfeed.sim.twin import Refused, Rejected, RestResponse, Session, Twin, retry_after, server_error

STYLE = "feed"
CHANNELS = ("matches", "heartbeat")
DEFAULT_LIMIT = MAX_LIMIT = 1000
SEQUENCE_PER_ID = 100  # a product's sequence starts near first_id * 100: distinct per product
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class CoinbaseTwin(Twin):
    exchange = "coinbase"
    heartbeat_interval = 1.0

    def __init__(self, market: ExchangeMarket, string_ids: bool = False, connection_rate: float = 8.0,
                 connection_burst: int = 20, message_rate: float = 10.0, message_burst: int = 1000,
                 max_subscriptions: int = 10):
        """string_ids: REST trade_id values are JSON strings instead of numbers. The limits: see the module
        docstring."""
        super().__init__(market)
        self.string_ids = string_ids
        self.connection_limit = Bucket(connection_rate, connection_burst)
        self.message_limit = MessageLimit(Bucket(message_rate, message_burst), per_ip=True, control_frames=False)
        self.max_subscriptions = max_subscriptions
        self._subscriptions: Counter[str] = Counter()  # "channel:product" → live connections subscribed to it
        self._delisted_shown: dict[str, None] = {}  # delisted products /products still lists

    @staticmethod
    def generated_symbol(k: int) -> str:
        return f"SYM{k + 1:04d}-USD"

    def open_session(self, path: str) -> Session:
        if path.split("?")[0] not in ("", "/"):
            raise Rejected(404, b"")
        return Session(STYLE)

    def on_message(self, session: Session, message: str | bytes) -> list[bytes]:
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError:
            return [_error("Failed to parse message", "invalid JSON")]
        kind = request.get("type") if isinstance(request, dict) else None
        if kind not in ("subscribe", "unsubscribe"):
            return [_error("Failed to parse message", f"unknown message type {kind!r}")]
        try:
            wanted = self._streams(request)
        except ValueError as exc:
            return [_error(f"Failed to {kind}", str(exc))]
        if kind == "subscribe":
            new = [s for s in wanted if s not in session.streams]
            if full := [s for s in new if self._subscriptions[s] >= self.max_subscriptions]:
                reason = (f"{len(full)} subscriptions beyond the limit of {self.max_subscriptions} per product and "
                          f"channel, e.g. {full[0]}")
                self.refuse(Refused(session, Limit.SUBSCRIPTIONS, reason, close_code=None))
                return [_error("Failed to subscribe", reason)]
            session.streams += new
            self._subscriptions.update(new)
        else:
            gone = [s for s in session.streams if s in wanted]
            session.streams = [s for s in session.streams if s not in wanted]
            self._subscriptions.subtract(gone)
        self.route(session)
        return [_subscriptions(session)]

    def route(self, session: Session) -> None:
        listed = self.market.listed
        session.symbols = {product for channel, product in map(_split, session.streams)
                           if channel == "matches" and product in listed}

    def closed(self, session: Session) -> None:
        self._subscriptions.subtract(session.streams)

    def messages_exceeded(self, session: Session) -> Refused:
        assert self.message_limit is not None  # set in __init__
        detail = f"more inbound messages than {self.message_limit.rate}"
        return Refused(session, Limit.MESSAGE_RATE, detail, (_error("Too many messages", detail),),
                       close_reason="Too many messages")

    def connection_refused(self) -> RestResponse:
        return RestResponse.json({"message": "Too many connection requests"}, 429)

    def delisted(self, symbol: str, still_listed: bool) -> None:
        if still_listed:
            self._delisted_shown[symbol] = None

    def subscribed(self, session: Session, symbols: set[str], emitted: int) -> list[bytes]:
        """The matches channel opens with each new product's latest trade, as a last_match."""
        markets = [self.market[product] for product in self.market.listed if product in symbols]
        return [_match(market.trade(n - 1), "last_match", market) for market in markets
                if (n := market.happened(emitted))]

    def trade_frame(self, trade: Trade, style: str) -> bytes:
        return _match(trade, "match", self.market[trade.symbol])

    def heartbeat(self, session: Session, emitted: int) -> list[bytes]:
        now, listed = _rfc3339(datetime.now(UTC)), self.market.listed
        return [
            orjson.dumps(
                {
                    "type": "heartbeat",
                    "sequence": _sequence(market, market.happened(emitted) - 1),
                    "last_trade_id": market.first_id + market.happened(emitted) - 1,
                    "product_id": product,
                    "time": now,
                }
            )
            for channel, product in map(_split, session.streams)
            if channel == "heartbeat" and (market := listed.get(product)) is not None
        ]

    def rest(self, path: str, query: dict[str, str], emitted: int) -> RestResponse:
        parts = path.strip("/").split("/")
        if parts[0] == "products" and len(parts) <= 2:
            return self._products(parts[1] if len(parts) == 2 else None)
        if len(parts) != 3 or parts[0] != "products" or parts[2] != "trades":
            return RestResponse.json({"message": "NotFound"}, 404)
        if parts[1] not in self.market:
            return RestResponse.json({"message": "NotFound"}, 404)
        market = self.market[parts[1]]
        try:
            limit = max(1, min(int(query.get("limit", DEFAULT_LIMIT)), MAX_LIMIT))
            after = int(query["after"]) if "after" in query else None
            before = int(query["before"]) if "before" in query else None
        except ValueError:
            return RestResponse.json({"message": "invalid pagination cursor or limit"}, 400)
        newest = market.happened(emitted) - 1  # index of the latest trade
        if after is not None:  # older than the cursor
            stop = min(market.index_of(after) - 1, newest)
            start = stop - limit + 1
        elif before is not None:  # newer than the cursor, the page next to it
            start = max(market.index_of(before) + 1, 0)
            stop = min(start + limit - 1, newest)
        else:
            stop, start = newest, newest - limit + 1
        trades = market.trades(start, stop + 1)[::-1]
        headers: tuple[tuple[str, str], ...] = ()
        if trades:
            headers = (("CB-BEFORE", str(trades[0].trade_id)), ("CB-AFTER", str(trades[-1].trade_id)))
        return RestResponse.json([_rest_trade(t, self.string_ids) for t in trades], headers=headers)

    def rest_limited(self, retry_after_s: int | None) -> RestResponse:
        """429 and its message; a Retry-After only if asked for (a gateway's, not documented by Coinbase)."""
        return RestResponse.json({"message": "Public rate limit exceeded"}, 429, retry_after(retry_after_s))

    def rest_server_error(self, status: int, retry_after_s: int | None) -> RestResponse:
        phrase = server_error(status).phrase
        return RestResponse.json({"message": phrase}, status, retry_after(retry_after_s))

    def _products(self, product: str | None) -> RestResponse:
        """GET /products (every product listed, and delisted ones kept as such) or /products/{id}."""
        listed = self.market.listed
        shown = [name for name in self.market.symbols if name in listed or name in self._delisted_shown]
        if product is None:
            return RestResponse.json([_product(name, name in listed) for name in shown])
        if product not in shown:
            return RestResponse.json({"message": "NotFound"}, 404)
        return RestResponse.json(_product(product, product in listed))

    def _streams(self, request: dict) -> list[str]:
        """'channel:product' names of a (un)subscribe request; ValueError names what is invalid."""
        products = request.get("product_ids", [])
        channels = request.get("channels")
        if not isinstance(products, list) or not isinstance(channels, list) or not channels:
            raise ValueError("product_ids must be a list and channels a non-empty list")
        streams = []
        for channel in channels:
            if isinstance(channel, dict):
                name, ids = channel.get("name"), channel.get("product_ids", products)
            else:
                name, ids = channel, products
            if name not in CHANNELS:
                raise ValueError(f"{name} is not a valid channel")
            for product in ids:
                if product not in self.market.listed:
                    raise ValueError(f"{product} is not a valid product")
                streams.append(f"{name}:{product}")
        return list(dict.fromkeys(streams))


def _product(product: str, trading: bool) -> dict:
    """One product of GET /products, in the documented shape."""
    base, _, quote = product.partition("-")
    return {"id": product, "base_currency": base, "quote_currency": quote, "quote_increment": "0.01",
            "base_increment": "0.00000001", "display_name": f"{base}/{quote}", "min_market_funds": "1",
            "margin_enabled": False, "post_only": False, "limit_only": False, "cancel_only": False,
            "status": "online" if trading else "delisted", "status_message": "", "trading_disabled": not trading,
            "fx_stablecoin": False, "max_slippage_percentage": "0.03000000", "auction_mode": False,
            "high_bid_limit_percentage": ""}


def _split(stream: str) -> tuple[str, str]:
    channel, _, product = stream.partition(":")
    return channel, product


def _subscriptions(session: Session) -> bytes:
    by_channel: dict[str, list[str]] = {}
    for channel, product in map(_split, session.streams):
        by_channel.setdefault(channel, []).append(product)
    channels = [{"name": name, "product_ids": products} for name, products in by_channel.items()]
    return orjson.dumps({"type": "subscriptions", "channels": channels})


def _error(message: str, reason: str) -> bytes:
    return orjson.dumps({"type": "error", "message": message, "reason": reason})


def _sequence(market: SymbolMarket, index: int) -> int:
    """Strictly increasing, with holes of 1–4: other channels' messages take the numbers between."""
    return market.first_id * SEQUENCE_PER_ID + 3 * index + (index * 2654435761 >> 7) % 3


def _order_id(trade: Trade, role: str) -> str:
    digest = hashlib.blake2b(f"{trade.symbol}:{trade.trade_id}:{role}".encode(), digest_size=16).digest()
    return str(uuid.UUID(bytes=digest, version=4))


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _time(trade: Trade) -> str:
    return _rfc3339(_EPOCH + timedelta(milliseconds=trade.time_ms))


def _match(trade: Trade, kind: str, market: SymbolMarket) -> bytes:
    return orjson.dumps(
        {
            "type": kind,
            "trade_id": trade.trade_id,
            "maker_order_id": _order_id(trade, "maker"),
            "taker_order_id": _order_id(trade, "taker"),
            "side": "buy" if trade.buyer_is_maker else "sell",  # the maker's side
            "size": trade.qty,
            "price": trade.price,
            "product_id": trade.symbol,
            "sequence": _sequence(market, trade.index),
            "time": _time(trade),
        }
    )


def _rest_trade(trade: Trade, string_id: bool) -> dict:
    return {
        "time": _time(trade),
        "trade_id": str(trade.trade_id) if string_id else trade.trade_id,
        "price": trade.price,
        "size": trade.qty,
        "side": "buy" if trade.buyer_is_maker else "sell",  # the maker's side, as on the feed
    }


TWIN = CoinbaseTwin

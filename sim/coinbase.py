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
"""
from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import orjson

from marketfeed.sim.market import ExchangeMarket, SymbolMarket, Trade
from marketfeed.sim.twin import Rejected, RestResponse, Session, Twin, retry_after, server_error

STYLE = "feed"
CHANNELS = ("matches", "heartbeat")
DEFAULT_LIMIT = MAX_LIMIT = 1000
SEQUENCE_PER_ID = 100  # a product's sequence starts near first_id * 100: distinct per product
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class CoinbaseTwin(Twin):
    exchange = "coinbase"
    heartbeat_interval = 1.0

    def __init__(self, market: ExchangeMarket, string_ids: bool = False):
        """string_ids: REST trade_id values are JSON strings instead of numbers."""
        super().__init__(market)
        self.string_ids = string_ids

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
            session.streams += [s for s in wanted if s not in session.streams]
        else:
            session.streams = [s for s in session.streams if s not in wanted]
        session.symbols = {product for channel, product in map(_split, session.streams) if channel == "matches"}
        return [_subscriptions(session)]

    def subscribed(self, session: Session, symbols: set[str], emitted: int) -> list[bytes]:
        """The matches channel opens with each new product's latest trade, as a last_match."""
        if not emitted:
            return []
        return [
            _match(self.market[product].trade(emitted - 1), "last_match", self.market[product])
            for product in self.market.symbols
            if product in symbols
        ]

    def trade_frame(self, trade: Trade, style: str) -> bytes:
        return _match(trade, "match", self.market[trade.symbol])

    def heartbeat(self, session: Session, emitted: int) -> list[bytes]:
        now = _rfc3339(datetime.now(UTC))
        return [
            orjson.dumps(
                {
                    "type": "heartbeat",
                    "sequence": _sequence(self.market[product], emitted - 1),
                    "last_trade_id": self.market[product].first_id + emitted - 1,
                    "product_id": product,
                    "time": now,
                }
            )
            for channel, product in map(_split, session.streams)
            if channel == "heartbeat"
        ]

    def rest(self, path: str, query: dict[str, str], emitted: int) -> RestResponse:
        parts = path.strip("/").split("/")
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
        newest = emitted - 1  # index of the latest trade
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
                if product not in self.market:
                    raise ValueError(f"{product} is not a valid product")
                streams.append(f"{name}:{product}")
        return list(dict.fromkeys(streams))


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

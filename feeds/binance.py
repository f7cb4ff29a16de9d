"""Binance spot market streams (combined-stream endpoint) and its REST backfill.

Wire format: wss://<host>/stream?streams=btcusdt@trade/ethusdt@trade, each frame
{"stream": "btcusdt@trade", "data": {"e": "trade", "E": ms, "s": "BTCUSDT", "t": id,
"p": "decimal", "q": "decimal", "T": ms, "m": buyer_is_maker}}. The server pings every
20 s; websocket-client answers pings with pongs by itself.
"""
from __future__ import annotations

from urllib.parse import urlencode

import orjson

from feeds.base import Control, FeedProtocol, Gap, HttpRequest, MalformedFrame, ParsedRows
from feeds.rows import Trade

BACKFILL_PAGE = 1000  # historicalTrades' maximum limit


class BinanceProtocol(FeedProtocol):
    exchange = "binance"
    contiguous_ids = True

    def url(self, base: str) -> str:
        streams = "/".join(f"{s.lower()}@{ch}" for s in self.feed.symbols for ch in self.feed.channels)
        return f"{base.rstrip('/')}/stream?streams={streams}"

    def parse(self, frame: bytes | str, received_ns: int, out: ParsedRows) -> Control | None:
        try:
            msg = orjson.loads(frame)
            data = msg["data"]
            event = data["e"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            if isinstance(msg := _safe_loads(frame), dict) and "result" in msg and "id" in msg:
                return Control.SUBSCRIBED  # reply to a SUBSCRIBE request
            raise MalformedFrame(f"not a combined-stream event: {exc!r}", frame) from None
        if event == "trade":
            try:
                out.trades.append(
                    Trade(
                        data["T"] * 1_000_000,
                        "binance",
                        data["s"],
                        data["t"],
                        float(data["p"]),
                        float(data["q"]),
                        "sell" if data["m"] else "buy",  # buyer is maker → the taker sold
                        received_ns,
                    )
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise MalformedFrame(f"bad trade event: {exc!r}", frame) from None
            return None
        if event == "serverShutdown":
            return Control.RECONNECT
        raise MalformedFrame(f"unexpected event type {event!r}", frame)

    def backfill_request(self, gap: Gap) -> HttpRequest:
        query = urlencode({"symbol": gap.symbol, "fromId": gap.first_id, "limit": BACKFILL_PAGE})
        return HttpRequest(f"{self.feed.rest_url.rstrip('/')}/api/v3/historicalTrades?{query}")

    def parse_backfill(self, gap: Gap, body: bytes, received_ns: int) -> tuple[list[Trade], Gap | None]:
        try:
            page = orjson.loads(body)
            rows = [
                Trade(
                    t["time"] * 1_000_000,
                    "binance",
                    gap.symbol,
                    t["id"],
                    float(t["price"]),
                    float(t["qty"]),
                    "sell" if t["isBuyerMaker"] else "buy",
                    received_ns,
                )
                for t in page
                if gap.last_id is None or t["id"] <= gap.last_id
            ]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise MalformedFrame(f"bad historicalTrades page: {exc!r}", body) from None
        if not page or len(page) < BACKFILL_PAGE:
            return rows, None  # nothing newer exists yet
        next_id = page[-1]["id"] + 1
        if gap.last_id is not None and next_id > gap.last_id:
            return rows, None
        return rows, Gap(gap.symbol, next_id, gap.last_id)


def _safe_loads(frame: bytes | str) -> object:
    try:
        return orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None


PROTOCOL = BinanceProtocol

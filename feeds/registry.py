"""The exchanges a feed's `exchange` key may name: each one's protocol and the options its [[feeds]] tables add.

A new exchange is its feeds/<exchange>.py module and one line here.
"""
from __future__ import annotations

from dataclasses import dataclass

from marketfeed.config.schema import ExchangeOptions
from marketfeed.feeds.base import FeedProtocol
from marketfeed.feeds.binance import BinanceOptions, BinanceProtocol
from marketfeed.feeds.coinbase import CoinbaseOptions, CoinbaseProtocol
from marketfeed.feeds.kraken import KrakenOptions, KrakenProtocol
from marketfeed.feeds.polygon import PolygonOptions, PolygonProtocol


@dataclass(frozen=True)
class Exchange:
    protocol: type[FeedProtocol]
    options: type[ExchangeOptions]


EXCHANGES: dict[str, Exchange] = {
    "binance": Exchange(BinanceProtocol, BinanceOptions),
    "kraken": Exchange(KrakenProtocol, KrakenOptions),
    "coinbase": Exchange(CoinbaseProtocol, CoinbaseOptions),
    "polygon": Exchange(PolygonProtocol, PolygonOptions),
}


class UnknownExchange(ValueError):
    pass


def exchange(name: str) -> Exchange:
    try:
        return EXCHANGES[name]
    except KeyError:
        raise UnknownExchange(f"unknown exchange {name!r} (one of {', '.join(EXCHANGES)})") from None

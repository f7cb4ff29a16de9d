"""The whole market, exchange side: listings from each exchange's documented listing answer, universe selection,
the config that asks for it, the documented connection limits, Binance's SUBSCRIBE path and Polygon's T.*."""
from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketfeed.config.loader import ConfigError, from_dict, load
from marketfeed.config.schema import FeedConfig
from marketfeed.feeds import registry
from marketfeed.feeds.base import ConnectionLimits, Control, MalformedFrame, ParsedRows, SubscriptionRejected
from marketfeed.feeds.binance import SUBSCRIBE_STREAMS, URL_STREAMS, BinanceProtocol
from marketfeed.feeds.kraken import KrakenProtocol, rest_pair
from marketfeed.feeds.polygon import PolygonOptions, PolygonProtocol
from marketfeed.feeds.rows import Trade
from marketfeed.feeds.universe import MAX_SYMBOL_LEN, Listing, UniverseError, UniverseSpec, select
from marketfeed.feeds.validation import OVERSIZED_STRING, UNKNOWN_SYMBOL, RowValidator, Subscribed
from tests import test_hostile_parsers as hostile

# GET /api/v3/exchangeInfo, the documented example's symbol (BNBBTC, general-endpoints) and more of its shape.
BINANCE_SYMBOL = {
    "symbol": "BNBBTC", "status": "TRADING", "baseAsset": "BNB", "baseAssetPrecision": 8, "quoteAsset": "BTC",
    "quotePrecision": 8, "quoteAssetPrecision": 8, "baseCommissionPrecision": 8, "quoteCommissionPrecision": 8,
    "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
    "icebergAllowed": True, "ocoAllowed": True, "quoteOrderQtyMarketAllowed": True, "allowTrailingStop": True,
    "cancelReplaceAllowed": True, "isSpotTradingAllowed": True, "isMarginTradingAllowed": True,
    "filters": [{"filterType": "PRICE_FILTER", "minPrice": "0.00000100", "maxPrice": "100000.00000000",
                 "tickSize": "0.00000100"}],
    "permissions": [], "permissionSets": [], "defaultSelfTradePreventionMode": "NONE",
    "allowedSelfTradePreventionModes": ["NONE"],
}
EXCHANGE_INFO = {
    "timezone": "UTC", "serverTime": 1565246363776,
    "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000}],
    "exchangeFilters": [],
    "symbols": [BINANCE_SYMBOL] + [{**BINANCE_SYMBOL, "symbol": base + quote, "baseAsset": base, "quoteAsset": quote,
                                    "status": status} for base, quote, status in (
        ("BTC", "USDT", "TRADING"), ("ETH", "USDT", "TRADING"), ("LUNA", "USDT", "BREAK"), ("BNB", "USDT", "HALT"),
        ("BTC", "EUR", "TRADING"), ("BTCUP", "USDT", "TRADING"))],
}
# GET /0/public/AssetPairs, the documented example (ETH/XBT, XBT/USD) and pairs of its shape: Dogecoin, a pair in
# cancel_only, a dark pool book and a pair with no wsname.
KRAKEN_PAIR = {
    "altname": "ETHXBT", "wsname": "ETH/XBT", "aclass_base": "currency", "base": "XETH", "aclass_quote": "currency",
    "quote": "XXBT", "cost_decimals": 6, "pair_decimals": 5, "lot_decimals": 8, "lot_multiplier": 1,
    "leverage_buy": [2, 3, 4, 5], "leverage_sell": [2, 3, 4, 5], "fees": [[0, 0.26], [50000, 0.24]],
    "fees_maker": [[0, 0.16], [50000, 0.14]], "fee_volume_currency": "ZUSD", "margin_call": 80, "margin_stop": 40,
    "ordermin": "0.002", "costmin": "0.00002", "tick_size": "0.00001", "status": "online",
    "long_position_limit": 1100, "short_position_limit": 400,
}
ASSET_PAIRS: dict[str, Any] = {"error": [], "result": {
    "XETHXXBT": KRAKEN_PAIR,
    "XXBTZUSD": {**KRAKEN_PAIR, "altname": "XBTUSD", "wsname": "XBT/USD", "base": "XXBT", "quote": "ZUSD"},
    "XDGUSD": {**KRAKEN_PAIR, "altname": "XDGUSD", "wsname": "XDG/USD", "base": "XXDG", "quote": "ZUSD"},
    "XETHZUSD": {**KRAKEN_PAIR, "altname": "ETHUSD", "wsname": "ETH/USD", "base": "XETH", "quote": "ZUSD",
                 "status": "cancel_only"},
    "XXBTZUSD.d": {**KRAKEN_PAIR, "altname": "XBTUSD.d", "wsname": "XBT/USD.d", "base": "XXBT", "quote": "ZUSD"},
    "SOLUSD": {k: v for k, v in KRAKEN_PAIR.items() if k != "wsname"} | {"altname": "SOLUSD"},
}}
# GET /products ("Get all known trading pairs"), the documented product and others of its shape.
COINBASE_PRODUCT = {
    "id": "BTC-USD", "base_currency": "BTC", "quote_currency": "USD", "quote_increment": "0.01000000",
    "base_increment": "0.00000001", "display_name": "BTC/USD", "min_market_funds": "1", "margin_enabled": False,
    "post_only": False, "limit_only": False, "cancel_only": False, "status": "online", "status_message": "",
    "trading_disabled": False, "fx_stablecoin": False, "max_slippage_percentage": "0.02000000",
    "auction_mode": False, "high_bid_limit_percentage": "",
}
PRODUCTS = [COINBASE_PRODUCT,
            {**COINBASE_PRODUCT, "id": "ETH-USD", "base_currency": "ETH", "display_name": "ETH/USD"},
            {**COINBASE_PRODUCT, "id": "ETH-EUR", "base_currency": "ETH", "quote_currency": "EUR"},
            {**COINBASE_PRODUCT, "id": "OLD-USD", "base_currency": "OLD", "status": "delisted"},
            {**COINBASE_PRODUCT, "id": "HALT-USD", "base_currency": "HALT", "trading_disabled": True}]
LISTING_PAGES = {"binance": EXCHANGE_INFO, "kraken": ASSET_PAIRS, "coinbase": PRODUCTS}


def feed(exchange="binance", symbols=("*",), **keys) -> FeedConfig:
    return FeedConfig("f", exchange, "wss://x", tuple(symbols), rest_url="https://api.x", **keys)


def listed(exchange: str) -> list[Listing]:
    return hostile.protocol(exchange).parse_listing(orjson.dumps(LISTING_PAGES[exchange]))


# --- the documented listings

def test_binance_lists_exchange_info_symbols_trading_when_their_status_is_trading():
    assert listed("binance") == [
        Listing("BNBBTC", "BNB", "BTC", True), Listing("BTCUSDT", "BTC", "USDT", True),
        Listing("ETHUSDT", "ETH", "USDT", True), Listing("LUNAUSDT", "LUNA", "USDT", False),
        Listing("BNBUSDT", "BNB", "USDT", False), Listing("BTCEUR", "BTC", "EUR", True),
        Listing("BTCUPUSDT", "BTCUP", "USDT", True)]


def test_kraken_lists_websocket_pairs_in_v2_naming_whose_rest_names_are_the_altnames():
    pairs = listed("kraken")
    assert pairs == [Listing("ETH/BTC", "ETH", "BTC", True), Listing("BTC/USD", "BTC", "USD", True),
                     Listing("DOGE/USD", "DOGE", "USD", True), Listing("ETH/USD", "ETH", "USD", False)]
    altnames = {pair["wsname"].replace("XBT", "BTC").replace("XDG", "DOGE"): pair["altname"]
                for pair in ASSET_PAIRS["result"].values() if "wsname" in pair}
    assert all(rest_pair(p.symbol) == altnames[p.symbol] for p in pairs)  # backfill asks REST for the same pair


def test_a_kraken_error_answer_is_malformed():
    with pytest.raises(MalformedFrame, match="EGeneral:Invalid arguments"):
        hostile.protocol("kraken").parse_listing(b'{"error":["EGeneral:Invalid arguments"],"result":{}}')


def test_coinbase_lists_products_trading_when_online_and_not_disabled():
    assert listed("coinbase") == [
        Listing("BTC-USD", "BTC", "USD", True), Listing("ETH-USD", "ETH", "USD", True),
        Listing("ETH-EUR", "ETH", "EUR", True), Listing("OLD-USD", "OLD", "USD", False),
        Listing("HALT-USD", "HALT", "USD", False)]


def test_listing_requests_are_the_exchanges_own_endpoints_and_binance_weighs_exchange_info():
    requests = {e: hostile.protocol(e).listing_request() for e in registry.EXCHANGES}
    urls = {e: request.url if request else None for e, request in requests.items()}
    assert urls == {"binance": "http://127.0.0.1:1/api/v3/exchangeInfo?showPermissionSets=false",
                    "kraken": "http://127.0.0.1:1/0/public/AssetPairs", "coinbase": "http://127.0.0.1:1/products",
                    "polygon": None}  # Polygon's whole market is the T.* wildcard
    binance_listing = requests["binance"]
    assert binance_listing is not None and hostile.protocol("binance").request_weight(binance_listing) == 20
    with pytest.raises(MalformedFrame):
        hostile.protocol("polygon").parse_listing(b"[]")


# --- hostile listing answers: nothing but MalformedFrame escapes, and what parses is well-typed

def listing_survives(exchange: str, body: bytes) -> list[Listing] | None:
    try:
        listings = hostile.protocol(exchange).parse_listing(body)
    except MalformedFrame:
        return None
    assert isinstance(listings, list)
    assert {(type(item), type(item.symbol), type(item.base), type(item.quote), type(item.trading))
            for item in listings} <= {(Listing, str, str, str, bool)}
    assert all(0 < len(item.symbol) <= MAX_SYMBOL_LEN and item.base and item.quote for item in listings)
    return listings


@st.composite
def mutated_listings(draw, exchange: str) -> bytes:
    """A documented listing with 1-4 values, types or shapes changed (as tests/test_hostile_parsers.py does to
    REST pages)."""
    doc = orjson.loads(orjson.dumps(LISTING_PAGES[exchange]))
    places = list(dict.fromkeys(hostile.schema(doc)))
    for _ in range(draw(st.integers(1, 4))):
        where = hostile.resolve(doc, draw(st.sampled_from(places)), draw(st.booleans()), draw(st.integers(0, 99)))
        op = draw(st.sampled_from(["hostile", "hostile", "json", "drop", *hostile.RESHAPES]))
        new = (draw(hostile.json_values) if op == "json" else
               draw(st.sampled_from(hostile.hostile(hostile.at_position(doc, where[0])))) if op == "hostile" else None)
        doc = orjson.loads(orjson.dumps(hostile.mutated(doc, where, op, new)))
    return orjson.dumps(doc)


@pytest.mark.parametrize("exchange", sorted(LISTING_PAGES))
@hostile.BOUNDED
@given(data=st.data())
def test_mutated_documented_listings_never_escape(exchange, data):
    listing_survives(exchange, data.draw(mutated_listings(exchange)))


@pytest.mark.parametrize("exchange", sorted(registry.EXCHANGES))
@hostile.BOUNDED
@given(value=hostile.json_values, raw=st.binary(max_size=200))
def test_arbitrary_listing_answers_never_escape(exchange, value, raw):
    for body in (orjson.dumps(value), raw):
        if hostile.protocol(exchange).listing_request() is None:
            with pytest.raises(MalformedFrame):
                hostile.protocol(exchange).parse_listing(body)
        else:
            listing_survives(exchange, body)


@pytest.mark.parametrize("exchange", sorted(LISTING_PAGES))
def test_every_single_change_of_a_documented_listing_is_survived(exchange):
    page = LISTING_PAGES[exchange]
    for at in dict.fromkeys(hostile.schema(page)):
        for every in (False, True):
            where = hostile.resolve(page, at, every, -1)
            changes = [("hostile", v) for v in hostile.hostile(hostile.at_position(page, where[0]))]
            for op, new in [*changes, ("drop", None), *((reshape, None) for reshape in hostile.RESHAPES)]:
                doc = hostile.mutated(orjson.loads(orjson.dumps(page)), where, op, new)
                listing_survives(exchange, orjson.dumps(doc))


# The last: BTC in full-width letters.
@pytest.mark.parametrize("symbol", ["", "A" * (MAX_SYMBOL_LEN + 1), "BTC USDT", "BTC\nUSDT", "\uff22\uff34\uff23"])
def test_a_listed_name_no_exchange_would_list_makes_the_answer_malformed(symbol):
    body = orjson.dumps({**EXCHANGE_INFO, "symbols": [{**BINANCE_SYMBOL, "symbol": symbol}]})
    with pytest.raises(MalformedFrame):
        hostile.protocol("binance").parse_listing(body)


# --- selection

def test_a_plain_symbol_list_is_no_universe():
    assert UniverseSpec.of(feed(symbols=("BTCUSDT", "ETHUSDT"))) is None
    spec = UniverseSpec.of(feed(symbols=("*USDT", "BTCEUR"), quote_assets=("usdt",), exclude_symbols=("*UP*",),
                                trading_only=False))
    assert spec == UniverseSpec(("*USDT", "BTCEUR"), ("USDT",), ("*UP*",), False)


@pytest.mark.parametrize(("keys", "expected"), [
    ({}, ("BNBBTC", "BTCEUR", "BTCUPUSDT", "BTCUSDT", "ETHUSDT")),  # trading only by default
    ({"trading_only": False}, ("BNBBTC", "BNBUSDT", "BTCEUR", "BTCUPUSDT", "BTCUSDT", "ETHUSDT", "LUNAUSDT")),
    ({"quote_assets": ("USDT",)}, ("BTCUPUSDT", "BTCUSDT", "ETHUSDT")),
    ({"quote_assets": ("usdt", "EUR"), "exclude_symbols": ("*up*",)}, ("BTCEUR", "BTCUSDT", "ETHUSDT")),
    ({"symbols": ("BTC*",)}, ("BTCEUR", "BTCUPUSDT", "BTCUSDT")),
    ({"symbols": ("btc*", "ETHUSDT"), "exclude_symbols": ("BTCUP*",)}, ("BTCEUR", "BTCUSDT", "ETHUSDT")),
    ({"symbols": ("*USDT", "BNBBTC"), "quote_assets": ("USDT",)}, ("BTCUPUSDT", "BTCUSDT", "ETHUSDT")),  # narrowed
    ({"symbols": ("?NBBTC", "[EL]*USDT")}, ("BNBBTC", "ETHUSDT")),
])
def test_patterns_select_and_the_filters_narrow_every_entry_alike(keys, expected):
    spec = UniverseSpec.of(feed(**{"symbols": ("*",), **keys}))
    assert spec is not None
    assert select(spec, listed("binance")) == expected


def test_selection_is_sorted_in_the_exchanges_spelling_once_per_symbol():
    listings = [Listing("ETH/USD", "ETH", "USD", True), Listing("BTC/USD", "BTC", "USD", True),
                Listing("BTC/USD", "BTC", "USD", True)]
    assert select(UniverseSpec(("*/usd",)), listings) == ("BTC/USD", "ETH/USD")


def test_nothing_matching_is_an_error_naming_the_key_and_the_filters():
    spec = UniverseSpec(("DOGE*",), ("USDT",), ("*UP*",))
    with pytest.raises(UniverseError) as error:
        select(spec, listed("binance"))
    assert str(error.value) == ("no listing matches ['DOGE*'] (feeds.symbols, narrowed by quote_assets ['USDT'], "
                                "exclude_symbols ['*UP*'], trading_only); the exchange lists 7 symbols")
    with pytest.raises(UniverseError, match="the exchange lists 0 symbols"):
        select(UniverseSpec(("*",)), [])


def test_an_unknown_quote_asset_is_an_error_listing_the_known_ones():
    with pytest.raises(UniverseError) as error:
        select(UniverseSpec(("*",), ("USDT", "USDX")), listed("binance"))
    assert str(error.value) == "unknown quote asset 'USDX' (feeds.quote_assets); known: BTC, EUR, USDT"
    many = [Listing(f"A{q}", "A", f"Q{q:02}", True) for q in range(40)]
    with pytest.raises(UniverseError, match=r"known: Q00, Q01, .*, Q29, … \(40 in all\)$"):
        select(UniverseSpec(("*",), ("USDX",)), many)


# --- the documented connection limits

def test_each_exchange_states_its_documented_connection_limits():
    limits = {name: entry.protocol.connection_limits for name, entry in registry.EXCHANGES.items()}
    assert limits == {
        "binance": ConnectionLimits(max_streams=1024, max_client_messages_per_s=5, max_connects=300,
                                    connect_window_s=300.0),
        "kraken": ConnectionLimits(max_connects=150, connect_window_s=600.0),
        "coinbase": ConnectionLimits(max_client_messages_per_s=100, max_connects=8, connect_window_s=1.0),
        "polygon": ConnectionLimits(max_connections=1),
    }


def test_a_symbol_costs_one_stream_per_channel():
    assert BinanceProtocol(feed(channels=("trade", "kline_1m", "aggTrade"))).streams_per_symbol() == 3
    assert KrakenProtocol(feed("kraken", channels=("trade", "ohlc-1", "ohlc-5"))).streams_per_symbol() == 3
    assert hostile.protocol("coinbase").streams_per_symbol() == 2  # matches and heartbeat
    assert hostile.protocol("polygon").streams_per_symbol() == 1


# --- Binance: the URL names few streams; more are subscribed by message

def binance(count: int, channels=("trade",)) -> BinanceProtocol:
    return BinanceProtocol(feed(symbols=tuple(f"S{i:04}USDT" for i in range(count)), channels=channels))


def test_a_connection_of_few_streams_names_them_in_its_url_and_sends_nothing():
    p = binance(50, ("trade", "kline_1m"))
    assert p.url("wss://x:9443/") == "wss://x:9443/stream?streams=" + "/".join(
        f"s{i:04}usdt@{ch}" for i in range(50) for ch in ("trade", "kline_1m"))
    assert p.subscribe_messages() == []


def test_a_connection_of_many_streams_opens_bare_and_subscribes_in_bounded_messages():
    p = binance(512, ("trade", "kline_1m"))  # 1024 streams, the documented most of one connection
    assert p.url("wss://x:9443") == "wss://x:9443/stream"
    messages = [orjson.loads(m) for m in p.subscribe_messages()]
    assert [m["id"] for m in messages] == [1, 2, 3, 4, 5, 6]
    assert {m["method"] for m in messages} == {"SUBSCRIBE"}
    assert max(len(m["params"]) for m in messages) == SUBSCRIBE_STREAMS
    assert [s for m in messages for s in m["params"]] == [f"s{i:04}usdt@{ch}" for i in range(512)
                                                          for ch in ("trade", "kline_1m")]
    assert max(map(len, p.subscribe_messages())) < 8000  # a SUBSCRIBE of ~8 KB was seen to fail
    assert len(binance(URL_STREAMS + 1).subscribe_messages()) == 1


def test_subscribe_answers_are_subscribed_and_errors_refuse_the_subscription():
    p = binance(URL_STREAMS + 1)
    assert p.parse(b'{"result":null,"id":1}', 0, ParsedRows()) is Control.SUBSCRIBED
    for error, reason in (({"code": 2, "msg": "Invalid request: too many parameters"}, "too many parameters"),
                          ({"code": 3, "msg": "Invalid JSON: expected value at line 1"}, "Invalid JSON"),  # no id
                          ({"code": 2, "msg": "Invalid request: invalid stream", "id": 2}, "invalid stream")):
        with pytest.raises(SubscriptionRejected, match=reason):
            p.parse(orjson.dumps(error), 0, ParsedRows())


# --- Polygon: "*" is T.*, every trade of the cluster; the threshold picks the rows

def polygon(symbols=("*",), min_trade_value=0.0) -> PolygonProtocol:
    return PolygonProtocol(FeedConfig("p", "polygon", "wss://socket.polygon.io/options", tuple(symbols),
                                      rest_url="https://api.polygon.io",
                                      options=PolygonOptions(api_key="k" * 8, min_trade_value=min_trade_value)))


def option_trade(symbol: str, price: float, size: int, t: int = 1_700_000_000_000) -> dict:
    return {"ev": "T", "sym": symbol, "x": 65, "p": price, "s": size, "c": [233], "t": t, "q": 6311}


def test_star_subscribes_t_star_and_keeps_the_trades_of_any_contract_worth_the_threshold():
    p = polygon(min_trade_value=100_000)
    assert orjson.loads(p.subscribe_messages()[1]) == {"action": "subscribe", "params": "T.*"}
    assert p.any_symbol() and p.url("wss://socket.polygon.io/options") == "wss://socket.polygon.io/options"
    trades = [option_trade("O:SPY251219C00650000", 12.5, 80),  # 12.5 × 80 × 100 = 100 000: kept
              option_trade("O:AAPL250117P00150000", 0.5, 10),  # 500: dropped
              option_trade("O:TSLA260116C00300000", 50.0, 25)]  # 125 000: kept
    out = ParsedRows()
    assert p.parse(orjson.dumps(trades), 7, out) is None
    assert [(t.symbol, t.price, t.amount) for t in out.trades] == [("O:SPY251219C00650000", 12.5, 80.0),
                                                                     ("O:TSLA260116C00300000", 50.0, 25.0)]
    validator = RowValidator(p.feed.symbols, 60.0, 64, Subscribed.of(p))
    valid, rejected = validator.split(out.trades, 1_700_000_000_000_000_000)
    assert valid == out.trades and rejected == []  # rows of any contract are the feed's own


def test_the_wildcard_accepts_any_symbol_but_still_refuses_an_oversized_one():
    p = polygon()
    row = (1_700_000_000_000_000_000, "polygon", "O:SPY251219C00650000", 1, 1.5, 2.0, "unknown", 0)
    good, long = Trade(*row), Trade(*row)._replace(symbol="O:" + "X" * 80)
    wildcard = RowValidator(p.feed.symbols, 60.0, 64, Subscribed.of(p))
    assert wildcard.split([good, long], row[0]) == ([good], [(long, OVERSIZED_STRING)])
    listed_only = RowValidator(("AAPL",), 60.0, 64, Subscribed.of(polygon(("AAPL",))))
    assert listed_only.split([good], row[0]) == ([], [(good, UNKNOWN_SYMBOL)])


def test_the_wildcard_has_no_outage_or_history_backfill():
    p = polygon()
    assert p.outage_gaps(("*",), 1_000_000_000, 2_000_000_000) == []
    assert p.history_gaps(("*",), 1_000_000_000, 2_000_000_000) == []
    assert polygon(("AAPL",)).outage_gaps(("AAPL",), 1_000_000_000, 2_000_000_000)  # a listed symbol still has


# --- the config that asks for a universe

def config(**keys) -> FeedConfig:
    table = {"name": "f", "exchange": "binance", "url": "wss://x", "rest_url": "https://api.x", "symbols": ["*"],
             **keys}
    return from_dict({"feeds": [table]}).feeds[0]


def problems(**keys) -> list[str]:
    with pytest.raises(ConfigError) as error:
        config(**keys)
    return error.value.problems


def test_a_universe_feed_and_its_defaults():
    f = config(symbols=["*USDT"], quote_assets=["USDT"], exclude_symbols=["*UP*"], universe_refresh_s=0)
    assert (f.quote_assets, f.exclude_symbols, f.trading_only, f.universe_refresh_s) == (("USDT",), ("*UP*",), True, 0)
    assert (config().universe_refresh_s, config().max_streams_per_connection) == (3600.0, 0)
    assert config(exchange="kraken", symbols=["*/USD"]).symbols == ("*/USD",)
    assert config(symbols=["BTCUSDT"], max_streams_per_connection=200).max_streams_per_connection == 200


@pytest.mark.parametrize("key, value", [("quote_assets", ["USDT"]), ("exclude_symbols", ["X*"]),
                                        ("trading_only", False), ("universe_refresh_s", 60)])
def test_universe_keys_without_a_pattern_are_refused_by_name(key, value):
    assert problems(symbols=["BTCUSDT"], **{key: value}) == [
        (f"<dict>: feeds (f).{key}: narrows a universe, which only a pattern in symbols selects "
        '(e.g. symbols = ["*"] or ["*USDT"])')]


def test_polygon_takes_star_alone_as_its_wildcard_and_no_other_pattern():
    polygon_feed = {"exchange": "polygon", "url": "wss://socket.polygon.io/options", "api_key": "k" * 8}
    assert config(**polygon_feed).symbols == ("*",)
    assert problems(**polygon_feed, symbols=["O:SPY*"]) == [
        ("<dict>: feeds (f).symbols: 'O:SPY*': polygon publishes no listing to match patterns against; "
        "'*' alone subscribes to every symbol")]
    assert problems(**polygon_feed, quote_assets=["USD"]) == [
        "<dict>: feeds (f).quote_assets: '*' is polygon's own wildcard (every symbol), with no listing to narrow"]
    assert problems(**{**polygon_feed, "url": "wss://socket.polygon.io"}) == [
        ("<dict>: feeds (f).url: '*' subscribes every trade of one cluster: name it in the url "
        "(wss://socket.polygon.io/stocks or /options)")]


def test_limits_and_refresh_out_of_bounds_are_refused_by_name():
    assert problems(max_streams_per_connection=2000) == [
        ("<dict>: feeds (f).max_streams_per_connection: 2000 is above binance's documented limit of 1024 streams per "
        "connection (0: that limit; a value may only lower it)")]
    assert problems(max_streams_per_connection=1, channels=["trade", "kline_1m"]) == [
        "<dict>: feeds (f).max_streams_per_connection: 1 is below the 2 streams one symbol takes (one per channel)"]
    assert problems(universe_refresh_s=30) == [
        "<dict>: feeds (f).universe_refresh_s: 30.0 is below the minimum 60 (0: never read again)"]
    assert problems(rest_url="") == [
        "<dict>: feeds (f).rest_url: required with a pattern in symbols: binance's listing is read from its REST API"]


def test_a_universe_key_set_by_a_variable_is_named_by_the_variable(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[[feeds]]\nname = "b"\nexchange = "binance"\nurl = "wss://x"\nsymbols = ["BTCUSDT"]\n')
    path.chmod(0o600)
    with pytest.raises(ConfigError) as error:
        load(path, env={"MARKETFEED_FEEDS__B__QUOTE_ASSETS": '["USDT"]'})
    assert error.value.problems == [("$MARKETFEED_FEEDS__B__QUOTE_ASSETS: feeds (b).quote_assets: narrows a universe, "
                                    'which only a pattern in symbols selects (e.g. symbols = ["*"] or ["*USDT"])')]

"""Every exchange parser against hostile input: arbitrary bytes and JSON never escape as anything but
MalformedFrame (a counted reject), and frames the simulator's twin renders give exactly its trades.

Exchanges come from the registry: every exchange of feeds/registry.py is covered, so a parser added
later is tested without touching this file. Bounded: few hundred examples, no deadline flakiness.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import inspect
import math
from urllib.parse import urlsplit

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketfeed.config.schema import FeedConfig
from marketfeed.feeds import registry
from marketfeed.feeds.base import Control, FeedProtocol, Gap, MalformedFrame, ParsedRows, SubscriptionRejected
from marketfeed.feeds.rows import Candle, Trade
from marketfeed.feeds.validation import INT64_MAX, MIN_TS_NS, RowValidator
from marketfeed.sim.market import ExchangeMarket, fixed
from marketfeed.sim.market import Trade as SimTrade
from marketfeed.sim.twin import twin_class

EXCHANGES = sorted(registry.EXCHANGES)
SYMBOL = {"binance": "BTCUSDT", "coinbase": "BTC-USD", "kraken": "BTC/USD", "polygon": "AAPL"}  # the exchange's naming
API_KEY = "test-key"
RECEIVED_NS = 1_700_000_000_123_456_789
ESCAPES = (MalformedFrame, SubscriptionRejected)  # a refused subscription is the protocol's own signal
BOUNDED = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**63, max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def feed_config(exchange: str) -> FeedConfig:
    options = registry.exchange(exchange).options
    keyed = {"api_key": API_KEY} if "api_key" in {f.name for f in dataclasses.fields(options)} else {}
    return FeedConfig(name=f"{exchange}-test", exchange=exchange, url="ws://127.0.0.1:1", rest_url="http://127.0.0.1:1",
                      symbols=(SYMBOL.get(exchange, "BTCUSDT"),), options=options(**keyed))


@functools.cache
def protocol(exchange: str) -> FeedProtocol:
    return registry.exchange(exchange).protocol(feed_config(exchange))


def parse_survives(proto: FeedProtocol, frame: bytes | str) -> ParsedRows:
    """Parse one frame: only the allowed exceptions escape, and every row out passes or fails validation
    without raising, valid ones being well-typed (the validator is the second line of defence)."""
    out = ParsedRows()
    try:
        control = proto.open_session().parse(frame, RECEIVED_NS, out)
    except ESCAPES:
        return out
    assert control is None or isinstance(control, Control)
    validator = RowValidator(proto.feed.symbols, 60.0, 64)
    rows: list[Trade | Candle] = [*out.trades, *out.candles, *out.live_candles]  # validated row by row
    valid, _ = validator.split(rows, RECEIVED_NS)
    for row in valid:
        assert type(row.ts_ns) is int and MIN_TS_NS <= row.ts_ns
        assert all(math.isfinite(v) and v >= 0 for v in row if isinstance(v, float))
    return out


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_every_exchange_module_is_discovered(exchange):
    assert issubclass(registry.exchange(exchange).protocol, FeedProtocol)
    assert {"binance", "coinbase"} <= set(EXCHANGES)


@pytest.mark.parametrize("exchange", EXCHANGES)
@BOUNDED
@given(frame=st.binary(max_size=300))
def test_arbitrary_bytes_never_escape(exchange, frame):
    parse_survives(protocol(exchange), frame)


@pytest.mark.parametrize("exchange", EXCHANGES)
@BOUNDED
@given(value=json_values)
def test_arbitrary_json_never_escapes(exchange, value):
    proto = protocol(exchange)
    parse_survives(proto, orjson.dumps(value))
    parse_survives(proto, orjson.dumps(value).decode())


# --- frames the twin renders: a valid one gives exactly its trade; any field replaced by junk is survived

@functools.cache
def twin_frames(exchange: str):
    """(twin, session) set up the way the feed connects: its URL path, then its subscribe messages."""
    twin_module = importlib.import_module(f"marketfeed.sim.{exchange}")
    market = ExchangeMarket(exchange, [SYMBOL.get(exchange, "BTCUSDT")], seed=1, rate=1, start_ms=1_700_000_000_000,
                            id_block=twin_module.TWIN.id_block)
    twin_type = twin_class(exchange)
    # A twin that checks keys (Polygon's) is given the one the feed sends; the others take the market only.
    keys = {"api_key": API_KEY} if "api_key" in inspect.signature(twin_type).parameters else {}
    twin = twin_type(market, **keys)
    proto = protocol(exchange)
    url = urlsplit(proto.url("ws://127.0.0.1:1"))
    session = twin.open_session(url.path + (f"?{url.query}" if url.query else ""))
    for message in proto.subscribe_messages():
        twin.on_message(session, message)
    return proto, twin, session


def wire_frames(twin, session, trade: SimTrade) -> list[bytes]:
    frames = twin.connection_frames(trade, session, twin.trade_frame(trade, session.style))
    return [twin.batch_frame(frames)] if twin.batches_trades else frames


sim_trades = st.builds(
    SimTrade,
    symbol=st.just(""),  # set per exchange
    index=st.integers(0, 10**6),
    trade_id=st.integers(1, 2**53),
    price=st.integers(1, 10**16).map(fixed),  # the twin's decimal strings, 8 places
    qty=st.integers(1, 10**13).map(fixed),
    time_ms=st.integers(MIN_TS_NS // 10**6, 4_000_000_000_000),
    buyer_is_maker=st.booleans(),
)
TWINNED = [e for e in EXCHANGES if importlib.util.find_spec(f"sim.{e}") is not None]
# Polygon trades carry no aggressor side and whole-share sizes: its rows are not the twin's trade 1:1
# (tests/test_polygon*.py check them); every other exchange's must be.
ONE_TO_ONE = [e for e in TWINNED if e != "polygon"]


@pytest.mark.parametrize("exchange", ONE_TO_ONE)
@BOUNDED
@given(trade=sim_trades)
def test_valid_frames_give_exactly_the_trade(exchange, trade):
    proto, twin, session = twin_frames(exchange)
    trade = dataclasses.replace(trade, symbol=SYMBOL.get(exchange, "BTCUSDT"))
    out = ParsedRows()
    for frame in wire_frames(twin, session, trade):
        proto.open_session().parse(frame, RECEIVED_NS, out)
    assert len(out.trades) == 1, out.trades
    (row,) = out.trades
    assert row == Trade(trade.time_ms * 1_000_000, exchange, trade.symbol, row.trade_id, float(trade.price),
                        float(trade.qty), "sell" if trade.buyer_is_maker else "buy", RECEIVED_NS)
    assert row.trade_id == trade.trade_id or not proto.contiguous_ids  # ids that reveal gaps must be exact
    assert 0 <= row.trade_id <= INT64_MAX


@pytest.mark.parametrize("exchange", TWINNED)
@BOUNDED
@given(path=st.lists(st.integers(0, 7), min_size=1, max_size=3), junk=json_values)
def test_a_valid_frame_with_any_field_replaced_is_survived(exchange, path, junk):
    proto, twin, session = twin_frames(exchange)
    sample = SimTrade(SYMBOL.get(exchange, "BTCUSDT"), 0, 1_000_001, "100.50000000", "0.25000000",
                      1_700_000_000_000, False)
    for frame in wire_frames(twin, session, sample):
        message = orjson.loads(frame)
        node = message
        for step in path:  # walk to a container and replace one of its values with junk
            keys = list(node) if isinstance(node, dict) else list(range(len(node))) if isinstance(node, list) else []
            if not keys:
                break
            key = keys[step % len(keys)]
            if step == path[-1] or not isinstance(node[key], (dict, list)):
                node[key] = junk
                break
            node = node[key]
        parse_survives(proto, orjson.dumps(message))


@pytest.mark.parametrize("exchange", EXCHANGES)
@BOUNDED
@given(value=json_values | st.lists(st.lists(json_values, max_size=8), max_size=3))
def test_arbitrary_rest_pages_never_escape(exchange, value):
    proto = protocol(exchange)
    symbol = proto.feed.symbols[0]
    for gap in (Gap(symbol, 1, 10), Gap(symbol, since_ns=MIN_TS_NS, until_ns=MIN_TS_NS + 10**9)):
        try:
            proto.parse_backfill(gap, orjson.dumps(value), RECEIVED_NS)
        except MalformedFrame:
            pass


@pytest.mark.parametrize("field", ["T", "p", "s"])
def test_a_long_string_where_binance_sends_a_number_is_malformed_not_a_memory_bomb(field):
    event = {"e": "trade", "E": 1, "s": "BTCUSDT", "t": 1, "p": "1.0", "q": "1.0", "T": 1_700_000_000_000, "m": True}
    event[field] = "9" * 5000  # times 1_000_000 would be 5 GB
    out = parse_survives(protocol("binance"), orjson.dumps({"stream": "btcusdt@trade", "data": event}))
    valid, _ = RowValidator(["BTCUSDT"], 60.0, 64).split(out.trades, RECEIVED_NS)
    assert valid == []

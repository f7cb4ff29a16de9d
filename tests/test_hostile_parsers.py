"""Every exchange parser against hostile input: arbitrary bytes and JSON never escape as anything but
MalformedFrame (a counted reject), and frames the simulator's twin renders give exactly its trades.
REST pages (parse_backfill) likewise: the documented pages of each exchange, changed one value, type or
shape at a time (every change, swept) and several at a time (hypothesis), and arbitrary JSON.

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
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketfeed.config.schema import FeedConfig
from marketfeed.feeds import registry
from marketfeed.feeds.base import (
    BeyondRetention,
    Control,
    FeedProtocol,
    Gap,
    MalformedFrame,
    ParsedRows,
    SubscriptionRejected,
)
from marketfeed.feeds.rows import Candle, Trade
from marketfeed.feeds.validation import INT64_MAX, MIN_TS_NS, SIDES, RowValidator
from marketfeed.sim.market import ExchangeMarket, fixed
from marketfeed.sim.market import Trade as SimTrade
from marketfeed.sim.twin import twin_class
from marketfeed.storage.tables import CANDLES
from tests import test_binance_parser as binance_parser
from tests import test_coinbase_parser as coinbase_parser
from tests import test_kraken_parser as kraken_parser

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


@pytest.mark.parametrize("field", ["T", "p", "s"])
def test_a_long_string_where_binance_sends_a_number_is_malformed_not_a_memory_bomb(field):
    event = {"e": "trade", "E": 1, "s": "BTCUSDT", "t": 1, "p": "1.0", "q": "1.0", "T": 1_700_000_000_000, "m": True}
    event[field] = "9" * 5000  # times 1_000_000 would be 5 GB
    out = parse_survives(protocol("binance"), orjson.dumps({"stream": "btcusdt@trade", "data": event}))
    valid, _ = RowValidator(["BTCUSDT"], 60.0, 64).split(out.trades, RECEIVED_NS)
    assert valid == []


# --- REST pages: parse_backfill meets the stream parsers' contract. Rows and the next gap, or MalformedFrame
# (counted by the backfiller's caller), or BeyondRetention (Kraken's OHLC); never another exception, never a
# row of the wrong type, never a next gap that asks the same page again (a hostile server would spin it forever).

S = 10**9
BINANCE_TRADE = {"id": 28457, "price": "4.00000100", "qty": "12.00000000", "quoteQty": "48.000012",
                 "time": 1499865549590, "isBuyerMaker": True, "isBestMatch": True}  # historicalTrades' example
BINANCE_AGG = {k: v for k, v in binance_parser.AGG.items() if k not in ("e", "E", "s")}  # aggTrades' example
POLYGON_RESULT = {"conditions": [12], "exchange": 4, "id": "12345", "participant_timestamp": 1536036818784_000_000 - 1,
                  "price": 114.125, "sequence_number": 3681328, "sip_timestamp": 1536036818784_123_456, "size": 100,
                  "tape": 3, "trf_id": 202, "trf_timestamp": 1536036818784_100_000}  # v3 trades' example result


KRAKEN_RESULT: Any = kraken_parser.REST_PAGE["result"]  # JSON: its values are of any type


def kraken_page(entries: list) -> dict:
    return {"error": [], "result": {"XXBTZUSD": entries, "last": KRAKEN_RESULT["last"]}}


def full(entry, step) -> list:
    """A full page (1000 entries, every exchange's trades limit) from one documented entry: `step(entry, i)`."""
    return [step(entry, i) for i in range(1000)]


# Per exchange: (gap, documented page) pairs covering every kind of gap its parse_backfill pages.
REST_PAGES: dict[str, list[tuple[Gap, object]]] = {
    "binance": [
        (Gap("BTCUSDT", 28457, 28460), [BINANCE_TRADE, {**BINANCE_TRADE, "id": 28458}]),
        (Gap("BTCUSDT", 28457), full(BINANCE_TRADE, lambda t, i: {**t, "id": t["id"] + i, "time": t["time"] + i})),
        (Gap("BTCUSDT", 26129, stream="BTCUSDT@aggTrade"),
         full(BINANCE_AGG, lambda t, i: {**t, "a": t["a"] + i, "f": t["f"] + i, "l": t["l"] + i})),
        (Gap("BTCUSDT", since_ns=1672515782 * S, until_ns=1672519382 * S, stream="BTCUSDT"), [BINANCE_AGG]),
        (Gap("BTCUSDT", since_ns=1672515720 * S, until_ns=1672515902 * S, stream="BTCUSDT@kline_1m", table=CANDLES),
         [binance_parser.rest_kline(1672515720000 + i * 60_000, 60_000, "2.0") for i in range(4)]),
        (Gap("BTCUSDT", since_ns=1672515720 * S, until_ns=1672615902 * S, stream="BTCUSDT@kline_1m", table=CANDLES),
         [binance_parser.rest_kline(1672515720000 + i * 60_000, 60_000, "2.0") for i in range(1000)]),
    ],
    "kraken": [
        (Gap("BTC/USD", 61044953, 61044956), kraken_parser.REST_PAGE),
        (Gap("BTC/USD", 61044953, since_ns=1688669597 * S),
         kraken_page(full(KRAKEN_RESULT["XXBTZUSD"][0],
                          lambda t, i: [*t[:2], t[2] + i, *t[3:6], t[6] + i]))),
        (Gap("BTC/USD", since_ns=1688671200 * S, until_ns=1688672000 * S, stream="BTC/USD@ohlc-1", table=CANDLES),
         kraken_parser.OHLC_PAGE),
    ],
    "coinbase": [
        (Gap("BTC-USD", 95, 101), orjson.loads(coinbase_parser.rest_page(range(97, 103)))),
        (Gap("BTC-USD", 100, 2099), orjson.loads(coinbase_parser.rest_page(range(1100, 2100)))),
        (Gap("BTC-USD", since_ns=1584664000 * S, until_ns=1584666000 * S),
         orjson.loads(coinbase_parser.rest_page(range(1000, 2000)))),
    ],
    "polygon": [
        (Gap("AAPL", since_ns=1536036818 * S, until_ns=1536036819 * S),
         {"results": [POLYGON_RESULT, {**POLYGON_RESULT, "id": "12346"}], "status": "OK", "request_id": "a1",
          "next_url": "https://api.polygon.io/v3/trades/AAPL?cursor=YWJj"}),
        (Gap("AAPL", since_ns=1536036818 * S, page="/v3/trades/AAPL?cursor=YWJj"),
         {"results": [{k: v for k, v in POLYGON_RESULT.items() if k not in ("id", "trf_id")}], "status": "OK"}),
    ],
}
# What hostile peers put where a value belongs, by what the documented value is: non-finite and out-of-range
# numbers (as JSON numbers and as the strings float() reads), ids beyond a LONG, broken dates, URLs that cannot
# be split, and the other types. Drawn from small pools, so that each field meets each of them often.
HOSTILE_NUMBERS = [1e308, -1e308, "1e999", 5e-324, -1, 2**64 - 1, True, None, []]
HOSTILE_STRINGS = ["", "1e999", "-1e999", "nan", "inf", "9" * 400, " 7", "١٢", "b", "buy", "2020-13-45T00:00:00Z",
                   "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "2020-03-20T00:36:59", "http://[::1",
                   "https://x:99999/v3", "/v3/trades/AAPL?cursor=YWJj", 7, 1e308, None, {}]
HOSTILE_OTHERS: list[Any] = [None, True, False, 0, 2**63, "", "x", [], {}, [[]], {"a": 1}]
ANY_ENTRY = None  # in a schema position: whichever entry of a list


def hostile(value: Any) -> list:
    """What may come instead of a documented value: its own type's extremes and the other types."""
    if type(value) in (int, float):
        return [*HOSTILE_NUMBERS, str(value), float(value)]
    if type(value) is str:
        return [*HOSTILE_STRINGS, value[:64] * 2, value[:-1]]
    return HOSTILE_OTHERS


def schema(node: object, at: tuple = ()):
    """Every position of a document's shape: () the root, then keys, and ANY_ENTRY for a list's entries (shaped
    as its first); each field of an entry is one position, however many entries the page has."""
    yield at
    if isinstance(node, dict):
        for key, child in node.items():
            yield from schema(child, (*at, key))
    elif isinstance(node, list) and node:
        yield from schema(node[0], (*at, ANY_ENTRY))


@functools.cache
def positions(exchange: str, case: int) -> list[tuple]:
    return list(dict.fromkeys(schema(REST_PAGES[exchange][case][1])))


def at_position(doc: Any, at: tuple) -> Any:
    return functools.reduce(lambda node, key: node[key], at, doc)


def resolve(doc: object, at: tuple, every: bool, index: int) -> list[tuple]:
    """A schema position made concrete in `doc`: for each ANY_ENTRY the entry at `index` (modulo its length),
    or every entry (a server that gets one field wrong gets it wrong in every entry); it stops where an earlier
    mutation left no such key or entry."""
    concrete: list[tuple] = [()]
    for key in at:
        nodes = [(c, at_position(doc, c)) for c in concrete]
        if key is ANY_ENTRY:
            step = [(*c, k) for c, node in nodes if isinstance(node, list) and node
                    for k in (range(len(node)) if every else (index % len(node),))]
        else:
            step = [(*c, key) for c, node in nodes if isinstance(node, dict) and key in node]
        if not step:
            break
        concrete = step
    return concrete


def repeated_to_a_full_page(value: object) -> object:
    """1000 entries of the list's own, over and over; a list of entries too large to make a page of stays."""
    if not isinstance(value, list) or not value or len(orjson.dumps(value)) // len(value) > 500:
        return value
    return (value * (1000 // len(value) + 1))[:1000]


def reversed_list(value: object) -> object:
    return value[::-1] if isinstance(value, list) else value


def wrapped(value: object) -> object:
    return [value]


RESHAPES = {"repeat": repeated_to_a_full_page, "reverse": reversed_list, "wrap": wrapped}


def mutate(doc: Any, at: tuple, op: str, new: object) -> Any:
    """`doc` with the value at `at` dropped, reshaped (RESHAPES) or replaced by `new`."""
    parent: Any = at_position(doc, at[:-1]) if at else None
    value = parent[at[-1]] if at else doc
    if op == "drop":
        if parent is not None:
            del parent[at[-1]]
        return doc
    replacement = RESHAPES[op](value) if op in RESHAPES else new
    if parent is None:
        return replacement
    parent[at[-1]] = replacement
    return doc


@st.composite
def mutated_pages(draw, exchange: str) -> tuple[Gap, bytes]:
    """A documented page with 1-4 of its values, types or structure changed: a value replaced by a hostile one
    or any JSON, a key or entry dropped, a value wrapped in a list, a list repeated to a full page of 1000
    (the same ids again) or reversed (the other paging order)."""
    case = draw(st.integers(0, len(REST_PAGES[exchange]) - 1))
    gap, page = REST_PAGES[exchange][case]
    doc = orjson.loads(orjson.dumps(page))  # a fresh copy
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.sampled_from(positions(exchange, case)))
        where = resolve(doc, at, draw(st.booleans()), draw(st.integers(0, 999)))
        op = draw(st.sampled_from(["hostile", "hostile", "hostile", "json", "drop", *RESHAPES]))
        new = None
        if op in ("hostile", "json"):
            new = draw(json_values if op == "json" else st.sampled_from(hostile(at_position(doc, where[0]))))
        doc = orjson.loads(orjson.dumps(mutated(doc, where, op, new)))  # a value placed twice is two values
    return gap, orjson.dumps(doc)


def mutated(doc: object, where: list[tuple], op: str, new: object) -> object:
    """One mutation at every position of `where` (values placed at several are the same object)."""
    if op == "repeat":
        where = where[:1]  # one list made a full page (1000 of every entry's would be a million values)
    for at in sorted(where, reverse=True):  # the last entry first: a drop leaves the others' indexes
        doc = mutate(doc, at, op, new)
    return doc


def single_mutations(exchange: str):
    """Every documented page of the exchange with one change: at each position of its shape (one entry, the
    last, or every entry), each hostile value, a drop and each reshape."""
    for case, (gap, page) in enumerate(REST_PAGES[exchange]):
        original = orjson.dumps(page)
        for at in positions(exchange, case):
            # Full pages (1000 entries) are here for their paging: their last entry changes; every entry's
            # change is the short pages' business (the same parser lines, at a thousandth of the cost).
            for every in (False, True) if ANY_ENTRY in at and len(original) < 20_000 else (False,):
                where = resolve(page, at, every, -1)
                changes = [("hostile", v) for v in hostile(at_position(page, where[0]))]
                for op, new in [*changes, ("drop", None), *((reshape, None) for reshape in RESHAPES)]:
                    yield gap, orjson.dumps(mutated(orjson.loads(original), where, op, new))


def advanced(gap: Gap, rest: Gap) -> bool:
    """The next request asks for something else: a later first id or start, an earlier last id (newest-first
    paging), a new cursor, or ids instead of a time window (Binance's first id, located by time)."""
    return (rest.first_id > gap.first_id or rest.since_ns > gap.since_ns
            or (rest.last_id is not None and (gap.last_id is None or rest.last_id < gap.last_id))
            or (rest.page != gap.page and rest.page != "") or (bool(gap.since_ns) and not rest.since_ns))


def backfill_survives(proto: FeedProtocol, gap: Gap, body: bytes) -> tuple[list, Gap | None] | None:
    """parse_backfill of one page under the contract (None: refused as malformed). Rows are of the gap's table
    and well-typed; those the validator lets through are finite; the next gap is typed, asks for a new page, and
    makes a request."""
    try:
        rows: list[Any]
        rows, rest = proto.parse_backfill(gap, body, RECEIVED_NS)
    except MalformedFrame:
        return None
    except BeyondRetention as exc:
        rows, rest = exc.rows, None
    assert isinstance(rows, list)
    row_type = Candle if gap.table is CANDLES else Trade
    types, floats = FIELD_TYPES[row_type]
    # Set comprehensions, not a loop of asserts: pages of 1000 rows, a few thousand pages a run.
    assert {(type(row), *map(type, row)) for row in rows} <= {(row_type, *types)}, rows
    assert {(row.symbol, row.received_ns) for row in rows} <= {(gap.symbol, RECEIVED_NS)}, rows
    if row_type is Trade:
        assert {row.side for row in rows} <= SIDES and {row.exchange for row in rows} <= set(proto.stored_labels())
    else:
        assert {row.closed for row in rows} <= {True}, rows
    valid, _ = RowValidator(proto.feed.symbols, 60.0, 64).split(rows, RECEIVED_NS)
    assert all(map(math.isfinite, (row[i] for row in valid for i in floats))), valid
    if rest is not None:
        assert (rest.symbol, rest.stream, rest.table) == (gap.symbol, gap.stream, gap.table)
        assert all(type(getattr(rest, f)) is int for f in ("first_id", "since_ns", "until_ns", "before_ns")), rest
        assert (rest.last_id is None or type(rest.last_id) is int) and type(rest.page) is str, rest
        assert advanced(gap, rest), (gap, rest)
        request = proto.backfill_request(rest)
        assert request is not None and isinstance(request.url, str)
    return rows, rest


# Each row type's field types, and where its floats are (which the validator must keep finite).
FIELD_TYPES = {Trade: ((int, str, str, int, float, float, str, int), (4, 5)),
               Candle: ((int, str, str, str, float, float, float, float, float, bool, int), (4, 5, 6, 7, 8))}


def test_rest_pages_cover_every_exchange_and_their_documented_pages_parse():
    assert set(REST_PAGES) == set(EXCHANGES)  # an exchange added to the registry needs its documented pages here
    for exchange, cases in REST_PAGES.items():
        for gap, page in cases:
            parsed = backfill_survives(protocol(exchange), gap, orjson.dumps(page))
            assert parsed is not None and (parsed[0] or parsed[1]), (exchange, gap)  # valid seeds of the mutations


@pytest.mark.parametrize("exchange", EXCHANGES)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_documented_rest_pages_never_escape(exchange, data):
    gap, body = data.draw(mutated_pages(exchange))
    backfill_survives(protocol(exchange), gap, body)


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_every_single_change_of_a_documented_rest_page_is_survived(exchange):
    """The sweep the property test samples from, one change at a time: an escape there is never left to chance."""
    for gap, body in single_mutations(exchange):
        backfill_survives(protocol(exchange), gap, body)


@pytest.mark.parametrize("exchange", EXCHANGES)
@BOUNDED
@given(value=json_values | st.lists(st.lists(json_values, max_size=8), max_size=3), data=st.data())
def test_arbitrary_rest_pages_never_escape(exchange, value, data):
    gap, _ = data.draw(st.sampled_from(REST_PAGES[exchange]))
    backfill_survives(protocol(exchange), gap, orjson.dumps(value))


@pytest.mark.parametrize(("exchange", "case", "change"), [
    ("kraken", 0, lambda p: p["result"]["XXBTZUSD"][1].__setitem__(2, 1e308)),  # its µs are infinite
    ("kraken", 0, lambda p: p["result"]["XXBTZUSD"][1].__setitem__(2, "1e999")),  # a string: float() is inf
    ("polygon", 0, lambda p: p.__setitem__("next_url", 5)),
    ("polygon", 0, lambda p: p.__setitem__("next_url", ["https://api.polygon.io/v3/trades/AAPL?cursor=x"])),
    ("polygon", 0, lambda p: p.__setitem__("next_url", "http://[::1/v3")),
    ("polygon", 1, lambda p: p.__setitem__("next_url", "https://api.polygon.io/v3/trades/AAPL?cursor=YWJj")),
    ("binance", 0, lambda p: p[0].__setitem__("id", "28457")),
    ("binance", 1, lambda p: p.__setitem__(slice(None), [{**p[0], "id": 100}] * 1000)),  # ids before fromId
    ("binance", 4, lambda p: p.__setitem__(0, {"0": 1})),
    ("kraken", 1, lambda p: p["result"].__setitem__("last", "1688669597000000000")),  # a cursor before since
    ("coinbase", 1, lambda p: p.__setitem__(slice(None), [{**t, "trade_id": t["trade_id"] + 5000} for t in p])),
])
def test_what_escaped_before_is_a_malformed_page(exchange, case, change):
    gap, page = REST_PAGES[exchange][case]
    page = orjson.loads(orjson.dumps(page))
    change(page)
    with pytest.raises(MalformedFrame):
        protocol(exchange).parse_backfill(gap, orjson.dumps(page), RECEIVED_NS)
